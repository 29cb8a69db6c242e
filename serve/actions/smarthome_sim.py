"""A simulated action library for the smarthome spec: `set_device`, the spec's one action.

Whether a device answers (done / offline / busy) and what it draws once on are derived from the SHA-256 of
`room/device`: the same on every run and machine, for any room. `tasktune serve --actions` reads `REGISTRY`.
"""

from __future__ import annotations

import hashlib

DEVICES = ("light", "heater", "fan", "blinds")
ACTIONS = ("on", "off")


def set_device(device: str, room: str, action: str) -> dict[str, object]:
    """The `set_device` tool: the report frame's fields (`result`, `power` in watts after the command)."""
    if device not in DEVICES:
        raise ValueError(f"set_device: unknown device {device!r} (devices: {', '.join(DEVICES)})")
    if action not in ACTIONS:
        raise ValueError(f"set_device: unknown action {action!r} (actions: on, off)")
    h = hashlib.sha256(f"{room}/{device}".encode("utf-8")).digest()
    result = "offline" if h[0] % 10 == 0 else "busy" if h[0] % 10 == 1 else "done"
    if action == "off" or result != "done":
        power = 0
    elif device in ("light", "fan"):
        power = 5 + h[1] % 55
    elif device == "heater":
        power = 500 + 100 * (h[1] % 16)
    else:
        power = 10 + h[1] % 21
    return {"result": result, "power": power}


REGISTRY = {"set_device": set_device}
