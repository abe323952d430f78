"""Expectations: what must become true (or stay true) within a time limit.

Each kind is a probe that looks once and answers :class:`Look`: whether the
expectation holds, what was seen, and whether that can still change (a job
that is ``dead`` when ``done`` was expected will not be done). :func:`check`
polls the probe until it holds, the time is up, or it cannot hold any more;
``vendor_receives_nothing`` instead must hold for the whole time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import httpx

from adapters.harness import launcher
from adapters.harness.errors import HarnessError
from adapters.harness.process import nodelay_env
from adapters.harness.scenario.schema import (
    Expectation,
    Explains,
    JobCount,
    JobState,
    PacsHoldsSr,
    RisReceivesOru,
    StudyFlags,
    Usage,
    VendorReceives,
    VendorReceivesNothing,
    WebhookReceives,
)
from adapters.harness.scenario.world import World
from adapters.hl7.parse import Hl7ParseError, parse, read_header
from broker.model.errors import NotFoundError, RadbridgeError
from broker.store.usage import UsageStore

POLL_SECONDS = 0.2
#: Job states a job does not leave without an operator.
SETTLED = frozenset({"done", "dead", "cancelled"})


class ExpectationFailedError(HarnessError):
    """An expectation did not hold in time; the message says what was seen."""


@dataclass(frozen=True)
class Look:
    ok: bool
    seen: str
    final: bool = False


def _vendor_receives(world: World, e: VendorReceives) -> Look:
    study = world.studies[e.study]
    want = e.instances or len(study.files)
    have = world.vendor_instances(e.vendor, study.uid)
    return Look(have >= want, f"{e.vendor} has {have} of {want} instance(s) of {e.study}")


def _vendor_receives_nothing(world: World, e: VendorReceivesNothing) -> Look:
    uid = world.studies[e.study].uid if e.study else None
    have = world.vendor_instances(e.vendor, uid)
    what = f"of {e.study}" if e.study else "at all"
    return Look(have == 0, f"{e.vendor} has {have} instance(s) {what}", final=have > 0)


def _pacs_holds_sr(world: World, e: PacsHoldsSr) -> Look:
    study = world.studies[e.study]
    if world.pacs is None:
        return Look(False, "the PACS is down")
    try:
        held = [s for s in world.pacs_studies() if s.study_instance_uid == study.uid]
    except HarnessError as exc:
        return Look(False, f"cannot query the PACS: {exc}")
    srs = [series for s in held for series in s.series if series.modality == "SR"]
    if srs:
        count = sum(s.instances for s in srs)
        too_many = e.at_most is not None and count > e.at_most
        seen = f"PACS holds {count} SR instance(s) of {e.study}"
        shown = seen + (f", more than {e.at_most}" if too_many else "")
        shown += f", fewer than {e.count}" if count < e.count else ""
        return Look(count >= e.count and not too_many, shown, final=too_many)
    series = sum(len(s.series) for s in held)
    return Look(False, f"PACS holds {series} series of {e.study}, no SR")


def _oru_matches(raw: bytes, e: RisReceivesOru, accession: str) -> bool:
    try:
        message = parse(raw, read_header(raw, "utf-8"))
    except Hl7ParseError:
        return False
    if not message.header.kind.startswith("ORU"):
        return False
    obr = message.first("OBR")
    if obr is None or obr.value(18) != accession:
        return False
    observations = message.all("OBX")
    if e.obx is not None:
        needle = e.obx.lower()
        if not any(needle in (o.raw(3) + "|" + o.raw(5)).lower() for o in observations):
            return False
    notes = [n.raw(3).lower() for n in message.all("NTE")]
    if not all(any(text.lower() in note for note in notes) for text in e.nte):
        return False
    return e.flag is None or any(o.value(8) == e.flag for o in observations)


def _ris_receives_oru(world: World, e: RisReceivesOru) -> Look:
    if world.ris is None:
        return Look(False, "there is no RIS", final=True)
    accession = world.studies[e.study].spec.accession
    messages = list(world.ris.messages)
    matching = [m for m in messages if _oru_matches(m.raw, e, accession)]
    orus = sum(1 for m in messages if m.kind.startswith("ORU"))
    wanted = f"OBR-18 {accession}" + (f", OBX containing {e.obx!r}" if e.obx else "")
    wanted += f", OBX-8 {e.flag}" if e.flag else ""
    wanted += "".join(f", an NTE containing {text!r}" for text in e.nte)
    at_most = e.at_most if e.at_most is not None else len(matching)
    return Look(
        e.count <= len(matching) <= at_most,
        f"RIS got {len(matching)} ORU^R01 with {wanted} (of {orus} ORU, {len(messages)} messages)",
        final=len(matching) > at_most,
    )


def _job(world: World, e: JobState) -> Look:
    study = world.studies[e.study]
    job = world.jobs().find(study.uid, e.vendor)
    if job is None:
        return Look(False, f"no job of {e.study} for {e.vendor}")
    state = job.state.value
    ok = (
        state == e.state
        and (e.attempts is None or job.attempts == e.attempts)
        and (e.min_attempts is None or job.attempts >= e.min_attempts)
    )
    seen = f"job {job.id} ({e.study} -> {e.vendor}) is {state}, {job.attempts} attempt(s)"
    if job.last_error and not ok:
        seen += f"; last error: {job.last_error[:200]}"
    return Look(ok, seen, final=not ok and state in SETTLED and e.state != state)


def _jobs(world: World, e: JobCount) -> Look:
    study = world.studies[e.study]
    try:
        state = world.study_store().get_study(study.uid).state.value
    except NotFoundError:
        return Look(False, f"radbridge does not have {e.study} yet")
    jobs = world.jobs().list(study_uid=study.uid)
    seen = f"{e.study} is {state} with {len(jobs)} job(s)" + (
        f" ({', '.join(j.vendor for j in jobs)})" if jobs else ""
    )
    return Look(state == "stable" and len(jobs) == e.count, seen, final=len(jobs) > e.count)


def _usage(world: World, e: Usage) -> Look:
    """What ``radbridge usage report`` would print, read from the store as the job probes are
    (a command per poll costs seconds of start-up, longer than a short ``within`` on a busy
    machine)."""
    today = date.today()
    lines = UsageStore(world.engine).report(
        today - timedelta(days=1), today + timedelta(days=1), e.vendor
    )
    counts = {
        key: sum(getattr(line, key) for line in lines) for key in ("studies", "billable", "trial")
    }
    ok = counts["studies"] == e.studies and all(
        getattr(e, key) is None or counts[key] == getattr(e, key) for key in ("billable", "trial")
    )
    seen = f"usage of {e.vendor}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
    return Look(ok, seen)


def _explain(world: World, e: Explains) -> Look:
    uid = world.studies[e.study].uid
    args = ["routes", "explain", uid, "-c", str(world.config_path)]
    run = launcher.run(args, env=nodelay_env(), timeout=120)
    text = run.stdout.strip()
    if run.returncode not in (0, 3) or not text:
        return Look(False, f"radbridge routes explain failed: {run.stderr.strip()[-300:]}")
    if e.says in text:
        return Look(True, f"explain of {e.study} says {e.says!r}")
    return Look(False, f"explain of {e.study} does not say {e.says!r}: {text[-600:]}")


def _study_flags(world: World, e: StudyFlags) -> Look:
    uid = world.studies[e.study].uid
    try:
        answer = httpx.get(
            f"{world.http_url}/api/v1/studies/{uid}/findings",
            headers={"Authorization": f"Bearer {world.api_token()}"},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        return Look(False, f"cannot ask radbridge's API: {exc}")
    if answer.status_code != 200:
        return Look(False, f"GET /api/v1/studies/…/findings answered {answer.status_code}")
    view = answer.json()
    flags = list(view.get("flags") or [])
    products = sorted({str(f["provenance"]["vendor"]) for f in view.get("findings") or []})
    seen = f"{e.study} has flags {flags} (findings of {', '.join(products) or 'no product'})"
    return Look(sorted(flags) == sorted(flag.value for flag in e.flags), seen)


def _webhook_receives(world: World, e: WebhookReceives) -> Look:
    if world.webhook is None:
        return Look(False, "there is no webhook", final=True)
    uid = world.studies[e.study].uid
    bodies = world.webhook.bodies()
    about = [b for b in bodies if b.get("event") == e.event and b.get("study_uid") == uid]
    seen = f"the webhook got {len(about)} {e.event!r} notification(s) of {e.study}"
    seen += f" ({len(bodies)} in all)"
    return Look(len(about) == e.count, seen, final=len(about) > e.count)


PROBES: dict[str, Callable[[World, Any], Look]] = {
    "vendor_receives": _vendor_receives,
    "vendor_receives_nothing": _vendor_receives_nothing,
    "pacs_holds_sr": _pacs_holds_sr,
    "ris_receives_oru": _ris_receives_oru,
    "job": _job,
    "jobs": _jobs,
    "usage": _usage,
    "explain": _explain,
    "study_flags": _study_flags,
    "webhook_receives": _webhook_receives,
}

#: Seconds a ``jobs`` count must hold once the study is stable (routing is not instant).
HOLD_SECONDS = 1.0


def check(world: World, expectation: Expectation) -> str:
    """Wait until ``expectation`` holds (within its ``within``); what was seen.

    :class:`ExpectationFailedError` when it did not hold in time or cannot hold any more.
    """
    probe = PROBES[expectation.kind]
    body = expectation.body
    within = expectation.within
    started = time.monotonic()
    deadline = started + within
    steady = expectation.kind == "vendor_receives_nothing"
    held_since: float | None = None
    while True:
        try:
            look = probe(world, body)
        except (RadbridgeError, OSError) as exc:
            look = Look(False, f"cannot look: {exc}")
        now = time.monotonic()
        if steady:
            if not look.ok:
                raise ExpectationFailedError(f"{look.seen} after {now - started:.1f} s")
            if now >= deadline:
                return f"{look.seen} for {within:g} s"
        elif look.ok:
            if expectation.kind != "jobs":
                return f"{look.seen} after {now - started:.1f} s"
            held_since = held_since or now
            if now - held_since >= HOLD_SECONDS:
                return look.seen
        else:
            held_since = None
            if look.final:
                raise ExpectationFailedError(f"{look.seen}; it will not change")
            if now >= deadline:
                raise ExpectationFailedError(f"{look.seen} after {within:g} s")
        time.sleep(POLL_SECONDS)


def describe(expectation: Expectation) -> str:
    """A short label: ``expect job chest1 -> lungai done within 30 s``."""
    if expectation.name:
        return expectation.name
    body, kind = expectation.body, expectation.kind
    within = f"within {expectation.within:g} s"
    if isinstance(body, VendorReceives):
        text = f"{body.vendor} receives {body.study}"
        if body.instances:
            text += f" ({body.instances}+ instances)"
    elif isinstance(body, VendorReceivesNothing):
        text = f"{body.vendor} receives nothing" + (f" of {body.study}" if body.study else "")
        within = f"for {expectation.within:g} s"
    elif isinstance(body, PacsHoldsSr):
        text = f"PACS holds {body.count} SR of {body.study}"
        if body.at_most:
            text += f" (at most {body.at_most})"
    elif isinstance(body, RisReceivesOru):
        text = f"RIS receives ORU for {body.study}"
        if body.obx:
            text += f" OBX ~ {body.obx!r}"
        if body.flag:
            text += f" flag {body.flag}"
        if body.count > 1 or body.at_most:
            text += f" x{body.count}" + (f" (at most {body.at_most})" if body.at_most else "")
    elif isinstance(body, JobState):
        text = f"job {body.study} -> {body.vendor} {body.state}"
    elif isinstance(body, JobCount):
        text = f"{body.study} has {body.count} job(s)"
    elif isinstance(body, Usage):
        text = f"usage {body.vendor}: {body.studies} studies"
    elif isinstance(body, Explains):
        text = f"explain {body.study} says {body.says!r}"
    elif isinstance(body, StudyFlags):
        text = f"{body.study} flagged {', '.join(f.value for f in body.flags) or 'nothing'}"
    elif isinstance(body, WebhookReceives):
        text = f"webhook hears {body.count} {body.event} of {body.study}"
    else:  # pragma: no cover - every kind is above
        text = kind
    return f"expect {text} {within}"
