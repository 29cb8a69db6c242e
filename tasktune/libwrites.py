"""A library's own error for a failed write, as the OSError it stands for.

torch.save's zip writer ("[enforce fail at inline_container.cc:...] . unexpected pos 5632 vs 5524",
"PytorchStreamWriter failed writing file ...: file write failed") and safetensors ("Error while serializing:
I/O error: No space left on device (os error 28)") raise RuntimeError / SafetensorError when the disk is full
or a write fails: a traceback and exit 1 where an OSError is one line naming the path and exit 2
(`tasktune.cli`). `library_writes(path)` wraps a block where a library writes `path` (checkpoints, adapters,
`tasktune.files.atomic_path`); `write_failure(exc, path)` is the translation itself.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path
from typing import Iterator


_OS_ERROR = re.compile(r"\(os error (\d+)\)")
_SHORT_WRITE = ("unexpected pos", "file write failed", "failed writing file")


def write_failure(exc: BaseException, path: str | os.PathLike[str] | None) -> OSError | None:
    """The OSError that `exc`, a library's error while it wrote `path` (or an unknown file: None), stands for;
    None when `exc` is something else. A short write without an errno (torch) is "No space left on device" when
    the file system of `path` (or the current folder) has less than 1 MiB left, else an I/O error."""
    if isinstance(exc, OSError):
        return exc
    text = str(exc)
    found = _OS_ERROR.search(text)
    if found:
        code = int(found.group(1))
    elif any(mark in text for mark in _SHORT_WRITE):
        code = errno.ENOSPC if _free_bytes(path) < (1 << 20) else errno.EIO
    else:
        return None
    return OSError(code, os.strerror(code), None if path is None else str(path))


def _free_bytes(path: str | os.PathLike[str] | None) -> int:
    here = Path(path) if path is not None else Path(".")
    for folder in (here, *here.absolute().parents):
        try:
            st = os.statvfs(folder)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize
    return 1 << 62


@contextlib.contextmanager
def library_writes(path: str | os.PathLike[str]) -> Iterator[None]:
    """For a block where a library writes `path` (a file or a folder): its error for a failed write (see
    `write_failure`) is raised as the OSError it stands for, naming `path`; other errors pass unchanged."""
    try:
        yield
    except OSError:
        raise
    except Exception as exc:
        failed = write_failure(exc, path)
        if failed is None:
            raise
        raise failed from exc
