"""The wheel is the tool: built from this checkout, installed where the checkout is NOT importable, it runs
`tasktune data grid` from another folder (templates and schemas ship inside it) and adds no top-level module but
`tasktune` to site-packages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_installs_one_package_that_works_outside_the_checkout(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(ROOT)], check=True, cwd=tmp_path)
    (wheel,) = dist.glob("tasktune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"tasktune"}, top
    assert "tasktune/templates/grid/spec.yaml" in names and "tasktune/schemas/spec.schema.json" in names
    assert "tasktune/serve/static/index.html" in names

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True)
    # The dependencies come from this venv's site-packages, put on PYTHONPATH so that its .pth files (the
    # editable install's finder, which maps tasktune to the checkout) are NOT processed.
    deps = sysconfig.get_paths()["purelib"]
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{deps}")
    base_python = getattr(sys, "_base_executable", sys.executable)
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([base_python, "-s", "-c", "import tasktune; print(tasktune.__file__, tasktune.TEMPLATES)"],
                           env=env, cwd=work, capture_output=True, text=True, check=True).stdout
    assert str(site) in where and str(ROOT) not in where
    run = subprocess.run([base_python, "-s", "-m", "tasktune", "data", "grid", "--out", "out", "--quiet"],
                         env=env, cwd=work, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert len(json.loads((work / "out" / "train.json").read_text(encoding="utf-8"))) > 0
    listed = subprocess.run([base_python, "-s", "-m", "tasktune", "specs"], env=env, cwd=work, capture_output=True,
                            text=True, check=True).stdout
    assert "grid" in listed and "smarthome" in listed
