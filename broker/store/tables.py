"""The store's tables (SQLAlchemy Core). Alembic migrations mirror these."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every database (SQLite keeps no zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use UTC-aware datetimes")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

UID = String(64)
AE = String(16)
#: A job-engine worker's id (``host/pid-namespace/pid/token``).
WORKER = String(128)
#: A configuration snapshot's id (``cfg-…``).
SNAPSHOT = String(64)

studies = Table(
    "studies",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study_uid", UID, nullable=False, unique=True),
    Column("patient_id", String(64)),
    Column("issuer_of_patient_id", String(64)),
    Column("patient_name", Text),
    Column("patient_birth_date", String(8)),
    Column("patient_sex", String(16)),
    Column("accession_number", String(64)),
    Column("study_date", String(8)),
    Column("study_time", String(16)),
    Column("study_description", Text),
    Column("referring_physician", Text),
    Column("institution", Text),
    Column("state", String(16), nullable=False),
    Column("revision", Integer, nullable=False, default=0),
    Column("stable_seconds", Float, nullable=False),
    Column("calling_ae", AE, nullable=False),
    Column("called_ae", AE, nullable=False),
    Column("peer_address", String(64), nullable=False),
    Column("first_received_at", UTCDateTime, nullable=False),
    Column("last_received_at", UTCDateTime, nullable=False),
    Column("due_at", UTCDateTime, nullable=False),
    Column("stable_at", UTCDateTime),
    Column("route_due_at", UTCDateTime),
    # Retention: when the spool's copy was purged, and what it held (its instance rows go).
    Column("purged_at", UTCDateTime),
    Column("purged_instances", Integer),
    Column("purged_bytes", BigInteger),
    # The site that sent it (broker.model.sites); NULL: the one implicit site.
    Column("site", String(32)),
    Index(None, "state", "due_at"),
    Index(None, "site"),
    Index(None, "route_due_at"),
    Index(None, "accession_number"),
    Index(None, "last_received_at"),
)

series = Table(
    "series",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("series_uid", UID, nullable=False, unique=True),
    Column("study_uid", UID, nullable=False, index=True),
    Column("modality", String(16)),
    Column("body_part", String(64)),
    Column("series_description", Text),
    Column("series_number", Integer),
    Column("protocol_name", Text),
    Column("slice_thickness", Float),
    Column("image_type", Text),
    Column("contrast_agent", Text),
    # JSON: the routing tags of the series' first indexed instance (keyword -> text).
    Column("tags", Text),
)

instances = Table(
    "instances",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("sop_instance_uid", UID, nullable=False, unique=True),
    Column("sop_class_uid", UID, nullable=False),
    Column("series_uid", UID, nullable=False, index=True),
    Column("study_uid", UID, nullable=False, index=True),
    Column("transfer_syntax_uid", UID, nullable=False),
    Column("instance_number", Integer),
    Column("number_of_frames", Integer),
    Column("path", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("calling_ae", AE, nullable=False),
    Column("called_ae", AE, nullable=False),
    Column("peer_address", String(64), nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("receive_count", Integer, nullable=False, default=1),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study_uid", UID, nullable=False),
    Column("vendor", String(64), nullable=False),
    Column("route", String(128), nullable=False),
    Column("priority", String(16), nullable=False),
    Column("state", String(20), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("series_uids", Text, nullable=False),
    Column("deadline_at", UTCDateTime),
    Column("next_attempt_at", UTCDateTime),
    Column("last_error", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("study_revision", Integer, nullable=False),
    Column("overdue_notified_at", UTCDateTime),
    Column("claimed_by", WORKER),
    Column("lease_until", UTCDateTime),
    Column("shadow", String(16)),  # why routing made it a shadow job; NULL: live
    UniqueConstraint("study_uid", "vendor"),
    Index(None, "state", "next_attempt_at"),
    Index(None, "vendor", "state"),
    Index(None, "route", "vendor", "state"),  # canary jobs, left out of counts by state
)

job_events = Table(
    "job_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, ForeignKey("jobs.id", name="fk_job_events_job_id"), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("from_state", String(20)),
    Column("to_state", String(20), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("error", Text),
    Column("snapshot", SNAPSHOT),
    Column("worker", WORKER),
    Index(None, "job_id", "id"),
)

job_tokens = Table(
    "job_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, ForeignKey("jobs.id", name="fk_job_tokens_job_id"), nullable=False),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("posting_until", UTCDateTime),
    Index(None, "job_id"),
)
"""Per-job bearer tokens of the WADO-RS endpoint (only their SHA-256 is kept); while
``posting_until`` has not passed, the job's manifest may still be on its way to the vendor
(a cancellation waits for it)."""

orders = Table(
    "orders",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("resource_id", String(64), nullable=False, unique=True),
    Column("version", Integer, nullable=False),
    Column("source", String(8), nullable=False),
    Column("placer_number", String(64)),
    Column("filler_number", String(64)),
    Column("accession_number", String(64)),
    Column("issuer", String(256)),
    Column("patient_id", String(64)),
    Column("issuer_of_patient_id", String(256)),
    Column("patient_name", Text),
    Column("patient_birth_date", String(8)),
    Column("patient_sex", String(16)),
    Column("procedure_code", String(64)),
    Column("procedure_text", Text),
    Column("modality", String(16)),
    Column("priority", String(16), nullable=False),
    Column("department", Text),
    Column("status", String(16), nullable=False),
    Column("study_uid", UID),
    Column("requested_procedure_id", String(64)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index(None, "accession_number"),
    Index(None, "placer_number"),
    Index(None, "filler_number"),
    Index(None, "study_uid"),
    Index(None, "patient_id"),
    Index(None, "updated_at"),
    # The site whose RIS sent it (MSH-4; broker.model.sites); NULL: the one implicit site.
    Column("site", String(32)),
    Index(None, "site"),
)
"""Orders from the RIS/HIS (HL7 v2 or FHIR), normalized; ``version`` counts updates."""

order_messages = Table(
    "order_messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("order_id", Integer, ForeignKey("orders.id", name="fk_order_messages_order_id")),
    Column("source", String(8), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("control_id", String(64)),
    Column("peer", String(64), nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("raw", LargeBinary, nullable=False),
    Column("error", Text),
    Index(None, "order_id"),
    Index(None, "received_at"),
)
"""Every order, ADT and FHIR message verbatim, stored before it is acknowledged."""

order_message_links = Table(
    "order_message_links",
    metadata,
    Column(
        "message_id",
        Integer,
        ForeignKey(
            "order_messages.id", name="fk_order_message_links_message_id", ondelete="CASCADE"
        ),
        primary_key=True,
    ),
    Column(
        "order_id",
        Integer,
        ForeignKey("orders.id", name="fk_order_message_links_order_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Index(None, "order_id"),
)
"""The further orders of a message that made several (a FHIR transaction, an HL7 message
with several orders): the message is stored once, its ``order_id`` the first order."""

order_links = Table(
    "order_links",
    metadata,
    Column("study_uid", UID, primary_key=True),
    Column(
        "order_id",
        Integer,
        ForeignKey("orders.id", name="fk_order_links_order_id"),
        nullable=False,
    ),
    Column("state", String(20), nullable=False),
    Column("matched_on", String(20), nullable=False),
    Column("detail", Text),
    Column("at", UTCDateTime, nullable=False),
    Index(None, "order_id"),
)
"""Which order a study belongs to, or which order matched but is flagged (patient mismatch)."""

patients = Table(
    "patients",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("patient_id", String(64), nullable=False),
    Column("issuer_of_patient_id", String(64), nullable=False, default=""),
    Column("patient_name", Text),
    Column("patient_birth_date", String(8)),
    Column("patient_sex", String(16)),
    Column("merged_into", Integer, ForeignKey("patients.id", name="fk_patients_merged_into")),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("patient_id", "issuer_of_patient_id"),
)
"""Patients registered or updated by ADT; a merged patient points at the survivor."""

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("name", String(128)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_used_at", UTCDateTime),
    Column("revoked_at", UTCDateTime),
    # The sites it is limited to, comma-separated; NULL: every site.
    Column("sites", Text),
)
"""Bearer tokens of the HTTP API with their role (only the SHA-256 of a token is kept)."""

results = Table(
    "results",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, ForeignKey("jobs.id", name="fk_results_job_id")),
    Column("study_uid", UID, nullable=False),
    Column("vendor", String(64)),
    Column("calling_ae", AE),
    Column("state", String(16), nullable=False),
    Column("urgent", Boolean, nullable=False, default=False),
    Column("findings_json", Text),
    Column("expected_objects", Integer),
    Column("quiet_seconds", Float, nullable=False),
    Column("vendor_complete", Boolean, nullable=False, default=False),
    Column("complete_reason", String(16)),
    Column("error", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("due_at", UTCDateTime),
    Column("completed_at", UTCDateTime),
    Index(None, "job_id"),
    Index(None, "study_uid"),
    Index(None, "state", "due_at"),
)
"""What a vendor returned for a job (``job_id`` NULL: an orphan that matched no job)."""

result_objects = Table(
    "result_objects",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "result_id",
        Integer,
        ForeignKey("results.id", name="fk_result_objects_result_id"),
        nullable=False,
    ),
    Column("sop_instance_uid", UID, nullable=False, unique=True),
    Column("sop_class_uid", UID, nullable=False),
    Column("series_uid", UID, nullable=False),
    Column("study_uid", UID, nullable=False),
    Column("transfer_syntax_uid", UID, nullable=False),
    Column("path", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("origin", String(16), nullable=False),
    Column("calling_ae", AE),
    Column("peer_address", String(64)),
    Column("received_at", UTCDateTime, nullable=False),
    Column("receive_count", Integer, nullable=False, default=1),
    Column("purged_at", UTCDateTime),  # retention removed the spool's copy
    Index(None, "result_id"),
)
"""The DICOM objects of results, spooled under ``results/`` (never in the study index)."""

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("result_id", Integer),
    Column("job_id", Integer),
    Column("study_uid", UID, nullable=False),
    Column("target", String(64), nullable=False),
    Column("target_type", String(16), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("event", String(32), nullable=False),
    Column("urgent", Boolean, nullable=False, default=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("message_id", String(64), nullable=False, unique=True),
    Column("next_attempt_at", UTCDateTime),
    Column("last_error", Text),
    Column("detail", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("claimed_by", WORKER),
    Column("lease_until", UTCDateTime),
    Column("correction_id", Integer),
    UniqueConstraint("result_id", "target", "kind"),
    Index(None, "target", "state", "next_attempt_at"),
    Index(None, "job_id"),
)
"""Write-back: one row per result × target (and per notification), with its own retries."""

corrections = Table(
    "corrections",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study_uid", UID, nullable=False),
    Column("cause", String(32), nullable=False),
    Column("reason_scheme", String(16), nullable=False),
    Column("reason_value", String(16), nullable=False),
    Column("reason_meaning", String(64), nullable=False),
    Column("source", String(160), nullable=False),
    Column("detail", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Index(None, "study_uid", "id"),
)
"""Corrections: a rejection note, a patient change or a cancelled order that withdraws or
corrects results already written (their deliveries: ``deliveries.correction_id``)."""

delivery_events = Table(
    "delivery_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "delivery_id",
        Integer,
        ForeignKey("deliveries.id", name="fk_delivery_events_delivery_id"),
        nullable=False,
    ),
    Column("at", UTCDateTime, nullable=False),
    Column("from_state", String(16)),
    Column("to_state", String(16), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("error", Text),
    Column("snapshot", SNAPSHOT),
    Column("worker", WORKER),
    Index(None, "delivery_id", "id"),
)
"""Every transition of a delivery."""

work_lanes = Table(
    "work_lanes",
    metadata,
    Column("lane", String(96), primary_key=True),
    Column("paused_at", UTCDateTime),
    Column("paused_until", UTCDateTime),
    Column("paused_by", String(160)),
    Column("pause_reason", Text),
)
"""One row per lane of the job engine (``vendor:NAME``, ``target:NAME``). A claim locks its
lane's row, so counting the lane's live leases and claiming are one step on every database.
A paused lane (``paused_at`` set, ``paused_until`` NULL or later than now) is not claimed
from: its items wait."""

timer_claims = Table(
    "timer_claims",
    metadata,
    Column("timer", String(64), primary_key=True),
    Column("holder", WORKER, nullable=False),
    Column("until", UTCDateTime, nullable=False),
)
"""One row per timer whose timed actions one node does at a time (``completion``,
``results``, ``engine``): the holder renews its claim while it runs; once ``until`` has
passed, another node's timer takes it."""

audit = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(160), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(256), nullable=False),
    Column("detail", Text, nullable=False),
    Column("peer", String(64), nullable=False),
    Index(None, "at"),
    Index(None, "action", "at"),
)
"""Append-only: who did what, when and from where (no update; a trigger refuses it, and a
delete of a row no purge's horizon in :data:`audit_purges` is past: ``retention.audit_days``)."""

audit_purges = Table(
    "audit_purges",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("before", UTCDateTime, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(160), nullable=False),
    Column("rows", Integer, nullable=False),
)
"""Append-only: each purge of the audit trail (``retention.audit_days``): the rows it removed,
all older than ``before``; the audit table's trigger lets only such rows be deleted."""

usage = Table(
    "usage",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, nullable=False, unique=True),
    Column("study_uid", UID, nullable=False),
    Column("vendor", String(64), nullable=False),
    Column("product", String(128), nullable=False),
    Column("site", String(128), nullable=False),
    Column("day", String(10), nullable=False),
    Column("unit", String(16), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("series_count", Integer, nullable=False),
    Column("billable", Boolean, nullable=False),
    Column("trial", Boolean, nullable=False),
    Column("price", String(32), nullable=False),
    Column("currency", String(3)),
    Column("bundle_key", String(160), unique=True),
    Column("route", String(128), nullable=False),
    Column("sent_at", UTCDateTime, nullable=False),
    Column("shadow", Boolean, nullable=False, default=False, server_default=false()),
    Column("contract", String(64)),
    Column("charge", String(16)),
    Column("payer", String(128)),
    Column("price_code", String(128)),
    Column("province", String(128)),
    Index(None, "day", "vendor"),
    Index(None, "vendor", "trial"),
)
"""One row per delivered study × vendor product (the job), for settlement with vendors.

``contract``, ``charge`` (trial, package, per_use, unbilled, shadow), ``payer``,
``price_code`` and ``province`` are the terms the job was routed under (NULL for
a vendor without a contract).

``day`` is the site's local date of the delivery; ``bundle_key`` (bundle:study)
is set on the one row of a bundle that counts the study, so it counts once.
"""

job_terms = Table(
    "job_terms",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study_uid", UID, nullable=False),
    Column("vendor", String(64), nullable=False),
    Column("route", String(128), nullable=False),
    Column("contract", String(64)),
    Column("charge", String(16)),
    Column("period", String(48)),
    Column("payer", String(128)),
    Column("price_code", String(128)),
    Column("province", String(128)),
    Column("price", String(32)),
    Column("currency", String(3)),
    Column("alert", Text),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("study_uid", "vendor"),
    Index(None, "contract", "created_at"),
)
"""The terms a study × vendor product was routed under, written before its job, when it was
routed under a contract or in shadow mode: the contract, what the use counts as, the mode
(``shadow``: nothing written back)."""

contract_counters = Table(
    "contract_counters",
    metadata,
    Column("contract", String(64), primary_key=True),
    Column("period", String(48), primary_key=True),
    Column("used", Integer, nullable=False),
)
"""Uses of each contract's quota per period; raised only by a conditional UPDATE that keeps
``used`` at or below the quota, so several routing processes never go past it."""

# Indexes the REST API's listings page along (keyset on the id or time, newest first).
Index("ix_jobs_state_id", jobs.c.state, jobs.c.id)
Index("ix_jobs_vendor_state_id", jobs.c.vendor, jobs.c.state, jobs.c.id)
Index("ix_jobs_created_at", jobs.c.created_at)
Index("ix_job_events_to_state_at", job_events.c.to_state, job_events.c.at)
Index("ix_studies_state_last_received_at", studies.c.state, studies.c.last_received_at)
Index("ix_results_vendor_id", results.c.vendor, results.c.id)
Index("ix_results_state_id", results.c.state, results.c.id)
Index("ix_deliveries_state_id", deliveries.c.state, deliveries.c.id)
Index("ix_deliveries_target_id", deliveries.c.target, deliveries.c.id)

console_users = Table(
    "console_users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("role", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("disabled_at", UTCDateTime),
    Column("last_login_at", UTCDateTime),
    Column("language", String(8)),
    # The sites the user is limited to, comma-separated; NULL: every site.
    Column("sites", Text),
)
"""People who log in to the operations console (argon2id password hashes; roles as tokens)."""

console_sessions = Table(
    "console_sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("console_users.id", name="fk_console_sessions_user_id")),
    Column("token_id", Integer, ForeignKey("api_tokens.id", name="fk_console_sessions_token_id")),
    Column("csrf", String(64), nullable=False),
    Column("peer", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_seen_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Index(None, "expires_at"),
)
"""Console logins (of a user or an API token); ``id`` is the SHA-256 of the cookie."""

identity_conflicts = Table(
    "identity_conflicts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(24), nullable=False),
    Column("action", String(16), nullable=False),
    Column("reason", String(24), nullable=False),
    Column("state", String(16), nullable=False),
    Column("source", String(16), nullable=False),
    Column("sender", String(160), nullable=False),
    Column("peer", String(64), nullable=False),
    Column("subject", String(256), nullable=False),
    Column("matched_on", String(32), nullable=False),
    Column("study_uid", UID),
    Column("order_id", Integer),
    Column("held_patient_id", String(64)),
    Column("held_issuer", String(256)),
    Column("claimed_patient_id", String(64)),
    Column("claimed_issuer", String(256)),
    Column("detail", Text, nullable=False),
    Column("message_id", Integer),
    Column("occurrences", Integer, nullable=False),
    Column("first_at", UTCDateTime, nullable=False),
    Column("last_at", UTCDateTime, nullable=False),
    Column("resolved_at", UTCDateTime),
    Column("resolved_by", String(160)),
    Column("resolution", Text),
    Index(None, "state", "id"),
    Index(None, "kind", "study_uid"),
    Index(None, "order_id"),
)
"""Identity conflicts: data that named another patient, refused or kept flagged, for an
operator (one row per conflict; a repeat counts on it while it is open)."""

finding_verdicts = Table(
    "finding_verdicts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "result_id",
        Integer,
        ForeignKey("results.id", name="fk_finding_verdicts_result_id"),
        nullable=False,
    ),
    Column("finding_index", Integer, nullable=False),
    Column("vendor", String(64)),
    Column("code", String(160), nullable=False),
    Column("verdict", String(16), nullable=False),
    Column("corrected_value", Text),
    Column("comment", Text),
    Column("actor", String(160), nullable=False),
    Column("source", String(16), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Index(None, "result_id", "finding_index", "id"),
    Index(None, "vendor", "at"),
)
"""A radiologist's verdicts on AI findings (``finding_index``: the finding's place in the
result's findings); every verdict is kept, the newest of a finding counts."""

final_reports = Table(
    "final_reports",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("control_id", String(64)),
    Column("sender", String(160), nullable=False),
    Column("peer", String(64), nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("raw", LargeBinary, nullable=False),
    Column("accession_number", String(64)),
    Column("study_uid", UID),
    Column("status", String(8)),
    Column("text", Text),
    Column("codes_json", Text),
    Column("error", Text),
    Index(None, "accession_number"),
    Index(None, "study_uid"),
)
"""The RIS's signed reports (ORU^R01, MDM^T02) verbatim, stored before they are acknowledged,
with the text and coded observations read from them."""

report_matches = Table(
    "report_matches",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "report_id",
        Integer,
        ForeignKey("final_reports.id", name="fk_report_matches_report_id"),
        nullable=False,
    ),
    Column(
        "result_id",
        Integer,
        ForeignKey("results.id", name="fk_report_matches_result_id"),
        nullable=False,
    ),
    Column("finding_index", Integer, nullable=False),
    Column("vendor", String(64)),
    Column("code", String(160), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("basis", String(16), nullable=False),
    Column("evidence", Text),
    Column("at", UTCDateTime, nullable=False),
    UniqueConstraint("report_id", "result_id", "finding_index"),
    Index(None, "result_id", "finding_index"),
)
"""How each AI finding compares with the final report of its study: ``confirmed``,
``contradicted`` or ``not_mentioned``, by coded observation or by keywords."""

vendor_alerts = Table(
    "vendor_alerts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("vendor", String(64), nullable=False),
    Column("code", String(160)),
    Column("raised_at", UTCDateTime, nullable=False),
    Column("detail", Text, nullable=False),
    Column("cleared_at", UTCDateTime),
    Column("delivery_id", Integer),
    Column("dedup", String(64), unique=True),
    Index(None, "vendor", "kind", "raised_at"),
    Index(None, "delivery_id"),
)
"""What the vendor watch raised: ``drift``, ``version_changed``, ``results_missing``,
``canary_failed`` (``code``: the finding code of a drift; ``delivery_id``: its webhook
notification; ``dedup``: the SHA-256 of its kind, vendor, code and key, unique: one alert
per condition, whichever process raises it)."""

canary_runs = Table(
    "canary_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("vendor", String(64), nullable=False),
    Column("period", String(64), nullable=False),
    Column("actor", String(160), nullable=False),
    Column("study_uid", UID),
    Column("job_id", Integer),
    Column("state", String(16), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("deadline_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("error", Text),
    UniqueConstraint("vendor", "period"),
    Index(None, "state"),
    Index(None, "study_uid"),
)
"""Canaries: one row per vendor and period (the claim that makes one process, of several,
send the period's synthetic study), its study and job, its deadline and outcome."""

pseudonyms = Table(
    "pseudonyms",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("pseudonym", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("original", String(64), nullable=False),
    Column("study_uid", UID, nullable=False),
    Column("issued_at", UTCDateTime, nullable=False),
    Column("sent_with", UID),
    UniqueConstraint("pseudonym"),
    Index(None, "study_uid"),
    Index(None, "sent_with"),
)
"""What radbridge replaced in studies it de-identified for vendors: each pseudonym (a keyed
hash, not reversible) and the original value, so results can be mapped back; kept until
retention purges the study whose job sent it (``sent_with``; a prior's: the latest newer
study that sent it, and not while the prior or another study of that patient ID is kept;
NULL, recorded before migration 0041: the study it was issued for, or for a prior not in
the index once no study that may have sent it is kept), and no result can come back for
it: see :mod:`broker.store.retention`."""
critical_cases = Table(
    "critical_cases",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("result_id", Integer, nullable=False, unique=True),
    Column("job_id", Integer),
    Column("study_uid", UID, nullable=False),
    Column("accession_number", String(64)),
    Column("vendor", String(64)),
    Column("route", String(128)),
    Column("findings_json", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("opened_at", UTCDateTime, nullable=False),
    Column("exam_end_at", UTCDateTime, nullable=False),
    Column("deadline_at", UTCDateTime, nullable=False),
    Column("level", Integer, nullable=False),
    Column("next_escalation_at", UTCDateTime),
    Column("overdue_at", UTCDateTime),
    Column("acknowledged_at", UTCDateTime),
    Column("acknowledged_by", String(160)),
    Column("acknowledged_via", String(16)),
    Column("acknowledged_actor", String(160)),
    Column("note", Text),
    Column("contact_list", String(64)),  # its route's or site's list; NULL: the default
    Index(None, "state", "id"),
    Index(None, "state", "next_escalation_at"),
    Index(None, "study_uid"),
)
"""Critical-result cases: one per urgent result, open until a named person acknowledges it."""

critical_steps = Table(
    "critical_steps",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "case_id",
        Integer,
        ForeignKey("critical_cases.id", name="fk_critical_steps_case_id"),
        nullable=False,
    ),
    Column("at", UTCDateTime, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("level", Integer),
    Column("contact", String(160)),
    Column("channel", String(64)),
    Column("address", String(256)),
    Column("delivery_id", Integer),
    Column("actor", String(160)),
    Column("detail", Text, nullable=False),
    Index(None, "case_id", "id"),
    Index(None, "delivery_id"),
)
"""A case's ledger: who was notified, when, on which channel; escalations; who acknowledged."""

study_events = Table(
    "study_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study_uid", UID, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("reason", String(32)),
    Column("detail", Text),
    Index(None, "study_uid", "id"),
    Index(None, "kind", "at"),
)
"""A study's history besides its jobs: what decided it complete (``complete`` with its
``reason``), what evidence came (``mpps``, ``ian``), expected series held or missing."""

procedure_notices = Table(
    "procedure_notices",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(8), nullable=False),
    Column("sop_instance_uid", UID, nullable=False),
    Column("study_uid", UID),
    Column("accession_number", String(64)),
    Column("order_id", Integer),
    Column("status", String(16), nullable=False),
    Column("referenced", Text, nullable=False),
    Column("dataset_json", Text, nullable=False),
    Column("calling_ae", AE, nullable=False),
    Column("called_ae", AE, nullable=False),
    Column("peer_address", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("kind", "sop_instance_uid"),
    Index(None, "study_uid"),
)
"""What modalities and PACS said of a study's instances: Modality Performed Procedure Steps
(``mpps``: N-CREATE, then N-SET to COMPLETED or DISCONTINUED) and Instance Availability
Notifications (``ian``), with the SOP Instance UIDs they reference (JSON) and their
attributes as received (DICOM JSON)."""

prior_fetches = Table(
    "prior_fetches",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "job_id", Integer, ForeignKey("jobs.id", name="fk_prior_fetches_job_id"), nullable=False
    ),
    Column("study_uid", UID, nullable=False),
    Column("vendor", String(64), nullable=False),
    Column("route", String(128), nullable=False),
    Column("source", String(64), nullable=False),
    Column("asked", Integer, nullable=False),
    Column("requested_at", UTCDateTime, nullable=False),
    Column("done_at", UTCDateTime),
    Column("outcome", String(16)),
    Column("studies", Integer, nullable=False, default=0),
    Column("instances", Integer, nullable=False, default=0),
    Column("note", Text),
    UniqueConstraint("job_id"),
    Index(None, "study_uid"),
)
"""A job's fetch of priors (once per job): asked when, done when, what came or why none
did (``outcome``: fetched | skipped; NULL while the fetch runs)."""

prior_instances = Table(
    "prior_instances",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "job_id", Integer, ForeignKey("jobs.id", name="fk_prior_instances_job_id"), nullable=False
    ),
    Column("study_uid", UID, nullable=False),
    Column("series_uid", UID, nullable=False),
    Column("sop_instance_uid", UID, nullable=False),
    Column("transfer_syntax_uid", UID, nullable=False),
    Column("path", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Index(None, "job_id", "study_uid", "series_uid"),
)
"""The instances of a job's priors in ``SPOOL/priors/job-ID/``, as its WADO-RS serves them to
a vendor that pulls by manifest (only while the job is at the vendor)."""

transfers = Table(
    "transfers",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("site", String(32), nullable=False),
    Column("key", String(64), nullable=False),
    Column("study_uid", UID, nullable=False),
    Column("state", String(16), nullable=False),
    Column("parts", Integer, nullable=False),
    Column("instances", Integer, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("manifest", Text, nullable=False),
    Column("peer_address", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("committed_at", UTCDateTime),
    UniqueConstraint("site", "key"),
    Index(None, "state", "updated_at"),
)
"""Studies a site radbridge is sending over the site-to-hub link (``open``, then
``committed`` once its instances are indexed, or ``purged`` when abandoned); ``key`` is the
SHA-256 of the manifest (JSON), so the same study sent again is the same transfer."""
