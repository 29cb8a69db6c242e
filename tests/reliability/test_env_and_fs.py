"""An eighth probe: the environment and the file system, not the inputs' content (docs/reliability.md).

Locale and terminal (an output encoding without Chinese, closed or failing standard streams, control characters
in a path), paths (a link loop, a deleted current folder), a full disk (a library's own error for a failed write,
an OSError without a path), SIGTERM during eval, and writes that bypassed tasktune.files."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reliability_util import ROOT, run_cli

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _tasktune(*argv: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tasktune", *argv], cwd=kwargs.pop("cwd", ROOT), env=env or ENV,
                          capture_output=True, text=True, timeout=120, **kwargs)


# -- locale and terminal -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [{"PYTHONIOENCODING": "ascii"}, {"LC_ALL": "C", "PYTHONUTF8": "0"},
                                   {"PYTHONIOENCODING": "latin-1"}], ids=["ascii", "C-locale-no-utf8", "latin-1"])
def test_an_output_encoding_without_chinese_escapes_it_rather_than_a_traceback(tmp_path, extra):
    """The grid spec's table printed 安全检查 after the data was written: UnicodeEncodeError, a traceback, exit 1."""
    locale = ("LANG", "LC_ALL", "LC_CTYPE", "PYTHONUTF8", "PYTHONIOENCODING")
    env = {k: v for k, v in ENV.items() if k not in locale}
    done = _tasktune("data", "grid", "--out", str(tmp_path / "d"), "--seed", "1", env={**env, **extra})
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "\\u5b89\\u5168\\u68c0\\u67e5" in done.stdout  # 安全检查, escaped


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_a_closed_stderr_is_never_a_file_tasktune_writes(tmp_path):
    """`tasktune data ... 2>&-`: descriptor 2 was free, and the next file opened took it (the output folder's lock
    file, then a data file): anything written to "stderr" below Python (a C library, a child process) went there."""
    out, seen = tmp_path / "d", tmp_path / "fd2.txt"
    script = textwrap.dedent(f"""
        import os
        from tasktune import files
        write = files._write
        def spy(path, pieces, atomic):  # what descriptor 2 is while each output file is written
            with open({str(seen)!r}, "a") as log:
                log.write(os.readlink("/proc/self/fd/2") + "\\n")
            return write(path, pieces, atomic)
        files._write = spy
        from tasktune.cli import main
        raise SystemExit(main(["data", "smarthome", "--out", {str(out)!r}, "--seed", "1", "--quiet"]))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, preexec_fn=lambda: os.close(2), timeout=120)
    assert done.returncode == 0
    assert set(seen.read_text().split()) == {os.devnull}


def test_control_characters_in_a_path_are_shown_escaped_on_the_one_error_line(tmp_path, capsys):
    """A path holding a newline split the error into two lines; an escape sequence reached the terminal."""
    folder = tmp_path / "a\nb\x1b[31m"
    folder.mkdir()
    (folder / "f").write_text("a file where the folder goes")
    assert run_cli(["data", "smarthome", "--out", str(folder / "f"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err, err
    assert "a\\nb\\x1b[31m/f is a file, not a folder" in err


def test_a_jinja_errors_own_indented_second_line_is_kept():
    from tasktune.cli import _CONTROL

    assert _CONTROL.sub("?", "broken Jinja: x\n    {{ line }}") == "broken Jinja: x\n    {{ line }}"
    assert _CONTROL.sub("?", "a\nb\tc") == "a?b\tc"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_standard_output_that_cannot_be_written_is_named(tmp_path):
    """`tasktune data ... >/dev/full` (or `> out.txt` on a full disk) said "error: No space left on device"."""
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "tasktune", "data", "smarthome", "--out", str(tmp_path / "d"),
                               "--quiet"], cwd=ROOT, env=ENV, stdout=full, stderr=subprocess.PIPE, text=True,
                              timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "tasktune data: error: standard output: No space left on device" in done.stderr


# -- paths -------------------------------------------------------------------------------------------------------

def test_an_output_folder_that_is_a_link_loop_or_a_device_is_called_what_it_is(tmp_path):
    from tasktune.flags import output_folder_problem

    os.symlink("l2", tmp_path / "l1")
    os.symlink("l1", tmp_path / "l2")
    assert "a symbolic link (to l2) that leads nowhere (a loop" in output_folder_problem(tmp_path / "l1")
    assert "(above it) is a symbolic link (to l2) that leads nowhere" in output_folder_problem(tmp_path / "l1/x")
    if os.path.exists("/dev/null"):
        assert output_folder_problem("/dev/null") == "/dev/null is a device, not a folder"


def test_a_deleted_current_folder_is_named(tmp_path):
    """`cd` into a folder deleted since, then a relative --out: "error: No such file or directory", no path."""
    gone = tmp_path / "gone"
    gone.mkdir()
    done = subprocess.run(["sh", "-c", f'cd "{gone}" && rmdir "{gone}" && exec "$0" -m tasktune data smarthome '
                           "--out rel --quiet", sys.executable], env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "error: the current folder: No such file or directory (it was deleted" in done.stderr


# -- a full disk -------------------------------------------------------------------------------------------------

TORCH_SHORT_WRITE = "[enforce fail at inline_container.cc:672] . unexpected pos 5632 vs 5524"


def test_a_librarys_error_for_a_failed_write_is_the_os_error_it_stands_for(tmp_path, monkeypatch):
    from tasktune import libwrites

    monkeypatch.setattr(libwrites, "_free_bytes", lambda path: 0)
    full = libwrites.write_failure(RuntimeError(TORCH_SHORT_WRITE), tmp_path)
    assert full.errno == errno.ENOSPC and full.filename == str(tmp_path)
    safetensors = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert libwrites.write_failure(safetensors, None).errno == errno.ENOSPC
    assert libwrites.write_failure(ValueError("something else"), tmp_path) is None
    monkeypatch.setattr(libwrites, "_free_bytes", lambda path: 1 << 40)
    assert libwrites.write_failure(RuntimeError(TORCH_SHORT_WRITE), tmp_path).errno == errno.EIO


def test_torch_saves_full_disk_while_checkpointing_is_disk_full_naming_the_last_good(tmp_path, monkeypatch):
    """torch.save on a full disk raised RuntimeError("[enforce fail at inline_container.cc...] unexpected pos"):
    a traceback and exit 1, where an OSError ENOSPC is the one-line DiskFull that says how to resume."""
    from tasktune import libwrites
    from tasktune.tuning.training import checkpoint as ckpt

    def full(*args, **kwargs):
        raise RuntimeError(TORCH_SHORT_WRITE)

    monkeypatch.setattr(ckpt.torch, "save", full)
    monkeypatch.setattr(libwrites, "_free_bytes", lambda path: 0)
    with pytest.raises(ckpt.DiskFull, match="the disk is full .* while writing the checkpoint of step 3"):
        ckpt.write_checkpoint(tmp_path, 3, save_adapter_fn=lambda folder: None, state={}, keep=2)
    assert list((tmp_path / "checkpoints").iterdir()) == []  # nothing of it kept


def test_a_write_error_names_the_file(tmp_path, monkeypatch, capsys):
    """A full disk while a report was written read `tasktune eval: error: No space left on device`: where?"""
    from tasktune import files

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", no_space)
    with pytest.raises(OSError) as raised:
        files.write_text(tmp_path / "report.md", "text")
    assert raised.value.filename == str(tmp_path / "report.md") and raised.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def _mount_tmpfs(where: Path, size: str) -> None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    where.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")


@pytest.fixture
def small_disk(tmp_path):
    where = tmp_path / "full"
    _mount_tmpfs(where, "1m")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_data_on_a_full_disk_is_one_line_keeps_nothing_and_works_once_space_is_freed(small_disk):
    out = small_disk / "d"
    done = _tasktune("data", "grid", "--out", str(out), "--seed", "1", "--quiet")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"error: {out}" in done.stderr and "No space left on device" in done.stderr
    assert os.listdir(small_disk) == []  # no half-written set, no staging folder
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    assert _tasktune("data", "grid", "--out", str(out), "--seed", "1", "--quiet").returncode == 0
    assert len(json.loads((out / "train.json").read_text(encoding="utf-8"))) > 0


def test_torch_save_on_a_real_full_disk_is_an_os_error_naming_the_path(small_disk):
    import torch

    from tasktune import files

    target = small_disk / "state.pt"
    with pytest.raises(OSError) as raised:
        with files.atomic_path(target) as tmp:
            torch.save({"x": torch.zeros(1 << 19)}, tmp)  # 2 MiB into 1 MiB
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)
    assert os.listdir(small_disk) == []


# -- signals -----------------------------------------------------------------------------------------------------

def test_sigterm_during_eval_is_one_line_and_exit_143(tmp_path):
    """SIGTERM killed eval at once: no word, and a report's temporary file left behind had it come mid-write."""
    script = textwrap.dedent("""
        import os, signal, sys, time
        import tasktune.tuning.evaluation.eval as ev
        def evaluate(cfg, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        ev.evaluate = evaluate
        from tasktune.cli import main
        raise SystemExit(main(["eval", sys.argv[1]]))
    """)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 143, (done.returncode, done.stderr)
    assert done.stderr.strip().splitlines()[-1] == "tasktune eval: terminated (SIGTERM)"


# -- every write through tasktune.files --------------------------------------------------------------------------

_DIRECT_WRITE = re.compile(r"""\.write_text\(|\.write_bytes\(|\bopen\([^)]*["'][wax]b?\+?["']""")


def test_no_output_file_is_written_around_tasktune_files():
    """compare.md, a compare worker's result, classification's predictions.jsonl and report.md were written with a
    plain open()/write_text: a full disk or a kill left half a file. (serve/ is not scanned: it writes no output.)"""
    found = []
    for folder in ("tasktune", "datagen", "tuning"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "tasktune" / "files.py":
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#", 1)[0]
                if _DIRECT_WRITE.search(code) and "atomic." not in code and "files." not in code:
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert found == []


def test_compare_takes_its_own_temporary_files_for_its_own():
    from tasktune.tuning.evaluation.compare import _HIDDEN

    for name in (".lora.spec.json", "..lora.result.json.0a1b2c3d.tmp", ".compare.md.0a1b2c3d.tmp",
                 ".compare.json.0a1b2c3d.tmp", ".compare.png.0a1b2c3d.tmp.png"):
        assert _HIDDEN.fullmatch(name), name
    assert not _HIDDEN.fullmatch(".notes.md.0a1b2c3d.tmp")
