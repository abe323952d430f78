"""Run one fuzz target under atheris (libFuzzer): ``python -m tests.fuzz.run hl7 --seconds 60``.

The seed corpus ``tests/fuzz/corpus/<target>/`` and the kept crashes are read;
new inputs the fuzzer finds go to a scratch folder (``--work``, by default
``var/fuzz/<target>``), never into the repository. A crash (an exception that
is not a :class:`~broker.model.errors.RadbridgeError`) stops the run with exit
status 1 and leaves the input as ``crash-*`` in the scratch folder: add it to
``tests/fuzz/crashes/<target>/`` once it is fixed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings
from pathlib import Path

import atheris

#: radbridge's modules that read what peers send: their branches guide the fuzzer.
PARSERS = [
    "adapters.hl7",
    "adapters.dicom.mapping",
    "adapters.dicom_header",
    "adapters.dicom_uid",
    "adapters.results.findings",
]
#: Also instrumented unless --shallow: the libraries the parsers call (slower to start).
LIBRARIES = ["pydicom", "hl7apy"]

with atheris.instrument_imports(
    include=[*PARSERS, *([] if "--shallow" in sys.argv else LIBRARIES)]
):
    from tests.fuzz import targets

from broker.model.errors import RadbridgeError  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=sorted(targets.TARGETS))
    parser.add_argument("--seconds", type=int, default=60, help="how long to fuzz")
    parser.add_argument("--runs", type=int, default=-1, help="stop after this many inputs")
    parser.add_argument("--work", type=Path, help="scratch folder for new inputs and crashes")
    parser.add_argument("--max-len", type=int, default=8192, help="longest input tried")
    parser.add_argument(
        "--shallow", action="store_true", help=f"guide by radbridge's parsers only, not {LIBRARIES}"
    )
    args = parser.parse_args(argv)
    target = targets.TARGETS[args.target]
    work = args.work or Path("var") / "fuzz" / args.target
    work.mkdir(parents=True, exist_ok=True)
    targets.SCRATCH = work.resolve() / "input.dcm"  # libFuzzer's exit skips atexit
    seeds = [
        str(folder)
        for folder in (targets.CORPUS / args.target, targets.CRASHES / args.target)
        if folder.is_dir()
    ]

    def one_input(data: bytes) -> None:
        with contextlib.suppress(RadbridgeError):
            target(data)

    libfuzzer_args = [
        sys.argv[0],
        str(work),
        *seeds,
        f"-max_total_time={args.seconds}",
        f"-runs={args.runs}",
        f"-max_len={args.max_len}",
        f"-artifact_prefix={work}/",
        "-timeout=10",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
    ]
    warnings.simplefilter("ignore")  # pydicom warns of every odd value: the fuzzer makes many
    logging.disable(logging.CRITICAL)
    atheris.Setup(libfuzzer_args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
