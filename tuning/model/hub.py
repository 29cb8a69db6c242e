"""A base model named by a hub id (no local folder): from the local Hugging Face cache, or from the hub when it can be
reached, decided at once.

With the hub out of reach, transformers' `from_pretrained` spent ~53 s in huggingface_hub's retry loops (5 retries
per file, "Retrying in 8s [Retry 5/5]") before its error. `hub_load` first tries one TCP connection to the endpoint
(HF_ENDPOINT, or its proxy; skipped under HF_HUB_OFFLINE): reachable, the library loads as it always does; not, the
model loads from the local cache alone when it is there, and otherwise a `ConfigError` names the model, the endpoint
and why, in a few seconds.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

from tasktune.errors import ConfigError

CONNECT_SECONDS = 3.0  # one TCP connect to the hub; name resolution gets the same again


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, as huggingface_hub read it."""
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def is_cached(name: str) -> bool:
    """The local Hugging Face cache (HF_HUB_CACHE) holds `name`'s config.json at its main revision."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except (ValueError, OSError):  # a name that is no valid repo id: not cached
        return False


def unreachable(url: str) -> str | None:
    """Why `url`'s host (or the proxy for it) takes no TCP connection, or None when it does. At most about
    2 * CONNECT_SECONDS: name resolution (which has no timeout of its own) runs in a thread given that long."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
    if not host:
        return f"{url!r} is not a URL"
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        return f"{url!r}: {exc}"
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxied = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if proxied.hostname:
            host, port = proxied.hostname, proxied.port or 8080
    return _connect_error(host, port)


@functools.lru_cache(maxsize=8)
def _connect_error(host: str, port: int) -> str | None:
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
            outcome.append(None)
        except socket.gaierror as exc:
            outcome.append(f"cannot resolve {host}: {exc.strerror or exc}")
        except socket.timeout:
            outcome.append(f"no answer from {host}:{port} in {CONNECT_SECONDS:g} s")
        except OSError as exc:
            outcome.append(f"cannot connect to {host}:{port}: {exc.strerror or exc}")

    thread = threading.Thread(target=attempt, daemon=True, name="tasktune-hub-check")
    thread.start()
    thread.join(2 * CONNECT_SECONDS)
    return outcome[0] if outcome else f"no answer from {host}:{port} (or its name server) in {2 * CONNECT_SECONDS:g} s"


def _not_here(name: str) -> str:
    return f"--model {name}: no such local folder (relative to {Path.cwd()})"


@contextlib.contextmanager
def _cache_only() -> Iterator[None]:
    """huggingface_hub offline for the block, as HF_HUB_OFFLINE=1 makes it: `local_files_only` does not reach every
    request of a load (transformers 5's AutoModel looks for an adapter_config.json on the hub without it)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def hub_load(load: Callable[..., Any], name: str, **kwargs) -> Any:
    """`load(name, **kwargs)` (a `from_pretrained`) for a `name` that is no local folder. The hub reachable: the
    library's own load (it fetches what the cache lacks or what changed). Else, or under HF_HUB_OFFLINE, from the
    local cache alone (`local_files_only=True`) when it holds the model, and a ConfigError at once when not."""
    is_offline = offline()
    reason = None if is_offline else unreachable(endpoint())
    if not is_offline and reason is None:
        return load(name, **kwargs)
    if not is_cached(name):
        if reason is not None:
            raise ConfigError(f"{_not_here(name)}, and the Hugging Face hub ({endpoint()}) cannot be reached to "
                              f"download it ({reason}); give a local folder, or set HF_HUB_OFFLINE=1 to use the "
                              "local cache")
        from huggingface_hub import constants

        raise ConfigError(f"{_not_here(name)}, and not in the local Hugging Face cache ({constants.HF_HUB_CACHE}); "
                          "HF_HUB_OFFLINE is set, so it is not downloaded: give a local folder, or unset "
                          "HF_HUB_OFFLINE to download it")
    with _cache_only():  # (a file the cache lacks: the library's OSError, which the caller words)
        return load(name, local_files_only=True, **kwargs)
