"""The SR of a result's JSON findings, as the broker's result timer asks for it.

Registered as ``result_sr`` under the ``radbridge.registries`` entry points; the combined
SR of several products of one study as ``combined_sr``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime

from adapters.results.sr import Provenance, findings_to_sr, read_source_study
from broker.model.domain import AlgorithmInfo, Findings
from broker.model.reconciliation import StudyFindings, provenance_text
from broker.model.version import VERSION
from broker.runtime.results import GeneratedObject


def make_findings_sr(
    findings: Findings, source_paths: Sequence[str], result_key: str, created: datetime
) -> GeneratedObject:
    """A Comprehensive SR of ``findings`` filed under the spooled source study.

    Its UIDs derive from ``result_key`` only (:func:`adapters.results.sr.sr_uids`),
    so making it again after a crash gives the same object identity.
    """
    source = read_source_study(source_paths)
    ds = findings_to_sr(findings, source, result_id=result_key, created=created)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return GeneratedObject(
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        series_uid=str(ds.SeriesInstanceUID),
        study_uid=str(ds.StudyInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        data=buffer.getvalue(),
    )


def make_combined_sr(
    view: StudyFindings, source_paths: Sequence[str], result_key: str, created: datetime
) -> GeneratedObject:
    """One Comprehensive SR of every live product's findings of a study (owners first),
    each finding naming its product (algorithm identification) and its provenance.

    Registered as ``combined_sr``; its UIDs derive from ``result_key`` only.
    """
    read = view.live()
    combined = Findings(
        study_uid=view.study_uid,
        algorithm=AlgorithmInfo("radbridge", "Combined AI answer", VERSION),
        findings=tuple(f.finding for f in read),
        summary=combined_summary(view),
    )
    provenance = [
        Provenance(
            AlgorithmInfo(
                f.provenance.maker or f.provenance.vendor,
                f.provenance.product,
                f.provenance.version or "unknown",
            ),
            provenance_text(f),
        )
        for f in read
    ]
    source = read_source_study(source_paths)
    ds = findings_to_sr(
        combined, source, result_id=result_key, created=created, provenance=provenance
    )
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return GeneratedObject(
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        series_uid=str(ds.SeriesInstanceUID),
        study_uid=str(ds.StudyInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        data=buffer.getvalue(),
    )


def combined_summary(view: StudyFindings) -> str:
    """The combined answer's impression: its products, and its disagreements if any."""
    products = ", ".join(f"{p.product} ({p.vendor})" for p in view.provenances())
    text = f"Combined answer of {len(view.provenances())} AI products: {products}."
    if view.discordant:
        codes = ", ".join(dict.fromkeys(d.code.meaning for d in view.discordances))
        text += f" DISCORDANT: the products disagree on {codes}."
    return text
