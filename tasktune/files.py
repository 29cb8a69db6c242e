"""Write a file so that readers see the old version or the new one, never half a file, with the usual modes.

The one way tasktune writes its output files (data sets, run records, reports, adapters, checkpoints):

- `write_bytes(path, data)`, `write_text(path, text)`, `write_json(path, obj)`: the content goes to a new
  temporary file in the same folder (`.<name>.<random>.tmp`), is flushed and fsync'ed, gets the mode a plain
  `open(path, "w")` would give it (0o666 & ~umask, e.g. 0644 under umask 022; never the 0600 that
  `tempfile.mkstemp` leaves), and is moved over `path` with one `os.replace`. An error (or Ctrl-C) while
  writing removes the temporary file and leaves `path` as it was. `data`/`text` may be an iterable of pieces,
  written as they come, so a large file is never one string in memory.
- `atomic_path(path)`: the same for a library that writes to a path itself (`fig.savefig`, safetensors'
  `save_file`, `torch.save`): write to the yielded temporary path inside the `with` block.
- `atomic=False` (all three writers): write `path` in place (created or truncated), still fsync'ed and with
  the usual mode, for files inside a private staging folder that is itself moved into place as a unit
  (`tasktune.datagen.fileset`, `tasktune.tuning.model.save`).
- `settle(folder)`: for a folder (or a file) a library wrote (`save_pretrained`, `tempfile.mkdtemp`) before it is moved
  into place: fsyncs its files and gives them and the folders the usual modes (safetensors writes 0600,
  mkdtemp creates 0700).

A process killed between creating a temporary file and its rename leaves it behind (hidden, named after its
target); `stale_temps(path)` lists those. A rename is atomic against processes that stop, and the fsync
makes the content durable before it; the folder entry itself is not fsync'ed.

Never through a link (issue 21): what is found in a folder tasktune writes into is not trusted. Writes open
their file with O_NOFOLLOW (a rename replaces a link, never its target); `real_dir(path)` says whether `path`
is a folder itself (not a link to one), `plain_file(path)` a regular file itself; `own_subdir(parent, name)`
creates or checks a sub-folder that must not be a link (ConfigError naming it if it is); `remove_tree(path)`
removes a folder without following links (a link is unlinked, its target left alone); `read_small(path)`
reads a small regular file without following a link and without opening a FIFO or device (which could block
or never end); `inside(path, folder)` checks containment once links are resolved.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Any, Iterable, Iterator

from tasktune.libwrites import library_writes

_TMP_SUFFIX = ".tmp"


def umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux's /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, and put it straight back
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode `open(path, "w")` gives a new file: 0o666 & ~umask."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """The mode `os.mkdir` gives a new folder: 0o777 & ~umask."""
    return 0o777 & ~umask()


def _temp_for(path: Path, suffix: str = "") -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{_TMP_SUFFIX}{suffix}")


def stale_temps(path: str | os.PathLike[str]) -> list[Path]:
    """Temporary files of writes to `path` that never reached their rename (a killed process)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*{_TMP_SUFFIX}*"))


def _fsync(path: Path) -> None:
    with _naming(path), open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix, so writers that pick a format by it still do);
    when the block ends without an error, the file written there is fsync'ed, given the usual mode and moved
    over `path` in one rename. On an error it is removed and `path` is left as it was."""
    path = Path(path)
    tmp = _temp_for(path, path.suffix)
    try:
        with library_writes(path):
            yield tmp
        _fsync(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _write(path: Path, pieces: Iterable[bytes], atomic: bool) -> Path:
    target = _temp_for(path) if atomic else path
    flags = (os.O_WRONLY | os.O_CREAT | (os.O_EXCL if atomic else os.O_TRUNC) | getattr(os, "O_BINARY", 0)
             | _NOFOLLOW)  # a link planted where the file goes is an error (ELOOP), never written through
    fd = os.open(target, flags, 0o666)  # the kernel applies the umask, as open(path, "w") does
    try:
        with _naming(path), os.fdopen(fd, "wb") as handle:
            for piece in pieces:
                handle.write(piece)
            handle.flush()
            os.fsync(handle.fileno())
        if atomic:
            os.replace(target, path)
    except BaseException:
        if atomic:
            with contextlib.suppress(OSError):
                target.unlink()
        raise
    return path


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """An OSError of a write, flush or fsync names no file (a full disk read "error: No space left on device",
    with no word of where): it gets `path`."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes | Iterable[bytes], *, atomic: bool = True) -> Path:
    """Write `data` (bytes, or an iterable of byte pieces) to `path`; see the module's doc."""
    return _write(Path(path), [data] if isinstance(data, (bytes, bytearray, memoryview)) else data, atomic)


def write_text(path: str | os.PathLike[str], text: str | Iterable[str], *, atomic: bool = True) -> Path:
    """Write `text` (a string, or an iterable of pieces) to `path` as UTF-8, newlines as written."""
    pieces = [text] if isinstance(text, str) else text
    return _write(Path(path), (piece.encode("utf-8") for piece in pieces), atomic)


def write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2, sort_keys: bool = False,
               atomic: bool = True) -> Path:
    """Write `obj` as UTF-8 JSON (not ASCII-escaped, values JSON lacks as `str(value)`) and a final newline."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False, default=str) + "\n"
    return write_text(path, text, atomic=atomic)


def settle(folder: str | os.PathLike[str]) -> Path:
    """fsync every file under `folder` and give files and folders (`folder` too) the usual modes; `folder` may
    also be one file (written in place by a library)."""
    folder = Path(folder)
    fmode, dmode = file_mode(), dir_mode()
    if folder.is_symlink():
        raise OSError(40, "a symbolic link, not followed", str(folder))
    if folder.is_file():
        _fsync(folder)
        os.chmod(folder, fmode)
        return folder
    for root, dirs, names in os.walk(folder):
        os.chmod(root, dmode)
        for name in names:
            path = Path(root) / name
            if path.is_symlink():
                continue
            _fsync(path)
            os.chmod(path, fmode)
    return folder


# -- never through a link ------------------------------------------------------------------------------------

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _lstat(path: str | os.PathLike[str]) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def real_dir(path: str | os.PathLike[str]) -> bool:
    """True when `path` is a folder itself, not a symbolic link (to a folder or anything else)."""
    st = _lstat(path)
    return st is not None and stat.S_ISDIR(st.st_mode)


def plain_file(path: str | os.PathLike[str]) -> bool:
    """True when `path` is a regular file itself: not a link, folder, FIFO, socket or device."""
    st = _lstat(path)
    return st is not None and stat.S_ISREG(st.st_mode)


def owned(path: str | os.PathLike[str]) -> bool:
    """True when `path` (not followed) belongs to this process's user (always True where there are no uids)."""
    st = _lstat(path)
    return st is not None and (not hasattr(os, "geteuid") or st.st_uid == os.geteuid())


def inside(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """True when `path`, links resolved, is `folder` (links resolved) or lies under it."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def own_subdir(parent: str | os.PathLike[str], name: str) -> Path:
    """`parent/name` as a folder of its own: created if missing; a ConfigError if it is a symbolic link (tasktune
    writes and deletes there, and never does so through a link out of a folder it writes into) or not a folder."""
    from tasktune.errors import ConfigError

    path = Path(parent) / name
    if path.is_symlink():
        raise ConfigError(f"{path}: is a symbolic link (to {os.readlink(path)}); tasktune writes and deletes "
                          "files there and does not follow links out of the folder: remove the link (or make it "
                          "a real folder) and run again")
    if path.exists() and not real_dir(path):  # mkdir's "File exists" named no reason
        raise ConfigError(f"{path}: exists but is not a folder; move it away and run again")
    path.mkdir(parents=True, exist_ok=True)
    if not real_dir(path):
        raise ConfigError(f"{path}: exists but is not a folder; move it away and run again")
    return path


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove the folder `path` and what it holds without following any link: a link (here or inside) is
    unlinked and its target left alone. Missing: nothing to do. Errors inside are ignored (best effort)."""
    st = _lstat(path)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        with contextlib.suppress(OSError):
            os.unlink(path)
        return
    shutil.rmtree(path, ignore_errors=True)  # on POSIX the fd-based rmtree: never descends through a link


def read_small(path: str | os.PathLike[str], limit: int = 1 << 20) -> bytes:
    """The bytes of the small regular file `path`, opened without following a link and without blocking on a
    FIFO; OSError if `path` is a link (ELOOP), not a regular file, or longer than `limit` bytes (EFBIG)."""
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(22, "not a regular file", str(path))
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise OSError(27, f"larger than {limit} bytes", str(path))
    return data


def read_text_file(path: str | os.PathLike[str], limit: int = 1 << 24) -> str:
    """A small text file (a run record, a config, a template) as UTF-8 text, a BOM dropped: read_small on the
    file a link given by the user points to. OSError naming the path for a FIFO, a device, a folder or a file
    over `limit` bytes (`Path.read_text` blocked forever on a FIFO and read /dev/zero until memory ran out);
    UnicodeDecodeError for bytes that are not UTF-8."""
    return read_small(os.path.realpath(path), limit).decode("utf-8").removeprefix("\ufeff")


def text_lines(text: str) -> list[str]:
    """`text` cut into lines at "\\n" only, one trailing "\\r" of each dropped (CRLF files), as a file of one value
    or one JSON record a line is read. Not `str.splitlines()`: that also cuts at U+2028/U+2029, NEL (U+0085),
    form feed, vertical tab and \\x1c-\\x1e, which may sit inside a value (and JSON written with
    `ensure_ascii=False` keeps U+2028 as it is), so one line became several. A final "\\n" ends the last line
    rather than starting an empty one."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]
