"""The test harness: a simulated modality, RIS, AI vendor and PACS that speak the wire formats.

Each simulator is a class usable from Python (and from pytest through
:mod:`adapters.harness.fixtures`) and a ``radbridge harness …`` command
(:mod:`adapters.harness.cli`). Everything listens on loopback unless told
otherwise, and every process the harness starts is stopped by its PID.
"""
