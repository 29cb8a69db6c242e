"""Requests from other sites: a page elsewhere must not use a server on your machine through the visitor's browser.

Two checks on every request, before anything else (403 in OpenAI's error shape):

- Host (DNS rebinding): a page at http://evil.example:8000 whose name the attacker then points at 127.0.0.1 is
  "same origin" to the browser; its requests carry `Host: evil.example:8000`. A server bound to a loopback
  address takes only the Host names localhost, 127.0.0.1 and [::1] (any port), an IP address (no page can be
  served from one and reach another) and the names given with --allowed-host; bound elsewhere, any Host unless
  --allowed-host names some.
- Origin (cross-site requests): a browser sends `Origin` on a cross-site POST even when it is a "simple" request
  that needs no CORS preflight (`content-type: text/plain`), and the request ran although the page could not read
  the answer. A request whose Origin is neither this server's own (scheme, Host) nor one --cors-origin allows is
  refused. Clients that are not browsers send no Origin; the chat page's fetches are same-origin.

Pure ASGI middleware (as serve/guard.py), outermost, so a CORS preflight from elsewhere is refused here too.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Callable
from urllib.parse import urlsplit

from .headers import combined, repeated
from .protocol import error_response as _error

#: the Host names of this machine that no other site can take
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def is_loopback(host: str) -> bool:
    """Whether --host is a loopback address (or the name localhost), judged by the addresses it resolves to, as the
    socket binds it: `127.1`, `0x7f000001`, `::ffff:127.0.0.1` and a name of this machine that /etc/hosts points at
    127.0.1.1 (Debian's `--host $(hostname)`) all listen on loopback only, but read as text they were "elsewhere",
    and any Host was answered (no DNS-rebinding check)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):  # (cli.bind refuses such a --host)
        return False
    return bool(found) and all(_loopback_address(address[4][0]) for address in found)


def _loopback_address(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text.partition("%")[0])  # (an IPv6 scope: fe80::1%eth0)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 (Python 3.11 says it is not loopback)
    return (mapped or address).is_loopback


def allowed_hosts(bind: str, named: list[str]) -> frozenset[str] | None:
    """The Host names a server bound to `bind` takes (None: any): --allowed-host's names (`*`: any) and, bound to
    loopback or given names, the loopback names."""
    names = {n.strip().strip("[]").lower() for n in named}
    if "*" in names or (not names and not is_loopback(bind)):
        return None
    own = bind.strip().strip("[]").lower()  # the name the server was bound by (`--host vm`) is this machine's own
    return frozenset(names | set(LOOPBACK_NAMES) | ({own} if own and not _is_ip(own) else set()))


def _split_host(value: str) -> tuple[str, int | None]:
    """`name:port`, `[v6]:port` or `name` -> (name lower-cased without brackets, port or None)."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        name, _, port = value.partition(":")
    else:
        name, port = value, ""
    return name, int(port) if port.isdigit() else None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class SiteGuard:
    def __init__(self, app, *, hosts: frozenset[str] | None, cors_origins: tuple[str, ...] = (),
                 counted: Callable[[int], None] = lambda status: None):
        self.app, self.hosts, self.counted = app, hosts, counted
        self.any_origin = "*" in cors_origins
        self.origins = {o.rstrip("/").lower() for o in cors_origins}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":  # a header sent twice first (serve/headers.py): the guards read one value
            headers = scope["headers"]
            refusal = repeated(headers) or self.refusal(scope.get("scheme", "http"), combined(headers))
            if refusal is not None:
                self.counted(refusal.status_code)
                return await refusal(scope, receive, send)
        await self.app(scope, receive, send)

    def refusal(self, scheme: str, headers: dict[str, str]):
        host = headers.get("host")
        if host is not None and self.hosts is not None:
            name, _ = _split_host(host)
            if name not in self.hosts and not _is_ip(name):
                return _error(403, f"Host {host[:100]!r} is not a name of this server (DNS rebinding?); a server "
                              "reached under another name (a reverse proxy's) is told that name with --allowed-host",
                              code="host_not_allowed")
        origin = headers.get("origin")
        if origin is None or self.any_origin or origin.rstrip("/").lower() in self.origins:
            return None
        if host is not None and self._same(origin, scheme, host):
            return None
        return _error(403, f"requests from the web page at {origin[:100]!r} are not allowed: it is not this "
                      "server's own origin (the server may allow it with --cors-origin)", code="origin_not_allowed")

    @staticmethod
    def _same(origin: str, scheme: str, host: str) -> bool:
        """Whether `origin` is scheme://host of this request (default ports filled in)."""
        try:
            parts = urlsplit(origin.strip())
            port = parts.port
        except ValueError:
            return False
        if not parts.scheme or not parts.hostname or parts.path not in ("", "/"):
            return False
        name, host_port = _split_host(host)
        default = _DEFAULT_PORTS.get(scheme)
        return (parts.scheme.lower() == scheme and parts.hostname.lower() == name
                and (port or _DEFAULT_PORTS.get(parts.scheme.lower())) == (host_port or default))


#: The chat page's own files: never sniffed as another type, never framed by another site, scripts and styles from
#: this server only (the page has no inline code), no referrer sent on
PAGE_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
                "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                                           "form-action 'none'"}
