"""The layers: which package may import which, and no two packages import each other."""

from __future__ import annotations

import ast
import functools
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("broker", "adapters", "routing", "config")

#: What each package of the core may import of radbridge, besides its own modules.
#: From the bottom up: the core model, the store, the job engine, routing and config
#: (which see only the model), the running service, the command line; the operators'
#: languages and local times (``broker.i18n``) stand alone below the command line. ``broker``
#: itself is only its ``__init__``. An adapter (``adapters.<edge>``) may import any of
#: them but the command line, and other adapters as long as no cycle forms.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "broker": frozenset(),
    "broker.model": frozenset(),
    "broker.i18n": frozenset(),
    "broker.store": frozenset({"broker.model"}),
    "broker.engine": frozenset({"broker.model", "broker.store"}),
    "routing": frozenset({"broker.model"}),
    "config": frozenset({"broker.model", "routing"}),
    "broker.migrations": frozenset({"broker.model", "broker.store"}),
    "broker.runtime": frozenset(
        {"broker.model", "broker.store", "broker.engine", "routing", "config"}
    ),
    "broker.cli": frozenset(
        {
            "broker.model",
            "broker.i18n",
            "broker.store",
            "broker.engine",
            "broker.runtime",
            "routing",
            "config",
        }
    ),
}
CLI = "broker.cli"


@dataclass(frozen=True)
class Import:
    """One import of radbridge's own code: where it is and what it names."""

    file: str
    line: int
    module: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} imports {self.module}"


def package_of(module: str) -> str:
    """``broker.<layer>`` or ``adapters.<edge>`` (a folder or a module), else the top package."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] in ("broker", "adapters") else parts[0]


def module_of(path: Path) -> str:
    """The dotted name of a source file."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_in(path: Path) -> Iterator[Import]:
    """Every import of radbridge's packages in one file, lazy and type-only ones too."""
    here = module_of(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            # ``from broker import model`` names the module broker.model.
            names = (
                [f"{module}.{alias.name}" for alias in node.names]
                if "." not in module
                else [module]
            )
        else:
            continue
        for name in names:
            if name.split(".")[0] in SOURCES:
                yield Import(str(path.relative_to(ROOT)), node.lineno, name)


@functools.cache
def all_imports() -> tuple[Import, ...]:
    """The imports of every module under broker/, adapters/, routing/ and config/."""
    files = sorted(f for top in SOURCES for f in (ROOT / top).rglob("*.py"))
    return tuple(found for f in files for found in imports_in(f))


def wrong_direction(found: Import) -> str | None:
    """Why an import goes against the layers, or None when it may be made."""
    importer = package_of(module_of(ROOT / found.file))
    imported = package_of(found.module)
    if importer == imported:
        return None
    if imported == CLI and not (
        importer.startswith("adapters.") and found.file.endswith("/cli.py")
    ):
        return "only the command line (broker/cli/, an adapter's cli.py) imports broker.cli"
    if importer.startswith("adapters."):
        return None
    if imported.startswith("adapters"):
        return f"{importer} finds adapters through entry points, never by import"
    allowed = MAY_IMPORT.get(importer)
    if allowed is None:
        return f"{importer} is a new package: give it its place in MAY_IMPORT"
    if imported not in allowed:
        return f"{importer} may import only {', '.join(sorted(allowed)) or 'itself'}"
    return None


def cycles(imports: Iterable[Import]) -> list[list[Import]]:
    """The imports inside each group of packages that import each other, round or not."""
    edges: dict[tuple[str, str], list[Import]] = defaultdict(list)
    for found in imports:
        pair = (package_of(module_of(ROOT / found.file)), package_of(found.module))
        if pair[0] != pair[1]:
            edges[pair].append(found)
    after: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        after[a].add(b)

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in after[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    reachable = {package: reach(package) for package in list(after)}
    groups = {
        frozenset({p, *(q for q in reachable[p] if p in reachable.get(q, set()))})
        for p in reachable
        if p in reachable[p]
    }
    return [
        [found for (a, b), made in sorted(edges.items()) if {a, b} <= group for found in made]
        for group in sorted(groups, key=sorted)
    ]


def test_the_sources_are_read() -> None:
    """The check reads the four packages' modules and finds the core model imported."""
    imports = all_imports()
    assert len({found.file for found in imports}) > 100
    assert any(found.module.startswith("broker.model.") for found in imports)


def test_each_package_imports_only_the_layers_below_it() -> None:
    """config and routing see only broker.model; store, engine, runtime and cli stack upward."""
    wrong = [f"{found}: {why}" for found in all_imports() if (why := wrong_direction(found))]
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_no_two_packages_import_each_other() -> None:
    """No package-level import cycle: broker.<layer>, adapters.<edge>, routing, config."""
    found = cycles(all_imports())
    assert not found, "packages that import each other:\n" + "\n\n".join(
        "\n".join(str(i) for i in group) for group in found
    )


def test_the_check_names_a_wrong_import_and_a_cycle() -> None:
    """An upward import, a CLI import and a two-package cycle are each reported."""
    upward = Import("broker/store/jobs.py", 3, "broker.runtime.metrics")
    cli = Import("adapters/api/jobs.py", 4, "broker.cli.common")
    harness_cli = Import("adapters/harness/cli.py", 5, "broker.cli.common")
    assert wrong_direction(upward) == "broker.store may import only broker.model"
    assert wrong_direction(cli) is not None
    assert wrong_direction(harness_cli) is None
    web = Import("adapters/web/app.py", 8, "adapters.api")
    api = Import("adapters/api/deps.py", 15, "adapters.web.auth")
    assert cycles([web, api, cli]) == [[api, web]]
