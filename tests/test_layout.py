"""The folder tree shows the flow (issue 19): tuning's stage sub-packages import one way, nothing imports in a
cycle, every package is installed, and a long module says why it is long.

Stages, earliest first: the shared pieces (tasktune's own modules, tuning/*.py, datagen) -> tuning.model (load,
adapters, save, generate) -> tuning.inference (Assistant, the prefix bank and the batching engine) -> tuning.training
-> tuning.evaluation -> serve. A module may import its own stage, an
earlier one or a shared piece, never a later stage. The entry points (the CLIs, the Python API, the package's
lazy exports) sit above all stages. Imports inside functions count too: a lazy import hides a cycle, it does not
remove it.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

#: repository folder -> the package it installs as
FOLDERS = {"tasktune": "tasktune", "datagen": "tasktune.datagen", "tuning": "tasktune.tuning",
           "serve": "tasktune.serve"}
STAGES = ["tasktune.tuning.model", "tasktune.tuning.inference", "tasktune.tuning.training", "tasktune.tuning.evaluation",
          "tasktune.serve"]
#: may import any stage: they dispatch to them
ENTRY_POINTS = {"tasktune", "tasktune.__main__", "tasktune.cli", "tasktune.api",
                "tasktune.tuning.cli", "tasktune.serve.cli"}
LONG = 300


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports (anywhere in the file), resolved to the longest known module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("tasktune"):
                out.add(target)
    return out


def stage_of(module: str) -> int:
    """0 for shared pieces, 1.. for the stages in order."""
    for i, stage in enumerate(STAGES, start=1):
        if module == stage or module.startswith(stage + "."):
            return i
    return 0


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def test_the_stage_packages_exist_and_hold_their_stage():
    for stage in STAGES[:-1]:
        assert (ROOT / "/".join(stage.split(".")[1:]) / "__init__.py").is_file(), stage
    assert (ROOT / "tuning" / "model" / "load.py").is_file() and (ROOT / "tuning" / "training" / "train.py").is_file()
    assert (ROOT / "tuning" / "evaluation" / "eval.py").is_file()


def wrong_direction(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{mod} (stage {stage_of(mod)}) imports {dep} (stage {stage_of(dep)})"
                  for mod, deps in graph.items() if mod not in ENTRY_POINTS
                  for dep in deps if dep not in ENTRY_POINTS and stage_of(dep) > stage_of(mod))


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    # `tasktune` itself (lazy exports, the version) is imported everywhere; its edges are not part of the flow,
    # and a package's __init__ re-exporting its own modules is not a cycle with them
    edges = {m: {d for d in deps if d != "tasktune" and not d.startswith(m + ".")}
             for m, deps in graph.items() if m != "tasktune"}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return cycles


def test_imports_run_from_later_stages_to_earlier_ones(graph):
    wrong = wrong_direction(graph)
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_an_entry_point(graph):
    wrong = [f"{mod} imports {dep}" for mod, deps in graph.items() if mod not in ENTRY_POINTS
             for dep in deps if dep in ENTRY_POINTS - {"tasktune"}]
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "\n".join(cycles)


def test_a_module_over_300_lines_says_why_at_its_top():
    silent = []
    for name, path in modules().items():
        lines = path.read_text(encoding="utf-8").splitlines()
        doc = ast.get_docstring(ast.parse("\n".join(lines))) or ""
        if len(lines) > LONG and not re.search(r"longer than 300 lines because", " ".join(doc.split()), re.I):
            silent.append(f"{path.relative_to(ROOT)} ({len(lines)} lines)")
    assert not silent, "say why at the top (\"longer than 300 lines because ...\"): " + ", ".join(silent)


def test_every_package_is_installed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {name for name, path in modules().items() if path.name == "__init__.py"}
    assert packages - listed == set(), f"add to pyproject's packages: {sorted(packages - listed)}"


def test_the_checks_catch_what_they_look_for(tmp_path):
    # the import reader sees lazy and relative imports; the rules flag a later-stage import and a cycle
    mod = tmp_path / "probe.py"
    mod.write_text("from . import save\ndef f():\n    from tasktune.tuning.training.train import fit\n")
    known = {"tasktune.tuning.model.save", "tasktune.tuning.model.probe", "tasktune.tuning.training.train"}
    seen = imports("tasktune.tuning.model.probe", mod, known)
    assert seen == {"tasktune.tuning.model.save", "tasktune.tuning.training.train"}
    assert wrong_direction({"tasktune.tuning.model.probe": seen}) == [
        "tasktune.tuning.model.probe (stage 1) imports tasktune.tuning.training.train (stage 3)"]
    assert find_cycles({"tasktune.a": {"tasktune.b"}, "tasktune.b": {"tasktune.c"}, "tasktune.c": {"tasktune.a"}}) \
        == ["tasktune.a -> tasktune.b -> tasktune.c -> tasktune.a"]
    assert find_cycles({"tasktune.x": {"tasktune.x.y"}, "tasktune.x.y": {"tasktune.x"}}) == []
