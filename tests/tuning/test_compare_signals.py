"""`tasktune compare` stopped from outside: SIGTERM takes Ctrl-C's path, the worker never outlives the parent, and
no hidden spec/result file or stale run lock is left in OUT."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasktune.runlock import LOCK_NAME
from tests.tuning.runs import write_data

ROOT = Path(__file__).resolve().parents[2]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_compare(model: Path, tmp_path: Path) -> tuple[subprocess.Popen, Path, int]:
    """A real `tasktune compare` (bitfit, a long budget), returned once its worker holds OUT/bitfit's run lock."""
    out = tmp_path / "cmp"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tasktune", "compare", "--model", str(model), "--data", str(write_data(tmp_path / "d")),
         "--out", str(out), "--methods", "bitfit", "--steps", "100000", "--limit", "1", "--max-new-tokens", "1",
         "--pre-seq-len", "4"], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while not ((out / "bitfit" / LOCK_NAME).exists() and _children(proc.pid)):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the worker never started training"
        time.sleep(0.05)
    return proc, out, _children(proc.pid)[0]


def _kill_leftovers(proc: subprocess.Popen) -> None:
    """Whatever of the test's own compare (its own session) still runs, after a failed assertion."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _leftovers(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob(".*"))


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_sigterm_to_the_parent_stops_the_worker_and_leaves_no_hidden_files(tiny_model_dir, tmp_path):
    """`kill PID` (SIGTERM to the parent alone) left the worker running under ppid 1, then writing a BrokenPipeError
    into OUT/.bitfit.result.json; `.bitfit.spec.json` and OUT/bitfit/.tasktune.lock stayed."""
    proc, out, worker = _start_compare(tiny_model_dir("glm"), tmp_path)
    try:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        assert code == 143, proc.stderr.read().decode()
        assert not _alive(worker)
        assert _leftovers(out) == []
    finally:
        _kill_leftovers(proc)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_worker_whose_parent_was_killed_stops_itself(tiny_model_dir, tmp_path):
    """SIGKILL gives the parent no chance to stop its worker: the worker notices it was orphaned."""
    proc, out, worker = _start_compare(tiny_model_dir("glm"), tmp_path)
    try:
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 30
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker)
        assert not (out / "bitfit" / LOCK_NAME).exists()  # it unwound as on Ctrl-C
    finally:
        _kill_leftovers(proc)


def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace_period():
    from tasktune.tuning.evaluation.compare import stop_worker

    proc = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                             "signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n"
        t0 = time.monotonic()
        stop_worker(proc, grace=0.3)
        assert proc.returncode == -signal.SIGKILL and time.monotonic() - t0 < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
