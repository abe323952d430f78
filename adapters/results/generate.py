"""The SR of a result's JSON findings, as the broker's result timer asks for it.

Registered as ``result_sr`` under the ``radbridge.registries`` entry points.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime

from adapters.results.sr import findings_to_sr, read_source_study
from broker.model.domain import Findings
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
