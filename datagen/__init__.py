"""datagen: a task spec (YAML + Jinja templates) becomes noisy, split, schema-checked train/dev data.

Data flow: spec (load + schema) -> expand (sandboxed render, slot filling) -> split -> noise
-> validate -> write (+ stats). `generate` (datagen.pipeline) runs the middle; `write_splits` the end.
Names are imported on first use so that `tasktune --help` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "load_spec": "tasktune.datagen.spec",
    "TaskSpec": "tasktune.datagen.spec",
    "generate": "tasktune.datagen.pipeline",
    "Splits": "tasktune.datagen.pipeline",
    "write_splits": "tasktune.datagen.write",
}
__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'datagen' has no attribute {name!r}")
