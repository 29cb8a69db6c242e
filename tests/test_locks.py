"""The tested sets (locks/cpu.txt, locks/gpu.txt) lie inside pyproject's ranges: a lock that drifts out of a range,
or a range narrowed past a set we tested, fails here instead of on a user's machine."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCKS = [ROOT / "locks" / "cpu.txt", ROOT / "locks" / "gpu.txt"]


def pins(path: Path) -> dict[str, Version]:
    """name -> version of every `name==version` line (comments and blank lines skipped)."""
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"{path.name}:{n}: not a `name==version` pin: {line!r}"
        out[canonicalize_name(name)] = Version(version)
    return out


def ranges() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += [r for r in extra if not r.startswith("tasktune")]
    return [Requirement(r) for r in reqs]


def outside_ranges(pinned: dict[str, Version]) -> list[str]:
    return [f"{r.name}=={pinned[canonicalize_name(r.name)]} not in {r.specifier}" for r in ranges()
            if canonicalize_name(r.name) in pinned
            and not r.specifier.contains(pinned[canonicalize_name(r.name)], prereleases=True)]


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_every_pin_of_a_tested_set_is_inside_pyprojects_ranges(lock):
    outside = outside_ranges(pins(lock))
    assert not outside, f"{lock.name}: {outside}"


def test_the_cpu_lock_pins_every_dependency_and_the_gpu_set_the_core_stack():
    cpu, gpu = pins(LOCKS[0]), pins(LOCKS[1])
    missing = [r.name for r in ranges() if canonicalize_name(r.name) not in cpu and r.name != "torch"]
    assert not missing, f"locks/cpu.txt lacks {missing} (run `make lock`)"
    assert {"torch", "transformers", "peft", "bitsandbytes"} <= set(gpu)


def test_a_pin_outside_a_range_is_reported(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("transformers==5.25.0\n")
    assert outside_ranges(pins(bad)) == ["transformers==5.25.0 not in <5.24,>=5.17"]
