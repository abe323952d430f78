"""What each step of a scenario does (``expect`` steps are in :mod:`.expect`).

Every step function takes the :class:`~.world.World` and the step's argument
and returns one line saying what it did; :class:`StepFailedError` says why not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from adapters.harness.errors import HarnessError
from adapters.harness.modality import send_files
from adapters.harness.process import LOOPBACK
from adapters.harness.ris import Answer, make_order, order_message, send_message
from adapters.harness.scenario.schema import DeliveryRef, JobRef, SendOrder, SendStudy
from adapters.harness.scenario.world import World
from broker.model.errors import Hl7Error, RadbridgeError
from broker.model.writeback import DeliveryState


class StepFailedError(HarnessError):
    """A step could not do what it was to do."""


def send_order(world: World, step: SendOrder) -> str:
    study = world.studies[step.study]
    order = make_order(
        accession=study.spec.accession,
        patient_id=study.spec.patient_id,
        procedure_code=step.procedure,
        procedure_text=step.procedure_text,
        modality=step.modality or study.modality,
        priority=step.priority,
        study_uid=study.uid if step.with_study_uid else None,
        department=step.department,
    )
    text = order_message(step.message, order, control=step.control)
    try:
        ack = send_message(LOOPBACK, world.hl7_port, text, timeout=15.0)
    except Hl7Error as exc:
        raise StepFailedError(
            f"{step.message} {study.spec.accession}: no acknowledgment: {exc}"
        ) from exc
    said = f"{step.message} {step.control} accession {study.spec.accession} -> {ack.code.value}"
    if ack.code.value != step.ack:
        raise StepFailedError(
            f"{said}, expected {step.ack}" + (f": {ack.text}" if ack.text else "")
        )
    return said


def send_study(world: World, step: SendStudy) -> str:
    study = world.studies[step.study]
    report = send_files(
        study.files,
        host=LOOPBACK,
        port=world.rb_port,
        called_ae=step.called_ae,
        calling_ae=step.calling_ae,
    )
    said = f"{study.spec.kind} {study.spec.accession} {step.calling_ae} -> {step.called_ae}: "
    if not report.ok:
        failure = report.failures[0]
        raise StepFailedError(f"{said}{len(report.failures)} failed, first: {failure.reason}")
    return said + report.summary()


def wait(_world: World, seconds: float) -> str:
    time.sleep(seconds)
    return f"waited {seconds:g} s"


def kill_radbridge(world: World, _arg: Any) -> str:
    if not world.radbridge.running:
        raise StepFailedError("radbridge is not running")
    pid = world.radbridge.pid
    world.radbridge.kill9()
    return f"kill -9 radbridge (pid {pid} and its listeners)"


def stop_radbridge(world: World, _arg: Any) -> str:
    world.radbridge.stop()
    return "radbridge stopped (SIGTERM)"


def start_radbridge(world: World, _arg: Any) -> str:
    if world.radbridge.running:
        raise StepFailedError("radbridge is already running")
    world.radbridge.start()
    return f"radbridge started (pid {world.radbridge.pid})"


def stop_vendor(world: World, name: str) -> str:
    world.stop_vendor(name)
    return f"vendor {name} down"


def start_vendor(world: World, name: str) -> str:
    vendor = world.start_vendor(name)
    return f"vendor {name} up on {vendor.ae_title}@{LOOPBACK}:{vendor.port}"


def stop_pacs(world: World, _arg: Any) -> str:
    world.stop_pacs()
    return "PACS down"


def start_pacs(world: World, _arg: Any) -> str:
    world.start_pacs()
    return f"PACS ({world.pacs_kind}) up on port {world.pacs_ports[0]}"


def set_ris_answer(world: World, answer: Answer) -> str:
    if world.ris is None:
        raise StepFailedError("there is no RIS")
    world.ris.answer = answer
    return f"the RIS now answers {answer.value.upper()}"


def retry_job(world: World, ref: JobRef) -> str:
    study = world.studies[ref.study]
    store = world.jobs()
    job = store.find(study.uid, ref.vendor)
    if job is None:
        raise StepFailedError(f"no job of {ref.study} for {ref.vendor}")
    try:
        retried = store.retry(job.id)
    except RadbridgeError as exc:
        raise StepFailedError(str(exc)) from exc
    return f"job {job.id} ({ref.study} -> {ref.vendor}) {job.state.value} -> {retried.state.value}"


def retry_delivery(world: World, ref: DeliveryRef) -> str:
    study = world.studies[ref.study]
    store = world.deliveries()
    retried = []
    for job in world.jobs().list(study_uid=study.uid):
        for delivery in store.for_job(job.id):
            if delivery.target == ref.target and delivery.state in (
                DeliveryState.DEAD,
                DeliveryState.FAILED,
            ):
                store.retry(delivery.id)
                retried.append(f"{delivery.id} ({delivery.state.value})")
    if not retried:
        raise StepFailedError(f"no dead or failed write-back of {ref.study} to {ref.target}")
    return f"delivery {', '.join(retried)} to {ref.target} retried"


STEPS: dict[str, Callable[[World, Any], str]] = {
    "send_order": send_order,
    "send_study": send_study,
    "wait": wait,
    "kill_radbridge": kill_radbridge,
    "stop_radbridge": stop_radbridge,
    "start_radbridge": start_radbridge,
    "stop_vendor": stop_vendor,
    "start_vendor": start_vendor,
    "stop_pacs": stop_pacs,
    "start_pacs": start_pacs,
    "set_ris_answer": set_ris_answer,
    "retry_job": retry_job,
    "retry_delivery": retry_delivery,
}
"""Step functions by action name (``expect`` is handled by the runner)."""


def describe(action: str, argument: Any) -> str:
    """A short label for a step: ``send_study chest1``, ``stop_vendor lungai``."""
    if action in ("send_order", "send_study"):
        return f"{action} {argument.study}"
    if action in ("retry_job",):
        return f"{action} {argument.study} -> {argument.vendor}"
    if action == "retry_delivery":
        return f"{action} {argument.study} -> {argument.target}"
    if action == "wait":
        return f"wait {argument:g} s"
    if action == "set_ris_answer":
        return f"set_ris_answer {argument.value}"
    if isinstance(argument, str):
        return f"{action} {argument}"
    return action
