"""Scenarios: YAML files that run radbridge against the simulators and state expectations.

``radbridge harness run SCENARIO… [--junit FILE]`` (see
:mod:`adapters.harness.cli`); from Python, :func:`load_scenario` then
:func:`run_scenario`. The file format is in :mod:`.schema`.
"""

from adapters.harness.scenario.runner import ScenarioReport, Status, run_scenario
from adapters.harness.scenario.schema import Scenario, ScenarioError, load_scenario

__all__ = ["Scenario", "ScenarioError", "ScenarioReport", "Status", "load_scenario", "run_scenario"]
