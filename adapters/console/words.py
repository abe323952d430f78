"""The coded values the console shows (states, roles, health), marked for the catalogue.

Templates translate them with ``_(job.state.value)``; Babel's extractor cannot
see a value, so each is named here once (a unit test checks none is missing).
"""

from __future__ import annotations

from broker.i18n import N_

WORDS: tuple[str, ...] = (
    # job states
    N_("pending"),
    N_("sending"),
    N_("sent"),
    N_("awaiting_result"),
    N_("result_received"),
    N_("writing_back"),
    N_("done"),
    N_("failed"),
    N_("dead"),
    N_("cancelled"),
    N_("overdue"),
    # study, result, order link states
    N_("receiving"),
    N_("stable"),
    N_("updated"),
    N_("collecting"),
    N_("complete"),
    N_("linked"),
    N_("patient_mismatch"),
    # roles
    N_("viewer"),
    N_("reader"),
    N_("operator"),
    N_("admin"),
    # vendor health (adapters.console.pages.VendorHealth.status)
    N_("ok"),
    N_("degraded"),
    N_("idle"),
    N_("down"),
    N_("(no longer configured)"),
    # routing: a route's status, the outcome of explain
    N_("fired"),
    N_("matched"),
    N_("not_matched"),
    N_("waiting_for_order"),
    N_("waiting_for_result"),
    N_("no_order"),
    N_("fallback_not_needed"),
    N_("duplicate"),
    N_("exclusive"),
    N_("already_delivered"),
    N_("no_series"),
    N_("routed"),
    N_("unrouted"),
    N_("waiting"),
    N_("nothing_new"),
    N_("not_routed"),
    # verdicts on AI findings, and how a finding compares with the final report
    N_("accepted"),
    N_("rejected"),
    N_("modified"),
    N_("confirmed"),
    N_("contradicted"),
    N_("not_mentioned"),
    # vendor alerts (broker.model.alerts.AlertKind)
    N_("drift"),
    N_("version_changed"),
    N_("results_missing"),
    N_("canary_failed"),
    # critical-result cases: states, ledger steps, where an acknowledgement came from, filter
    N_("open"),
    N_("acknowledged"),
    N_("opened"),
    N_("notified"),
    N_("escalated"),
    N_("exhausted"),
    N_("console"),
    N_("api"),
    N_("link"),
    N_("cli"),
    N_("all"),
    # a study's time ledger (broker.model.timeline.StampKind) and what completed it
    N_("first_instance"),
    N_("last_instance"),
    N_("mpps"),
    N_("ian"),
    N_("route_skipped"),
    N_("written_back"),
    N_("notification_sent"),
    N_("notification_acknowledged"),
    N_("critical_opened"),
    N_("critical_escalated"),
    N_("critical_overdue"),
    N_("priors_requested"),
    N_("priors_fetched"),
    N_("priors_skipped"),
    N_("expected_series"),
    N_("deadline"),
    N_("quiet"),
    # page titles handed to error.html
    N_("Not allowed"),
    N_("No such study"),
    N_("No such job"),
    N_("No such delivery"),
    N_("No such critical case"),
    N_("Link"),
)
