"""A simulated action library for the grid spec: a fake site register and `site_check`, the spec's one action.

Every site of templates/grid/places.txt gets expected/present head counts, helmets worn and devices carried,
derived from the SHA-256 of its name: the same numbers on every run and machine. The mix of sites covers every
branch of the summary step (no work order, everyone present, absentees, extra people, an empty site, missing
helmets or devices). `tasktune serve --actions` reads `REGISTRY` (tool name -> callable).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache

CHECKS = ("人数检测", "安全检查", "设备检查")


@dataclass(frozen=True)
class Site:
    place: str
    expected: int  # people the work order expects (0: no work order)
    present: int  # people detected on site
    helmets: int  # of those, wearing a helmet
    devices: int  # of those, carrying their devices (electroscope)


def make_site(place: str) -> Site:
    """The site's numbers: a pure function of its name."""
    h = hashlib.sha256(place.encode("utf-8")).digest()
    kind = h[0] % 8
    expected = 0 if kind == 0 else 1 + h[1] % 60
    if kind == 0:
        present = h[2] % 6  # people on a site without a work order
    elif kind <= 3:
        present = expected
    elif kind <= 5:
        present = h[2] % expected
    elif kind == 6:
        present = expected + 1 + h[2] % 10
    else:
        present = 0
    helmets = max(0, present - (h[3] % 4 if h[3] % 2 else 0))
    devices = max(0, present - (h[4] % 3 if h[4] % 2 else 0))
    return Site(place, expected, present, helmets, devices)


@cache
def sites() -> dict[str, Site]:
    """The register: every place of the grid spec's pool file."""
    from tasktune.datagen.spec import load_spec

    return {str(place): make_site(str(place)) for place in load_spec("grid").slots["place"].values}


def site_check(place: str, check: str) -> dict[str, int]:
    """The `site_check` tool: the summary frame's fields for `check` at `place` (`ok`: helmets worn for
    安全检查, devices carried for 设备检查, everyone present for 人数检测)."""
    if check not in CHECKS:
        raise ValueError(f"site_check: unknown check {check!r} (checks: {', '.join(CHECKS)})")
    register = sites()
    if place not in register:
        raise ValueError(f"site_check: no site {place!r} in the register ({len(register)} sites, e.g. "
                         f"{', '.join(list(register)[:3])})")
    site = register[place]
    ok = {"人数检测": site.present, "安全检查": site.helmets, "设备检查": site.devices}[check]
    return {"expected": site.expected, "present": site.present, "ok": ok}


REGISTRY = {"site_check": site_check}
