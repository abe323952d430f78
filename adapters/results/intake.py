"""Result objects into the spool and the store: one durable path for C-STORE, STOW-RS and HTTP.

A received object is read (header only), flushed to disk, renamed to
``SPOOL/results/STUDY/SOP.dcm`` and recorded (:class:`broker.store.results.ResultStore`)
before the sender is told it was stored. It never goes into the study index:
its Study Instance UID is the source study's, and indexing it would re-open
that study and route it again. An object that names another patient than its
study, or is of another study than its job's, raises
:class:`~broker.model.identity.IdentityConflictError` and is not kept (a resent
one is refused before it could replace the stored copy). An object from a vendor that is
sent de-identified studies is first mapped back to the original study, patient and
accession (:func:`adapters.deid.reidentify.reidentify_file`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from adapters.deid.reidentify import reidentify_file
from adapters.results.objects import ResultHeader, read_result_header
from broker.model.domain import ResultObject, ResultOrigin
from broker.model.errors import InvalidDicomError, SpoolError
from broker.model.identity import IdentityConflictError
from broker.model.logging import get_logger
from broker.runtime.results import vendors_for_ae
from broker.runtime.snapshot import result_policies
from broker.store import StudyStore
from broker.store.pseudonyms import PseudonymStore
from broker.store.results import Recorded, ResultStore
from broker.store.spool import Spool
from config.schema import Settings

LOG = get_logger("radbridge.results")


@dataclass(frozen=True, slots=True)
class Stored:
    """A result object that is durably stored, and where it went."""

    header: ResultHeader
    recorded: Recorded
    path: Path
    size: int


class ResultIntake:
    """Store result objects durably and match them to jobs.

    ``settings`` is the configuration in force, or a function that returns it each
    time (the service's snapshot holder; a listener process's latest settings): the
    vendors' AE titles, results tokens and result policies of a reload apply to the
    next object received.
    """

    def __init__(
        self, settings: Settings | Callable[[], Settings], engine: Engine, spool: Spool
    ) -> None:
        self._settings = settings if callable(settings) else (lambda: settings)
        self.spool = spool
        self.pseudonyms = PseudonymStore(engine)
        self.studies = StudyStore(engine)
        current = self._settings()
        self._policies_of = current
        self.store = ResultStore(engine, result_policies(current))

    @property
    def settings(self) -> Settings:
        """The configuration in force now."""
        return self._settings()

    def _use_policies_in_force(self) -> None:
        """A result this object starts gets its vendor's policy of the configuration in force."""
        current = self._settings()
        if current is not self._policies_of:
            self._policies_of = current
            self.store.policies = result_policies(current)

    def vendors_for_ae(self, calling_ae: str) -> list[str]:
        """The vendors (in the configuration in force) that send results as ``calling_ae``."""
        return vendors_for_ae(self.settings, calling_ae)

    def vendor_for_token(self, token: str) -> str | None:
        """The vendor (in the configuration in force) whose results token is ``token``."""
        found = None
        for name, vendor in self.settings.vendors.items():
            secret = vendor.results.token
            if secret is not None and secrets.compare_digest(
                secret.get_secret_value().encode(), token.encode()
            ):
                found = name
        return found

    def store_file(
        self,
        tmp: Path,
        *,
        origin: ResultOrigin,
        vendors: Sequence[str],
        transfer_syntax_uid: str,
        sop_instance_uid: str | None = None,
        sop_class_uid: str | None = None,
        calling_ae: str | None = None,
        peer_address: str | None = None,
        flush: Callable[[], None] | None = None,
    ) -> Stored:
        """Place the received file ``tmp`` in the spool and record it; the caller answers
        success only after this returns. ``flush`` waits for a flush already under way
        (default: flush now). Raises :class:`InvalidDicomError` (nothing stored), or
        :class:`SpoolError` / :class:`StoreError` (nothing acknowledged; the file may stay,
        a resend replaces it), or :class:`IdentityConflictError` (nothing kept)."""
        self._use_policies_in_force()
        if any(self.settings.deidentifies(v) for v in vendors):
            back = reidentify_file(tmp, self.pseudonyms, self.studies)
            if back is not None:
                LOG.info("result object re-identified", mapped=back.mapped)
        header = read_result_header(tmp, sop_class_uid)
        if sop_instance_uid is not None and header.sop_instance_uid != sop_instance_uid:
            raise InvalidDicomError(
                f"the data set's SOP Instance UID {header.sop_instance_uid} is not the one "
                f"of the request ({sop_instance_uid})"
            )
        final = self.spool.result_path_for(header.study_uid, header.sop_instance_uid)
        obj = ResultObject(
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            series_uid=header.series_uid,
            study_uid=header.study_uid,
            path=str(final),
            size=0,
            origin=origin,
        )
        matching: dict[str, Any] = {
            "vendors": vendors,
            "referenced_studies": header.referenced_studies,
            "referenced_series": header.referenced_series,
            "calling_ae": calling_ae,
            "peer_address": peer_address,
            "patient": header.patient,
        }
        existed = final.exists()
        if existed:
            self.store.check_object(obj, **matching)
        if flush is None:
            self.spool.flush(tmp)
        else:
            flush()
        size = tmp.stat().st_size
        self.spool.place(tmp, final)
        try:
            recorded = self.store.record_object(
                replace(obj, size=size),
                transfer_syntax_uid=transfer_syntax_uid,
                urgent=header.urgent,
                **matching,
            )
        except IdentityConflictError:
            if not existed:
                self.spool.discard(final)
            raise
        if recorded.previous_path:
            try:
                self.spool.discard(Path(recorded.previous_path))
            except SpoolError as exc:
                LOG.error("cannot remove a replaced result object", error=str(exc))
        return Stored(header=header, recorded=recorded, path=final, size=size)
