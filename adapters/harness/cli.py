"""``radbridge harness …``: the simulated modality, RIS, AI vendor and PACS from the command line.

Registered under the ``radbridge.commands`` entry points, so the broker's CLI
adds it without importing the adapter by name.
"""

from __future__ import annotations

import json
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from pydicom import dcmread
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from adapters.dicom.synthetic import KINDS, generate_study
from adapters.harness.errors import HarnessError
from adapters.harness.modality import dicom_files, send_files
from adapters.harness.mpps import ProcedureStep, references, step_dataset
from adapters.harness.pacs import BuiltinPacs, Orthanc, orthanc_executable, query_folder
from adapters.harness.pacs import query_orthanc as _query_orthanc
from adapters.harness.process import LOOPBACK
from adapters.harness.products import Presence, ProductKind, finding_codes
from adapters.harness.ris import (
    MESSAGE_KINDS,
    Answer,
    ReceivedMessage,
    RisListener,
    make_order,
    order_message,
    send_message,
)
from adapters.harness.vendor import Fault, ResultsTarget, ResultType, SimulatedVendor
from broker.cli.common import err, out
from broker.model.errors import DicomError, Hl7Error

app = typer.Typer(
    help="Test harness: simulated modality, RIS, AI vendor and PACS.", no_args_is_help=True
)
modality_app = typer.Typer(help="A simulated modality (C-STORE sender).", no_args_is_help=True)
ris_app = typer.Typer(help="A simulated RIS (HL7 v2 over MLLP).", no_args_is_help=True)
vendor_app = typer.Typer(help="A simulated AI vendor (DICOM and HTTP).", no_args_is_help=True)
pacs_app = typer.Typer(help="A receiving PACS (Orthanc or built-in).", no_args_is_help=True)
app.add_typer(modality_app, name="modality")
app.add_typer(ris_app, name="ris")
app.add_typer(vendor_app, name="vendor")
app.add_typer(pacs_app, name="pacs")


@app.command("run")
def run(
    scenarios: Annotated[list[Path], typer.Argument(help="Scenario files (YAML).")],
    junit: Annotated[Path | None, typer.Option(help="Write JUnit XML here (for CI).")] = None,
    keep: Annotated[
        Path | None, typer.Option(help="Keep every scenario's files under this folder.")
    ] = None,
    jobs: Annotated[int, typer.Option(min=1, help="Scenarios run at the same time.")] = 1,
) -> None:
    """Run scenarios: radbridge and the simulators they need, steps, expectations with time
    limits; a pass/fail table with each step's time. Exit code 0 only if every one passed,
    1 if any failed, 2 if a file is not a valid scenario (FILE:LINE problems, nothing run)."""
    from adapters.harness.scenario.junit import write_junit  # noqa: PLC0415 - only for run
    from adapters.harness.scenario.runner import (  # noqa: PLC0415
        load_all,
        print_report,
        run_all,
        summary,
    )

    loaded, problems = load_all(scenarios)
    if problems:
        for problem in problems:
            err.print(problem, markup=False, highlight=False)
        raise typer.Exit(2)
    started = time.monotonic()
    err.print(f"running {len(loaded)} scenario(s), {jobs} at a time …", highlight=False)
    reports = run_all(loaded, keep=keep, jobs=jobs, on_report=lambda r: print_report(out, r))
    out.print(summary(reports, time.monotonic() - started), highlight=False)
    if junit is not None:
        write_junit(reports, junit)
        out.print(f"JUnit XML: {junit}", highlight=False)
    if not all(r.ok for r in reports):
        raise typer.Exit(1)


Host = Annotated[str, typer.Option(help="Address (loopback by default).")]


def _run_until_stopped() -> None:
    """Block until Ctrl-C or SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()


# ------------------------------------------------------------------ modality


@modality_app.command("send")
def modality_send(
    kind: Annotated[
        str | None,
        typer.Argument(help=f"Study kind to generate: {', '.join(KINDS)}.", show_default=False),
    ] = None,
    *,
    folder: Annotated[
        Path | None, typer.Option(help="Send these DICOM files instead (recursively).")
    ] = None,
    port: Annotated[int, typer.Option(help="Called port.")] = 11112,
    host: Host = LOOPBACK,
    ae_title: Annotated[str, typer.Option(help="Called AE title.")] = "RADBRIDGE",
    calling_ae: Annotated[str, typer.Option(help="Our AE title.")] = "CT01",
    associations: Annotated[int, typer.Option(min=1, help="Concurrent associations.")] = 1,
    instances: Annotated[int | None, typer.Option(help="Slices / time points / views.")] = None,
    rows: Annotated[int | None, typer.Option(help="Matrix rows.")] = None,
    columns: Annotated[int | None, typer.Option(help="Matrix columns.")] = None,
    accession: Annotated[str, typer.Option(help="Accession number.")] = "ACC0001",
    patient_id: Annotated[str, typer.Option(help="Patient ID.")] = "PAT0001",
    patient_name: Annotated[str, typer.Option(help="Patient name.")] = "DOE^JANE",
    study_uid: Annotated[str | None, typer.Option(help="Study Instance UID.")] = None,
    charset: Annotated[
        str | None,
        typer.Option(
            help="Specific Character Set: 'ISO_IR 100', 'ISO_IR 192' (UTF-8), 'GB18030'… "
            "(default: ISO_IR 100, or ISO_IR 192 for a name Latin-1 cannot hold)."
        ),
    ] = None,
    keep: Annotated[
        Path | None, typer.Option(help="Write the generated study here and keep it.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Network timeout, seconds.")] = 30.0,
    mpps: Annotated[
        bool,
        typer.Option(
            "--mpps",
            help="Also send the procedure step: N-CREATE IN PROGRESS before the images, "
            "N-SET COMPLETED listing them after.",
        ),
    ] = False,
) -> None:
    """Send a generated study (or a folder) by C-STORE; instances, MB, seconds and MB/s at the end.

    The exit code is 1 when any C-STORE (or MPPS request) failed, 2 for bad options.
    """
    if (kind is None) == (folder is None):
        err.print("give a study kind or --folder (one of them)")
        raise typer.Exit(2)
    with tempfile.TemporaryDirectory(prefix="radbridge-modality-") as tmp:
        if folder is not None:
            files = dicom_files(folder)
        else:
            assert kind is not None
            if kind not in KINDS:
                err.print(f"no such study kind {kind!r}; valid: {', '.join(KINDS)}")
                raise typer.Exit(2)
            target = keep or Path(tmp)
            try:
                files = generate_study(
                    kind,
                    target,
                    instances=instances,
                    rows=rows,
                    columns=columns,
                    patient_id=patient_id,
                    patient_name=patient_name,
                    accession=accession,
                    study_uid=study_uid,
                    charset=charset,
                )
            except (DicomError, LookupError) as exc:
                err.print(str(exc), markup=False)
                raise typer.Exit(2) from exc
        progress = Progress(
            TextColumn(f"C-STORE to {ae_title}@{host}:{port}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=err,
            disable=not err.is_terminal,
        )
        with progress:
            task = progress.add_task("send", total=len(files), rate="")

            def advance(_path: Path, _size: int) -> None:
                progress.advance(task)
                speed = progress.tasks[task].speed
                progress.update(task, rate=f"{speed:.1f} instances/s" if speed else "")

            step = None
            if mpps:
                step = _start_step(
                    files,
                    host=host,
                    port=port,
                    called_ae=ae_title,
                    calling_ae=calling_ae,
                    timeout=timeout,
                )
            try:
                report = send_files(
                    files,
                    host=host,
                    port=port,
                    called_ae=ae_title,
                    calling_ae=calling_ae,
                    associations=associations,
                    timeout=timeout,
                    on_sent=advance,
                )
            except HarnessError as exc:
                err.print(str(exc), markup=False)
                raise typer.Exit(2) from exc
            if step is not None:
                sent = [f for f in files if f not in {x.path for x in report.failures}]
                step_study, step_accession = _study_of(files[0])
                done = step_dataset(
                    step_study, "COMPLETED", references(sent), accession=step_accession
                )
                try:
                    status = step.set(done)
                except HarnessError as exc:
                    err.print(str(exc), markup=False)
                    raise typer.Exit(1) from exc
                out.print(f"MPPS {step.uid} COMPLETED: status 0x{status:04X}", highlight=False)
                if status != 0:
                    raise typer.Exit(1)
    for failure in report.failures[:20]:
        err.print(f"failed: {failure.path.name}: {failure.reason}", markup=False)
    out.print(
        f"sent {report.instances} of {len(files)} instances, {report.megabytes:.1f} MB in "
        f"{report.seconds:.2f} s ({report.mb_per_second:.1f} MB/s) over "
        f"{report.associations} association(s)",
        highlight=False,
    )
    if not report.ok:
        raise typer.Exit(1)


def _study_of(path: Path) -> tuple[str, str | None]:
    ds = dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.get("AccessionNumber") or "") or None


def _start_step(
    files: list[Path], *, host: str, port: int, called_ae: str, calling_ae: str, timeout: float
) -> ProcedureStep:
    """The exam starts: its MPPS, IN PROGRESS, before the first image."""
    study_uid, accession = _study_of(files[0])
    try:
        step = ProcedureStep(
            host, port, called_ae=called_ae, calling_ae=calling_ae, timeout=timeout
        )
        status = step.create(step_dataset(study_uid, "IN PROGRESS", accession=accession))
    except HarnessError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(1) from exc
    out.print(f"MPPS {step.uid} IN PROGRESS: status 0x{status:04X}", highlight=False)
    if status != 0:
        raise typer.Exit(1)
    return step


# ----------------------------------------------------------------------- RIS


@ris_app.command("send")
def ris_send(
    *,
    accession: Annotated[str, typer.Option(help="Accession number (OBR-18 / IPC-1).")],
    port: Annotated[int, typer.Option(help="MLLP port of the receiver.")],
    host: Host = LOOPBACK,
    message: Annotated[
        str, typer.Option(help=f"Message kind: {', '.join(MESSAGE_KINDS)}.")
    ] = "ORM^O01",
    patient_id: Annotated[str, typer.Option(help="Patient ID (PID-3).")] = "PAT0001",
    patient_name: Annotated[str, typer.Option(help="Patient name (PID-5).")] = "DOE^JANE",
    issuer: Annotated[str, typer.Option(help="Patient ID issuer.")] = "EXAMPLE-GH",
    procedure: Annotated[str, typer.Option(help="Procedure code.")] = "CTCHEST",
    procedure_text: Annotated[str, typer.Option(help="Procedure text.")] = "CT chest",
    modality: Annotated[str, typer.Option(help="Modality.")] = "CT",
    priority: Annotated[str, typer.Option(help="STAT, ASAP or ROUTINE.")] = "ROUTINE",
    study_uid: Annotated[str | None, typer.Option(help="Study Instance UID (ZDS-1/IPC-3).")] = None,
    control: Annotated[str, typer.Option(help="ORC-1: NW new, CA cancel, XO change.")] = "NW",
    prior_patient_id: Annotated[
        str | None, typer.Option(help="ADT^A40: the patient merged away.")
    ] = None,
    charset: Annotated[
        str,
        typer.Option(
            help="MSH-18, the message's character set: 'UNICODE UTF-8', 'GB 18030-2000'… "
            "(default: none, ASCII)."
        ),
    ] = "",
    report: Annotated[
        str,
        typer.Option(
            help="ORU^R01, MDM^T02: the signed report's text (a line per \\n), e.g. "
            "'颅内未见出血。' or 'No evidence of hemorrhage.'"
        ),
    ] = "",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the ACK.")] = 10.0,
) -> None:
    """Send an order (ORM^O01, OMI^O23), a patient update (ADT) or a signed final report
    (ORU^R01, MDM^T02) over MLLP; print the ACK.

    The exit code is 0 for AA/CA, 1 for any other answer or none.
    """
    try:
        order = make_order(
            accession=accession,
            patient_id=patient_id,
            patient_name=patient_name,
            issuer=issuer or None,
            procedure_code=procedure,
            procedure_text=procedure_text,
            modality=modality,
            priority=priority,
            study_uid=study_uid,
        )
        text = order_message(
            message.upper(),
            order,
            control=control,
            prior_patient_id=prior_patient_id,
            charset=charset,
            report=report.replace("\\n", "\n"),
        )
    except (HarnessError, ValueError) as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(2) from exc
    try:
        ack = send_message(host, port, text, timeout=timeout)
    except Hl7Error as exc:
        err.print(f"no acknowledgment: {exc}", markup=False)
        raise typer.Exit(1) from exc
    out.print(
        f"{message.upper()} accession {accession} -> {ack.code.value}"
        + (f": {ack.text}" if ack.text else ""),
        highlight=False,
        markup=False,
    )
    if not ack.code.positive:
        raise typer.Exit(1)


@ris_app.command("listen")
def ris_listen(
    *,
    port: Annotated[int, typer.Option(help="MLLP port to listen on.")] = 2576,
    host: Host = LOOPBACK,
    answer: Annotated[Answer, typer.Option(help="Answer AA, AE or nothing.")] = Answer.AA,
    folder: Annotated[Path | None, typer.Option(help="Write each message here.")] = None,
    show_phi: Annotated[bool, typer.Option(help="Print patient and result text.")] = False,
    count: Annotated[
        int | None, typer.Option(help="Exit after this many messages (default: Ctrl-C).")
    ] = None,
) -> None:
    """Receive results (ORU^R01) or any HL7 message over MLLP, print a summary, answer as told."""
    done = threading.Event()
    seen = 0

    def show(message: ReceivedMessage) -> None:
        nonlocal seen
        seen += 1
        answered = message.answered or "no answer"
        out.print(f"{message.summary} -> {answered}", highlight=False, markup=False)
        if count is not None and seen >= count:
            done.set()

    listener = RisListener(
        host=host, port=port, answer=answer, folder=folder, show_phi=show_phi, on_message=show
    )
    try:
        listener.start()
    except HarnessError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(1) from exc
    out.print(f"RIS listening for MLLP on {host}:{port}, answering {answer.value}", highlight=False)
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    listener.stop()


# -------------------------------------------------------------------- vendor


@vendor_app.command("run")
def vendor_run(
    *,
    product: Annotated[ProductKind, typer.Option(help="Product kind.")],
    port: Annotated[int, typer.Option(help="DICOM port.")] = 11120,
    host: Host = LOOPBACK,
    ae_title: Annotated[str, typer.Option(help="Our AE title.")] = "AIVENDOR",
    http_port: Annotated[
        int | None, typer.Option(help="Also take manifests by HTTP on this port.")
    ] = None,
    delay: Annotated[float, typer.Option(help="Seconds before the result goes back.")] = 2.0,
    result: Annotated[ResultType, typer.Option(help="What goes back.")] = ResultType.SR,
    results_ae: Annotated[str | None, typer.Option(help="Results AE title.")] = None,
    results_host: Annotated[str, typer.Option(help="Results AE host.")] = LOOPBACK,
    results_port: Annotated[int | None, typer.Option(help="Results AE port.")] = None,
    callback_url: Annotated[
        str | None, typer.Option(help="JSON findings go here; {job_id}, {study_uid} filled in.")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="RADBRIDGE_HARNESS_TOKEN", help="Bearer token for the callback."),
    ] = None,
    fault: Annotated[Fault, typer.Option(help="Misbehave this way.")] = Fault.NONE,
    slow_seconds: Annotated[float, typer.Option(help="Per instance, with --fault slow.")] = 0.5,
    abort_after: Annotated[int, typer.Option(help="Instances before --fault abort.")] = 1,
    folder: Annotated[Path | None, typer.Option(help="Keep received studies here.")] = None,
    finding: Annotated[
        list[str] | None,
        typer.Option(
            help="CODE=present|absent: say this of a finding code (SCT:786838002=absent); "
            "repeat for more codes."
        ),
    ] = None,
) -> None:
    """Run a simulated AI vendor until Ctrl-C: receive studies, return results after a delay."""
    overrides: dict[str, Presence] = {}
    known = finding_codes(product)
    for given in finding or []:
        code, _, told = given.partition("=")
        if code not in known or told not in set(Presence):
            err.print(
                f"--finding {given!r}: valid: CODE=present|absent with a code "
                f"{product.value} reports: {', '.join(known)}",
                markup=False,
            )
            raise typer.Exit(2)
        overrides[code] = Presence(told)
    with tempfile.TemporaryDirectory(prefix="radbridge-vendor-") as tmp:
        vendor = SimulatedVendor(
            product,
            folder or Path(tmp),
            ae_title=ae_title,
            host=host,
            port=port,
            http_port=http_port,
            delay=delay,
            result=result,
            target=ResultsTarget(
                ae_title=results_ae,
                host=results_host,
                port=results_port,
                callback_url=callback_url,
                token=token,
            ),
            fault=fault,
            slow_seconds=slow_seconds,
            abort_after=abort_after,
            on_event=lambda text: out.print(text, highlight=False, markup=False),
            findings=overrides,
        )
        try:
            vendor.start()
        except OSError as exc:
            err.print(f"cannot listen: {exc}", markup=False)
            raise typer.Exit(1) from exc
        where = f"DICOM {ae_title}@{host}:{port}" + (
            f", HTTP http://{host}:{http_port}" if http_port else ""
        )
        out.print(
            f"simulated {product.value} vendor on {where}; fault {fault.value}; Ctrl-C stops",
            highlight=False,
        )
        _run_until_stopped()
        vendor.stop()


# ---------------------------------------------------------------------- PACS


@pacs_app.command("run")
def pacs_run(
    *,
    port: Annotated[int, typer.Option(help="DICOM port.")] = 4242,
    http_port: Annotated[int, typer.Option(help="Orthanc's HTTP port.")] = 8042,
    aet: Annotated[str, typer.Option(help="AE title.")] = "PACS",
    folder: Annotated[
        Path | None, typer.Option(help="Storage folder (default: a temporary one).")
    ] = None,
    builtin: Annotated[bool, typer.Option(help="Use the built-in SCP even with Orthanc.")] = False,
) -> None:
    """Run a receiving PACS until Ctrl-C: Orthanc when installed, else a built-in storage SCP."""
    with tempfile.TemporaryDirectory(prefix="radbridge-pacs-") as tmp:
        storage = folder or Path(tmp)
        if builtin or orthanc_executable() is None:
            pacs = BuiltinPacs(storage, ae_title=aet, port=port)
            pacs.start()
            out.print(
                f"built-in PACS {aet}@{LOOPBACK}:{port}, files in {storage}; "
                f"query: radbridge harness pacs query --folder {storage}",
                highlight=False,
            )
            _run_until_stopped()
            pacs.stop()
            return
        orthanc = Orthanc(storage, aet=aet, http_port=http_port, dicom_port=port)
        try:
            orthanc.start()
        except (HarnessError, TimeoutError, RuntimeError) as exc:
            err.print(str(exc), markup=False)
            raise typer.Exit(1) from exc
        out.print(
            f"Orthanc {aet}@{LOOPBACK}:{port}, REST {orthanc.http_url} (pid {orthanc.pid}); "
            f"query: radbridge harness pacs query --orthanc {orthanc.http_url}",
            highlight=False,
        )
        _run_until_stopped()
        orthanc.stop()


@pacs_app.command("query")
def pacs_query(
    orthanc: Annotated[str | None, typer.Option(help="Orthanc's REST URL.")] = None,
    folder: Annotated[Path | None, typer.Option(help="A built-in PACS's folder.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What a PACS holds: studies, their series and instance counts."""
    if (orthanc is None) == (folder is None):
        err.print("give --orthanc URL or --folder DIR (one of them)")
        raise typer.Exit(2)
    try:
        studies = _query_orthanc(orthanc) if orthanc else query_folder(folder or Path())
    except HarnessError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(1) from exc
    if as_json:
        print(json.dumps([s.to_json() for s in studies], indent=2))
        return
    for study in studies:
        out.print(
            f"{study.study_instance_uid}  patient {study.patient_id or '-'}  accession "
            f"{study.accession_number or '-'}  {study.study_description or ''}  "
            f"{len(study.series)} series, {study.instances} instances",
            highlight=False,
            markup=False,
        )
        for series in study.series:
            out.print(
                f"  {series.series_instance_uid}  {series.modality or '-'}  "
                f"{series.series_description or ''}  {series.instances}",
                highlight=False,
                markup=False,
            )
    if not studies:
        out.print("no studies", highlight=False)
