"""Settings of write-back: the ``targets`` block (PACS, RIS, EMR) and ``notifications``.

```yaml
targets:
  pacs:     {type: dicom, ae_title: ORTHANC, host: 127.0.0.1, port: 4242}
  pacs_web: {type: dicomweb, url: http://pacs.local/dicom-web}
  ris:      {type: hl7, host: ris.local, port: 2576}
  emr:      {type: fhir, url: https://emr.local/fhir}
notifications:
  webhook: {url: https://alerts.local/radbridge}
  ris_status: {target: ris}
routes:
  - {name: head-ct-bleed, ..., write_back: [pacs, ris]}
```

Each target's ``type`` names a registered write-back target plugin, whose
own settings model checks the rest (:mod:`config.plugins`); this module keeps
no list of types. Tokens (``dicomweb``, ``fhir``, the webhook) come only from
the environment: ``RADBRIDGE_TARGETS__<NAME>__TOKEN``,
``RADBRIDGE_NOTIFICATIONS__WEBHOOK__TOKEN``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from pydantic import Field, SecretStr

from broker.model.errors import did_you_mean
from broker.model.target import TARGETS, TargetSettings
from config.base import Duration, HttpUrl, Strict

TargetName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")]


class Webhook(Strict):
    """Where notifications are POSTed as JSON (urgent results, overdue jobs)."""

    url: HttpUrl
    token: SecretStr | None = None
    """Sent as ``Authorization: Bearer …`` (environment only)."""
    timeout: Duration = 10.0
    retries: Annotated[int, Field(ge=1, le=100)] = 5


class RisStatus(Strict):
    """Send the RIS an order-status update (ORM^O01, ORC-1 SC, priority S) for urgent results;
    with ``procedure_steps`` also each status of a modality's procedure step (MPPS IN
    PROGRESS, COMPLETED, DISCONTINUED as ORC-5 IP, CM, DC)."""

    target: str
    procedure_steps: bool = False


class Notifications(Strict):
    """Who hears about urgent results and overdue jobs."""

    webhook: Webhook | None = None
    ris_status: RisStatus | None = None
    overdue_check_seconds: Annotated[float, Field(gt=0, le=3600)] = 5.0
    """How often jobs are checked against their route's deadline."""


def check_notifications(
    notifications: Notifications, targets: Mapping[str, TargetSettings]
) -> list[tuple[tuple[str | int, ...], str]]:
    """Problems of the ``notifications`` block against the ``targets`` block.

    ``ris_status`` must name a target whose type carries order-status updates
    (``takes_order_status``: ``hl7``).
    """
    status = notifications.ris_status
    if status is None:
        return []
    able = [name for name, t in targets.items() if t.takes_order_status]
    if status.target not in able:
        kinds = [name for name, model in TARGETS.all().items() if model.takes_order_status]
        return [
            (
                ("notifications", "ris_status", "target"),
                f"'{status.target}' is not an {' or '.join(kinds)} target"
                f"{did_you_mean(status.target, able)}; "
                f"valid: {', '.join(able) or f'none (add a target of type {kinds[0]})'}",
            )
        ]
    return []
