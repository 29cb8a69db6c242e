"""Replace a set of files in a folder as one unit: all are written beside it first, then moved in together.

`write_set(out_dir, files)` writes every file into a staging folder, a sibling of `out_dir` named
`.<name>.tasktune-<random>` (inside `out_dir` when its parent is not writable), then:

- `out_dir` does not exist: the staging folder is renamed to `out_dir`. One rename: the folder appears
  with the whole set, or not at all.
- `out_dir` exists (other files in it are the user's and are left alone): a marker,
  `out_dir/.tasktune-swap.json`, naming the staging folder and the files, is written (atomically), each
  file is moved over its old version with one `os.replace`, the staging folder is removed, and the marker
  last. A run that stops while writing (an error, Ctrl-C, a kill) leaves `out_dir` as it was. One that
  stops during the moves (a window of a few renames) leaves the marker: `pending(out_dir)` says so, and
  the next `write_set` into that folder (or `recover(out_dir)`) first finishes those moves from the staging
  folder, so the folder then holds the interrupted run's complete set.

Files of an earlier set that the new set lacks (e.g. `train.json` when writing `--format jsonl`) are left
in place. Two runs writing into one folder at the same time are not supported. Files are fsync'ed before they
move in, folder entries are not. Files and folders get the umask's modes.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterable

from tasktune import files as atomic

MARKER = ".tasktune-swap.json"
_STEM = ".tasktune-"


def _staging_names(out_dir: Path) -> tuple[str, str]:
    """(the prefix of a sibling staging folder, the prefix of one inside `out_dir`)."""
    return f".{out_dir.name}{_STEM}", f"{_STEM}staging-"


def _new_staging(out_dir: Path) -> Path:
    """A new, empty staging folder beside `out_dir` (else inside it), created with the usual permissions."""
    sibling, inside = _staging_names(out_dir)
    for parent, prefix in ((out_dir.parent, sibling), (out_dir, inside)):
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            continue
        while True:
            path = parent / f"{prefix}{secrets.token_hex(4)}"
            try:
                os.mkdir(path)
                return path
            except FileExistsError:
                continue
    raise PermissionError(13, "Permission denied", str(out_dir))


def pending(out_dir: str | Path) -> dict | None:
    """The marker of a swap into `out_dir` that was interrupted (files and staging folder), or None."""
    try:
        return json.loads((Path(out_dir) / MARKER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def _staging_of(out_dir: Path, marker: dict) -> Path:
    name = str(marker.get("staging", ""))
    sibling, inside = _staging_names(out_dir)
    if name.startswith("../" + sibling) and "/" not in name[3:]:
        return out_dir.parent / name[3:]
    if name.startswith(inside) and "/" not in name:
        return out_dir / name
    raise ValueError(f"{out_dir / MARKER}: unexpected staging folder {name!r}")


def recover(out_dir: str | Path) -> bool:
    """Finish a swap into `out_dir` that was interrupted (see the module's doc); True if there was one."""
    out_dir = Path(out_dir)
    marker = pending(out_dir)
    if marker is None:
        return False
    staging = _staging_of(out_dir, marker)
    for name in marker.get("files", []):
        if Path(name).name != name:
            raise ValueError(f"{out_dir / MARKER}: unexpected file name {name!r}")
        if (staging / name).is_file():
            os.replace(staging / name, out_dir / name)
    shutil.rmtree(staging, ignore_errors=True)
    os.unlink(out_dir / MARKER)
    return True


def _sweep(out_dir: Path) -> None:
    """Remove staging folders that runs into `out_dir` left behind when they stopped while writing."""
    sibling, inside = _staging_names(out_dir)
    for parent, prefix in ((out_dir.parent, sibling), (out_dir, inside)):
        if parent.is_dir():
            for path in parent.glob(glob.escape(prefix) + "*"):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
    for stale in atomic.stale_temps(out_dir / MARKER) if out_dir.is_dir() else []:
        stale.unlink(missing_ok=True)


def _write_marker(out_dir: Path, staging: Path, names: list[str]) -> None:
    text = json.dumps({"staging": os.path.relpath(staging, out_dir), "files": names}, ensure_ascii=False)
    atomic.write_text(out_dir / MARKER, text + "\n")


def write_set(out_dir: str | Path, files: dict[str, str | Iterable[str]]) -> list[Path]:
    """Write {file name: text, or text pieces} into `out_dir` as one unit (see the module's doc).

    A piece generator may raise (e.g. a record failing its schema): then nothing in `out_dir` changes.
    Raises OSError for file-system trouble; before the moves begin, nothing in `out_dir` has changed.
    """
    out_dir = Path(out_dir)
    names = list(files)
    for name in names:
        if not name or Path(name).name != name or name.startswith(_STEM) or name == MARKER:
            raise ValueError(f"not a plain file name: {name!r}")
    if out_dir.is_dir():
        recover(out_dir)
    _sweep(out_dir)
    staging = _new_staging(out_dir)
    try:
        for name, text in files.items():
            atomic.write_text(staging / name, text, atomic=False)  # fsync'ed; the staging folder moves as a unit
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if staging.parent != out_dir and not out_dir.exists():
        try:
            os.rename(staging, out_dir)  # the whole set appears at once
            return [out_dir / name for name in names]
        except OSError:
            if not out_dir.exists():
                shutil.rmtree(staging, ignore_errors=True)
                raise
            # (created meanwhile: replace file by file, below)
    try:
        for name in names:
            if (out_dir / name).is_dir():
                raise IsADirectoryError(21, "Is a directory", str(out_dir / name))
        _write_marker(out_dir, staging, names)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for name in names:  # from here on, an interruption leaves the marker: `recover` finishes the moves
        os.replace(staging / name, out_dir / name)
    os.rmdir(staging)
    os.unlink(out_dir / MARKER)
    return [out_dir / name for name in names]
