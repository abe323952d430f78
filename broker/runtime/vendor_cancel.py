"""A vendor told of cancellations, as a write-back target of its own: ``vendor.NAME``.

A correction (rejected images, a patient change, a cancelled order) of a study that a
job already sent to a vendor whose transport ``tells_cancellation`` (the HTTP API)
makes one ``correction`` delivery to the target ``vendor.NAME`` for that job
(:mod:`broker.store.corrections`). The job engine sends it like any write-back
(retries with backoff, ``dead``, an operator's retry, an audit row once done); its
one attempt is the transport's ``cancel``, with the correction's cause as the reason.
"""

from __future__ import annotations

from broker.model.errors import CorrectionUnsupportedError
from broker.model.vendor import VendorTransport
from broker.model.writeback import WritebackItem


class VendorCancellation:
    """The ``vendor.NAME`` target: tells the vendor a job it was sent is cancelled."""

    def __init__(self, vendor: str, transport: VendorTransport) -> None:
        self.vendor = vendor
        self.transport = transport
        self.retryable: tuple[type[Exception], ...] = transport.retryable

    def deliver(self, item: WritebackItem) -> str:
        raise CorrectionUnsupportedError(
            f"vendor.{self.vendor} carries only cancellations of jobs, not results"
        )

    def correct(self, item: WritebackItem) -> str:
        """Tell the vendor the job of ``item`` is cancelled, and why."""
        job = item.job
        if job is None:
            raise CorrectionUnsupportedError(
                f"delivery {item.delivery.id} names no job to cancel at {self.vendor}"
            )
        why = item.correction.cause.value if item.correction is not None else item.delivery.event
        if not self.transport.cancel(job, why):
            raise CorrectionUnsupportedError(
                f"the transport of {self.vendor} has no way to tell it of a cancellation"
            )
        return f"{self.vendor} told job {job.id} is cancelled ({why})"

    def close(self) -> None:
        """Nothing of its own: the transport is closed with its configuration."""
        return None
