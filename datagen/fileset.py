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

Nothing found in `out_dir` is trusted (issue 21): the marker is acted on only when it is a small regular file
(not a link) naming a staging folder of this module's shape, beside `out_dir` or inside it, that is a real
folder (not a link) owned by this user, and files in it that are regular files (not links). Anything else (a
planted marker, a staging folder or file that is a symbolic link, a FIFO) is an `UntrustedSwap` (a SpecError
naming the marker): nothing is moved, deleted or overwritten, in `out_dir` or anywhere else. Old staging
folders are swept only when they are real folders of this user; a link is never followed.

Files of an earlier set that the new set lacks (e.g. `train.json` when writing `--format jsonl`) are left
in place. A second run writing into the same folder while one does is refused (a lock file beside it names the
first). Files are fsync'ed before they
move in, folder entries are not. Files and folders get the umask's modes.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Iterable

from tasktune import files as atomic
from tasktune.errors import SpecError

MARKER = ".tasktune-swap.json"
_STEM = ".tasktune-"


_NAME_MAX = 255  # bytes in one file name (Linux, macOS, Windows)
_TOKEN = 8  # hex digits of a staging folder's random part


def _staging_names(out_dir: Path) -> tuple[str, str]:
    """(the prefix of a sibling staging folder, the prefix of one inside `out_dir`).

    The sibling's name is `out_dir`'s with `.` before and `.tasktune-<random>` after; when that would pass the
    file-name limit (a long `out_dir` name), the name is cut and a hash of the whole name added, so every name
    that `out_dir` can have has its own staging prefix, the same on every run (a later run finds it)."""
    name = out_dir.name
    sibling = f".{name}{_STEM}"
    if len(os.fsencode(sibling)) + _TOKEN > _NAME_MAX:
        digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
        short = name
        while len(os.fsencode(short)) > 200:
            short = short[:-1]
        sibling = f".{short}~{digest}{_STEM}"
    return sibling, f"{_STEM}staging-"


def _new_staging(out_dir: Path) -> Path:
    """A new, empty staging folder beside `out_dir` (else inside it), created with the usual permissions."""
    sibling, inside = _staging_names(out_dir)
    for parent, prefix in ((out_dir.parent, sibling), (out_dir, inside)):
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            continue
        while True:
            path = parent / f"{prefix}{secrets.token_hex(_TOKEN // 2)}"
            try:
                os.mkdir(path)
                return path
            except FileExistsError:
                continue
    raise PermissionError(13, "Permission denied", str(out_dir))


def in_staging(path: str | os.PathLike[str], out_dir: Path) -> bool:
    """True when `path` is a file in one of `out_dir`'s staging folders (an error there is one of `out_dir`'s)."""
    folder = Path(path).parent
    sibling, inside = _staging_names(out_dir)
    return (folder.parent == out_dir.parent and folder.name.startswith(sibling)) or \
        (folder.parent == out_dir and folder.name.startswith(inside))


class UntrustedSwap(SpecError):
    """A swap marker in the output folder that this module did not leave, or whose staging folder or files are
    not what it writes (links, FIFOs, another user's): not acted on."""


def _untrusted(out_dir: Path, why: str) -> UntrustedSwap:
    return UntrustedSwap(
        f"{out_dir / MARKER}: {why}. This is not an interrupted tasktune write, so nothing was moved or deleted; "
        f"if you did not put it there, check the folder, then delete {out_dir / MARKER} and run again")


def pending(out_dir: str | Path) -> dict | None:
    """The marker of a swap into `out_dir` that was interrupted (files and staging folder), or None.
    UntrustedSwap when a file of that name is there but is not a marker this module could have written."""
    out_dir = Path(out_dir)
    path = out_dir / MARKER
    if not os.path.lexists(path):
        return None
    try:
        marker = json.loads(atomic.read_small(path, limit=1 << 16).decode("utf-8"))
    except OSError as exc:
        raise _untrusted(out_dir, f"not a small regular file ({exc.strerror or exc})") from None
    except ValueError as exc:  # JSON or UTF-8
        raise _untrusted(out_dir, f"not a marker written by tasktune ({exc})") from None
    if (not isinstance(marker, dict) or not isinstance(marker.get("staging"), str)
            or not isinstance(marker.get("files"), list) or not all(isinstance(n, str) for n in marker["files"])):
        raise _untrusted(out_dir, "not a marker written by tasktune (expected staging and files)")
    return marker


def _staging_of(out_dir: Path, marker: dict) -> Path:
    name = marker["staging"]
    sibling, inside = _staging_names(out_dir)
    if name.startswith("../" + sibling) and "/" not in name[3:] and name[3:] not in (".", ".."):
        staging = out_dir.parent / name[3:]
    elif name.startswith(inside) and "/" not in name:
        staging = out_dir / name
    else:
        raise _untrusted(out_dir, f"it names an unexpected staging folder {name!r}")
    if os.path.lexists(staging) and not atomic.real_dir(staging):
        raise _untrusted(out_dir, f"its staging folder {staging} is a symbolic link or not a folder")
    if os.path.lexists(staging) and not atomic.owned(staging):
        raise _untrusted(out_dir, f"its staging folder {staging} belongs to another user")
    return staging


def recover(out_dir: str | Path) -> bool:
    """Finish a swap into `out_dir` that was interrupted (see the module's doc); True if there was one.
    Checks everything first (UntrustedSwap, nothing moved), then moves."""
    out_dir = Path(out_dir)
    marker = pending(out_dir)
    if marker is None:
        return False
    staging = _staging_of(out_dir, marker)
    moves = []
    for name in marker["files"]:
        if not name or Path(name).name != name or name in (".", "..") or name == MARKER:
            raise _untrusted(out_dir, f"it names an unexpected file {name!r}")
        source = staging / name
        if not os.path.lexists(source):
            continue  # moved in before the interruption
        if not atomic.plain_file(source):
            raise _untrusted(out_dir, f"{source} is a symbolic link or not a regular file")
        if atomic.real_dir(out_dir / name):
            raise _untrusted(out_dir, f"{out_dir / name} is a folder")
        moves.append(name)
    for name in moves:
        os.replace(staging / name, out_dir / name)  # replaces a link at out_dir/name, never its target
    atomic.remove_tree(staging)
    os.unlink(out_dir / MARKER)
    return True


def _sweep(out_dir: Path) -> None:
    """Remove staging folders that runs into `out_dir` left behind when they stopped while writing (real
    folders of this user only: a link, or another user's folder, is left alone)."""
    sibling, inside = _staging_names(out_dir)
    for parent, prefix in ((out_dir.parent, sibling), (out_dir, inside)):
        if parent.is_dir():  # out_dir and its parent are the user's paths; what is found in them is checked
            for path in parent.glob(glob.escape(prefix) + "*"):
                if atomic.real_dir(path) and atomic.owned(path):
                    atomic.remove_tree(path)
    for stale in atomic.stale_temps(out_dir / MARKER) if out_dir.is_dir() else []:
        stale.unlink(missing_ok=True)  # unlinks a link itself, never its target


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
    with _lock(out_dir):
        return _write_set(out_dir, files, names)


def lock_name(out_dir: Path) -> str:
    """The lock file's name: the staging prefix's, ending `.tasktune.lock` (a killed run leaves it; the next
    takes it over). Not a staging folder's name, so sweeps and recoveries never mistake it for one."""
    return _staging_names(out_dir)[0].removesuffix("-") + ".lock"


def _lock(out_dir: Path):
    """A lock for writes into `out_dir`, a file beside it (else in it): a second run into the same folder is
    refused naming the first (it swept the first's live staging folder, which then failed with 'cannot write
    output: No such file or directory')."""
    import contextlib

    from tasktune.runlock import file_lock

    for parent in (out_dir.parent, out_dir):
        if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
            return file_lock(parent / lock_name(out_dir), "data", out_dir, "output folder")
    return contextlib.nullcontext()


def _write_set(out_dir: Path, files: dict[str, str | Iterable[str]], names: list[str]) -> list[Path]:
    if out_dir.is_dir():
        recover(out_dir)
    _sweep(out_dir)
    staging = _new_staging(out_dir)
    try:
        for name, text in files.items():
            atomic.write_text(staging / name, text, atomic=False)  # fsync'ed; the staging folder moves as a unit
    except BaseException:
        atomic.remove_tree(staging)
        raise
    if staging.parent != out_dir and not out_dir.exists():
        try:
            os.rename(staging, out_dir)  # the whole set appears at once
            return [out_dir / name for name in names]
        except OSError:
            if not out_dir.exists():
                atomic.remove_tree(staging)
                raise
            # (created meanwhile: replace file by file, below)
    try:
        for name in names:
            if atomic.real_dir(out_dir / name):
                raise IsADirectoryError(21, "Is a directory", str(out_dir / name))
        _write_marker(out_dir, staging, names)
    except BaseException:
        atomic.remove_tree(staging)
        raise
    for name in names:  # from here on, an interruption leaves the marker: `recover` finishes the moves
        os.replace(staging / name, out_dir / name)
    os.rmdir(staging)
    os.unlink(out_dir / MARKER)
    return [out_dir / name for name in names]
