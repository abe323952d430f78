"""Live or shadow: whether what a vendor product returns is written back.

A vendor or a route in **shadow** mode (a silent trial) is sent its studies
and its results are received, stored and shown (console, API, trials
report), but nothing it returns is written back to the PACS, RIS or FHIR
targets, no notification goes out for it, and its usage is counted as
trial, never billed. Pure: no I/O.

A job records why it was routed in shadow (:class:`ShadowCause`). The
configuration's shadow follows the configuration in force when the result
completes, so a reload to ``mode: live`` promotes the product: its next
result is written back. A shadow decided for another cause (the product's
contract or certificate) stays with the job.
"""

from __future__ import annotations

from broker.model.domain import CodedValue


class Mode(CodedValue):
    """How a vendor product's results are used (``mode:`` of a vendor or a route)."""

    LIVE = "live"
    SHADOW = "shadow"


class ShadowCause(CodedValue):
    """Why a job runs in shadow."""

    CONFIGURATION = "configuration"
    """The vendor or the route is ``mode: shadow``."""
    CONTRACT = "contract"
    """The product's contract (outside its dates, department, package) says ``shadow``."""
    CERTIFICATE = "certificate"
    """The product's regulatory certificate is missing or expired."""


def effective_shadow(routed: ShadowCause | None, configured: bool) -> ShadowCause | None:
    """Why a result is kept from the targets, or None when it is written back.

    ``routed`` is the job's cause from routing, ``configured`` whether the
    configuration in force now says shadow for its vendor or route: the
    configuration's shadow follows the configuration in force (a reload to
    live promotes), any other cause stays.
    """
    if configured:
        return ShadowCause.CONFIGURATION
    if routed is None or routed is ShadowCause.CONFIGURATION:
        return None
    return routed


def shadow_of(route_mode: Mode, vendor_mode: Mode) -> bool:
    """True when a route or its vendor is in shadow mode: either is enough."""
    return Mode.SHADOW in (route_mode, vendor_mode)
