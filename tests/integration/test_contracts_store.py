"""Contract use in the store on SQLite and PostgreSQL: reservations that never pass a quota
(two processes racing on PostgreSQL), deciding again when another process took the last
use, and usage rows that carry the contract, payer and price code."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hl7apy.parser import parse_message
from sqlalchemy import Engine

from adapters.hl7.oru import build_oru
from adapters.results.sr import disclaimer
from broker.model.contract import UseCharge
from broker.model.jobs import JobChangedError, JobState, JobStateError
from broker.model.writeback import DeliveryState
from broker.runtime.billing import Accounting
from broker.runtime.contracts import ContractDesk, audit_certificates, contract_use
from broker.store import make_engine
from broker.store.audit import Action, AuditLog
from broker.store.contracts import ContractStore, JobTerms, Reserved
from broker.store.engine import writing
from broker.store.jobs import JobStore, cancel_for_studies
from broker.store.results import ResultStore
from broker.store.usage import UsageStore, report_csv
from config.schema import Settings, routing_rules
from routing import SkipReason, decide
from tests.databases import DATABASES, empty_database
from tests.integration.test_routing import study
from tests.integration.test_usage_audit import _sent_job, _study
from tests.integration.test_writeback import drain, make_stage
from tests.ris import Ris
from tests.writeback_data import findings

T0 = datetime(2026, 5, 10, 2, 0, tzinfo=UTC)


@pytest.fixture(params=DATABASES)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with empty_database(request.param, tmp_path) as eng:
        yield eng


def _terms(study_uid: str, **fields: Any) -> JobTerms:
    base = JobTerms(
        study_uid=study_uid,
        vendor="lunga",
        route="chest",
        contract="pkg",
        charge=UseCharge.PACKAGE,
        period="2026-05",
    )
    return replace(base, **fields)


def test_reservations_stop_at_the_quota_and_count_a_study_once(engine: Engine) -> None:
    """Quota 2: two studies reserved, the third refused; the same study again is kept (not
    counted twice); another period has its own counter; uncounted uses pass."""
    store = ContractStore(engine)
    assert [store.reserve(_terms(f"1.2.{i}"), 2, T0) for i in range(3)] == [
        Reserved.NEW,
        Reserved.NEW,
        Reserved.FULL,
    ]
    assert store.reserve(_terms("1.2.0"), 2, T0) is Reserved.KEPT
    assert store.get("1.2.2", "lunga") is None
    assert store.reserve(_terms("1.2.5", period="2026-06"), 2, T0) is Reserved.NEW
    billed = _terms("1.2.6", charge=UseCharge.PER_USE)
    assert store.reserve(billed, 2, T0) is Reserved.NEW
    assert store.used([("pkg", "2026-05"), ("pkg", "2026-06")]) == {
        ("pkg", "2026-05"): 2,
        ("pkg", "2026-06"): 1,
    }
    kept = store.get("1.2.6", "lunga")
    assert kept is not None and kept.charge is UseCharge.PER_USE


def _race(url: str, worker: int, count: int, quota: int) -> list[str]:
    """One process's share of the race: ``count`` studies reserved against ``quota``."""
    eng = make_engine(url)
    try:
        store = ContractStore(eng)
        return [store.reserve(_terms(f"9.{worker}.{i}"), quota, T0).value for i in range(count)]
    finally:
        eng.dispose()


@pytest.mark.postgres
def test_two_processes_racing_on_postgresql_never_pass_the_quota(tmp_path: Path) -> None:
    """Two processes reserve 80 studies each, over and over, against a quota of 60 on
    PostgreSQL: exactly 60 reservations succeed and the counter says 60."""
    with empty_database("postgresql", tmp_path) as eng:
        url = eng.url.render_as_string(hide_password=False)
        with multiprocessing.get_context("fork").Pool(2) as pool:
            shares = pool.starmap(_race, [(url, w, 80, 60) for w in range(2)])
        outcomes = [o for share in shares for o in share]
        assert outcomes.count("new") == 60 and outcomes.count("full") == 100
        assert all(share.count("new") > 0 for share in shares)  # both took part
        assert ContractStore(eng).used([("pkg", "2026-05")]) == {("pkg", "2026-05"): 60}


def _settings(targets: dict[str, Any] | None = None, **contract: Any) -> Settings:
    def vendor(ae: str) -> dict[str, Any]:
        transport = {"type": "dicom", "ae_title": ae, "host": "127.0.0.1", "port": 104}
        return {"product": f"{ae} lung", "kind": "lung", "transport": transport}

    return Settings.model_validate(
        {
            "site": {"name": "General", "timezone": "Asia/Shanghai"},
            "vendors": {"lungai": vendor("LUNGA"), "lungb": vendor("LUNGB")},
            "routes": [{"name": "chest", "when": {"modality": "CT"}, "send": ["lungai"]}],
            "targets": targets or {},
            "contracts": {
                "pkg": {
                    "vendor": "lungai",
                    "kind": "package",
                    "quota": 1,
                    "price": 5000,
                    "currency": "CNY",
                    "payer": "health_commission",
                    "price_code": "310000012",
                    "province": "Zhejiang",
                    **contract,
                }
            },
        }
    )


def test_decided_again_when_another_process_took_the_last_use(engine: Engine) -> None:
    """Routing read the package as free, but another process reserved its last use before
    this one: the reservation is refused and the decision made again with the package
    used up (its fallback vendor gets the study)."""
    rules = routing_rules(_settings(when_used_up="fallback"))
    store = ContractStore(engine)
    assert store.reserve(_terms("1.9.1", vendor="lungai", period="all"), 1, T0) is Reserved.NEW
    stale = {"pkg": 0}
    subject = study()
    decision = ContractDesk(store).route(
        subject.study_uid,
        rules,
        T0,
        lambda used: decide(rules, subject, None, T0, used=used),
        used=stale,
    )
    (dispatch,) = decision.dispatches
    assert (dispatch.vendor, dispatch.instead_of) == ("lungb", "lungai")
    assert contract_use(store, rules, T0) == {"pkg": 1}
    assert store.get(subject.study_uid, "lungb") is None  # no contract, live: nothing to keep
    stopped = decide(
        routing_rules(_settings()), subject, None, T0, used=contract_use(store, rules, T0)
    )
    assert [s.reason for s in stopped.skipped] == [SkipReason.CONTRACT]


def test_usage_rows_carry_contract_payer_and_price_code(engine: Engine) -> None:
    """A job routed under a package is counted as a package use with the contract's payer,
    price code and province; the report's CSV and JSON carry them."""
    settings = _settings()
    rules = routing_rules(settings)
    uid = "1.2.826.0.1.3680043.10.511.8"
    _study(engine, uid)
    subject = replace(study(), study_uid=uid)
    ContractDesk(ContractStore(engine)).route(
        uid, rules, T0, lambda used: decide(rules, subject, None, T0, used=used)
    )
    entry = Accounting(engine, lambda: settings).record(_sent_job(engine, uid, "lungai"), T0)
    assert entry is not None
    assert (entry.contract, entry.charge, entry.payer, entry.price_code, entry.province) == (
        "pkg",
        "package",
        "health_commission",
        "310000012",
        "Zhejiang",
    )
    assert not entry.billable and not entry.trial
    day = date(2026, 5, 10)
    [line] = UsageStore(engine).report(day, day + timedelta(days=1))
    assert (line.package, line.billable, line.trial, line.contract) == (1, 0, 0, "pkg")
    header, row = report_csv([line]).splitlines()
    assert header.endswith(",package,contract,payer,price_code,province")
    assert row.endswith(",1,pkg,health_commission,310000012,Zhejiang")


def _regulated(**regulatory: Any) -> Settings:
    base = _settings()
    vendors = {name: v.model_dump(mode="json") for name, v in base.vendors.items()}
    vendors["lungai"]["regulatory"] = {"nmpa_class": "III", **regulatory}
    vendors["lungb"]["regulatory"] = {"certificate": "国械注准20243210002"}  # no end: valid
    return Settings.model_validate({"site": {"timezone": "Asia/Shanghai"}, "vendors": vendors})


def test_products_without_a_valid_certificate_are_audited(engine: Engine) -> None:
    """At start and at every configuration put in force: one ``product.certificate`` row per
    product whose certificate is expired (shadow) or missing but configured live."""
    expired = _regulated(certificate="国械注准20183210001", valid_until="2026-05-09")
    assert audit_certificates(AuditLog(engine), expired, T0) == 1
    live = _regulated(live_without_certificate=True)
    assert audit_certificates(AuditLog(engine), live, T0) == 1
    rows = AuditLog(engine).list(action=Action.PRODUCT_CERTIFICATE)
    assert [(r.target, r.detail["mode"], r.detail["problem"]) for r in reversed(rows)] == [
        ("vendor:lungai", "shadow", "NMPA certificate 国械注准20183210001 expired 2026-05-09"),
        ("vendor:lungai", "live", "no NMPA certificate"),
    ]


def test_the_oru_and_the_sr_name_the_products_regulatory_data(engine: Engine) -> None:
    """The ORU carries an NTE after the OBR naming the product and its certificate (hl7apy
    reads it as a valid ORU_R01); the SR's disclaimer names it too."""
    settings = _regulated(certificate="国械注准20233210001", valid_until="2028-02-28")
    label = settings.regulatory_label("lungai")
    assert label == "LUNGA lung: NMPA class III 国械注准20233210001 valid to 2028-02-28"
    uid = "1.2.826.0.1.3680043.10.511.9"
    _study(engine, uid)
    job = _sent_job(engine, uid, "lungai")
    result = ResultStore(engine).get(ResultStore(engine).record_findings(job.id, findings(uid)))
    text = build_oru(control_id="RB1", result=result, order=None, study=None, regulatory=label)
    segments = text.split("\r")
    obr = next(i for i, s in enumerate(segments) if s.startswith("OBR|"))
    assert segments[obr + 1] == f"NTE|1|L|AI product: {label}"
    parsed = parse_message(text, find_groups=True, validation_level=2)
    assert parsed.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert result.findings is not None
    named = replace(result.findings.algorithm, regulatory=label)
    assert disclaimer(named).endswith(f"Regulatory data: {label}.")


def test_a_use_billed_per_use_is_charged_to_the_his_once(engine: Engine) -> None:
    """``charge_to: his``: a use billed per use (past the package, ``when_used_up: bill``)
    makes one DFT^P03 to the HIS with the price code and amount; the HIS answering AE gets
    the same message again (MSH-10 and FT1-2 unchanged), then AA; a package use is not
    charged. The HIS is a real MLLP listener; hl7apy reads the DFT_P03 structure."""
    with Ris(script=["AE"]) as his:
        his_target = {"type": "hl7", "host": "127.0.0.1", "port": his.port}
        settings = _settings({"his": his_target}, when_used_up="bill", charge_to="his")
        rules = routing_rules(settings)
        accounting = Accounting(engine, lambda: settings)
        for n in (1, 2):  # quota 1: the first is a package use, the second billed per use
            uid = f"1.2.826.0.1.3680043.10.511.2{n}"
            _study(engine, uid)
            subject = replace(study(), study_uid=uid)
            ContractDesk(ContractStore(engine)).route(
                uid, rules, T0, lambda used, s=subject: decide(rules, s, None, T0, used=used)
            )
            accounting.record(_sent_job(engine, uid, "lungai"), T0)
        stage = make_stage(engine, {"his": ("hl7", {"host": "127.0.0.1", "port": his.port})})
        assert drain(stage, "his") == [DeliveryState.FAILED, DeliveryState.DONE]
        first, again = his.received
    assert first == again
    parsed = parse_message(again.replace("\n", "\r"), find_groups=True, validation_level=2)
    assert parsed.msh.msh_9.to_er7() == "DFT^P03^DFT_P03"
    ft1 = next(s for s in again.replace("\n", "\r").split("\r") if s.startswith("FT1|"))
    fields = ft1.split("|")
    assert fields[2] == "RB2" and fields[6] == "CG"  # the second job's use, a charge
    assert fields[7] == "310000012^LUNGA lung^CN-Zhejiang"
    assert (fields[10], fields[11], fields[12]) == ("1", "5000&CNY", "5000&CNY")


def _reserved_job(engine: Engine, study_uid: str) -> int:
    """A pending job whose package use was reserved when it was routed; its id."""
    assert ContractStore(engine).reserve(_terms(study_uid), 100, T0) is Reserved.NEW
    return JobStore(engine).create(study_uid, "lunga", route="chest", now=T0).job.id


def _cancel_order(engine: Engine, study_uid: str) -> int:
    with writing(engine) as conn:
        return cancel_for_studies(conn, [study_uid], reason="order cancelled", now=T0)


def test_a_job_cancelled_before_it_was_sent_returns_its_use_once(engine: Engine) -> None:
    """Three reserved uses: the operator cancels one pending job and the order of another is
    cancelled: both uses go back to the package (counter 3 → 1, their terms `returned`); a
    second cancel returns nothing more; a job cancelled after it was sent keeps its use."""
    jobs = JobStore(engine)
    operator, _order, sent = (_reserved_job(engine, f"1.5.{i}") for i in range(3))
    store = ContractStore(engine)
    assert store.used([("pkg", "2026-05")]) == {("pkg", "2026-05"): 3}
    jobs.cancel(operator, reason="cancelled by operator", now=T0)
    assert _cancel_order(engine, "1.5.1") == 1
    assert store.used([("pkg", "2026-05")]) == {("pkg", "2026-05"): 1}
    assert [store.get(f"1.5.{i}", "lunga").charge for i in range(2)] == [  # type: ignore[union-attr]
        UseCharge.RETURNED,
        UseCharge.RETURNED,
    ]
    with pytest.raises(JobStateError):
        jobs.cancel(operator, now=T0)
    assert _cancel_order(engine, "1.5.1") == 0
    jobs.claim(sent, now=T0)
    jobs.finish(sent, [JobState.SENT, JobState.AWAITING_RESULT], now=T0)
    jobs.cancel(sent, reason="cancelled by operator", now=T0)
    assert store.used([("pkg", "2026-05")]) == {("pkg", "2026-05"): 1}
    kept = store.get("1.5.2", "lunga")
    assert kept is not None and kept.charge is UseCharge.PACKAGE
    assert store.uses_since("pkg", T0 - timedelta(days=1)) == [T0]  # the forecast: one use


def _cancel_all(url: str, how: str, count: int) -> int:
    """One process cancelling ``count`` jobs, by operator cancel or by order; how many it
    cancelled (the other process may have been first)."""
    eng = make_engine(url)
    try:
        jobs, done = JobStore(eng), 0
        for i in range(count):
            if how == "order":
                done += _cancel_order(eng, f"8.{i}")
                continue
            try:
                jobs.cancel(i + 1, reason="cancelled by operator", now=T0)
            except (JobStateError, JobChangedError):
                continue
            done += 1
        return done
    finally:
        eng.dispose()


@pytest.mark.postgres
def test_two_processes_cancelling_on_postgresql_return_each_use_once(tmp_path: Path) -> None:
    """40 jobs with reserved uses (and 10 more reserved uses) on PostgreSQL; two processes
    cancel the 40 at once, one as the operator, one as a cancelled order: every job is
    cancelled once, and the counter goes from 50 down to exactly 10."""
    with empty_database("postgresql", tmp_path) as eng:
        ids = [_reserved_job(eng, f"8.{i}") for i in range(40)]
        assert ids == list(range(1, 41))
        for i in range(10):
            ContractStore(eng).reserve(_terms(f"7.{i}"), 100, T0)
        url = eng.url.render_as_string(hide_password=False)
        with multiprocessing.get_context("fork").Pool(2) as pool:
            done = pool.starmap(_cancel_all, [(url, "operator", 40), (url, "order", 40)])
        assert sum(done) == 40
        assert ContractStore(eng).used([("pkg", "2026-05")]) == {("pkg", "2026-05"): 10}
        charges = [ContractStore(eng).get(f"8.{i}", "lunga") for i in range(40)]
        assert all(t is not None and t.charge is UseCharge.RETURNED for t in charges)
