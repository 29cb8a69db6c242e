"""`tasktune serve`'s startup values checked before anything loads (serve/cli.py builds the server from them): the
NAME=VALUE pairs of --spec, the API key, the compile cache folder. Each problem is one ConfigError naming the flag,
the variable or the folder (exit 2, one line)."""

from __future__ import annotations

import os
import sys

from tasktune.errors import ConfigError


def pairs(values: list[str], flag: str, names: list[str] = ()) -> dict[str, str]:
    """NAME=VALUE pairs; NAME is the longest of `names` (the served runs) that the value starts with and "=" follows
    (a run folder whose own name holds "=" is served by that name), else what comes before the first "="."""
    out = {}
    for value in values:
        known = max((n for n in names if value.startswith(f"{n}=")), key=len, default=None)
        name, sep, rest = (known, "=", value[len(known) + 1:]) if known else value.partition("=")
        if not sep or not name or not rest:
            raise ConfigError(f"{flag} {value!r}: expected NAME=VALUE")
        if name in out and out[name] != rest:  # the last one won without a word
            raise ConfigError(f"{flag} {name}=...: given twice ({out[name]}, {rest}); give one")
        out[name] = rest
    return out


def inductor_cache(choice: str) -> None:
    """TORCHINDUCTOR_CACHE_DIR under $TASKTUNE_CACHE, made now: a $TASKTUNE_CACHE (or HOME) where no folder can be
    made failed the model's load, said as `could not load model ...: Not a directory: '/dev/null/x'`. Where it cannot
    be made, --decode-compile on is refused naming it; auto leaves inductor its own cache (a warning on CUDA)."""
    from tasktune.tuning.training.compiling import cache_root

    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return
    folder = cache_root() / "inductor"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        where = "$TASKTUNE_CACHE" if os.environ.get("TASKTUNE_CACHE") else "the cache folder"
        why = f"{where}: cannot make {folder} ({exc.strerror or exc}); set $TASKTUNE_CACHE to a writable folder"
        if choice == "on":
            raise ConfigError(f"--decode-compile on: {why}, or give --decode-compile off") from None
        import torch

        if torch.cuda.is_available():
            print(f"tasktune serve: warning: {why}: inductor keeps its own cache", file=sys.stderr, flush=True)
        return
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)


def api_key(flag: str | None) -> str | None:
    """--api-key, else $TASKTUNE_API_KEY, else None (no key). An empty one is refused rather than read as none (a
    script's `--api-key "$KEY"` with KEY unset served openly), and one no client can send (blank, spaces around it,
    control characters: a header carries none of these) rather than refusing every request with 401."""
    where, key = ("--api-key", flag) if flag is not None else ("$TASKTUNE_API_KEY", os.environ.get("TASKTUNE_API_KEY"))
    if key is None:
        return None
    if not key.strip():
        raise ConfigError(f"{where}: the key is empty; give a key, or leave {where} out to serve without one")
    if key != key.strip() or any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise ConfigError(f"{where}: the key has spaces at its ends or control characters, which no client can "
                          "send in an Authorization header")
    if not key.isascii():  # httpx raises UnicodeEncodeError; a browser sends `ä` as one Latin-1 byte
        raise ConfigError(f"{where}: the key has characters outside ASCII, which the openai clients cannot send in "
                          "a header")
    return key
