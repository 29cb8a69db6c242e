"""tasktune: a task spec becomes training data (tasktune.datagen), a P-tuning v2 adapter (tasktune.tuning)
and a served assistant (tasktune.serve).

The public API (imported on first use, so `import tasktune` stays fast):

    tasktune.generate_data(spec, out, seed=42)      # spec path or built-in name -> data folder
    tasktune.train(model=..., data=..., out=...)      # TrainConfig fields as keywords -> run folder
    tasktune.evaluate(run_dir)                        # base vs tuned report -> metrics
    tasktune.Assistant.from_run(run_dir)              # answer prompts with a trained run

Templates and schemas ship inside the package (`tasktune/templates`, `tasktune/schemas` in a wheel; the
checkout's top-level folders in an editable install); `resource()` finds them either way.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

__version__ = "0.2.0"


def resource(name: str) -> Path:
    """The folder of shipped data `name` ("templates" or "schemas"): inside the installed package (wheel),
    else the checkout's top-level folder (editable install or a source tree on the path)."""
    from importlib.resources import files

    here = Path(str(files(__name__)))
    installed = here / name
    return installed if installed.is_dir() else here.parent / name


def _source_checkout() -> None:
    """Run from a source checkout without installing (PYTHONPATH=checkout, as on the GPU machines): the
    sub-packages are the checkout's top-level datagen/, tuning/ and serve/ folders (pyproject.toml maps them into
    the package for a wheel), so the checkout root joins this package's search path. Installed, they are inside."""
    here = Path(__file__).resolve().parent
    root = here.parent
    if not (here / "datagen").is_dir() and (root / "datagen" / "__init__.py").is_file() and \
            (root / "pyproject.toml").is_file() and str(root) not in __path__:
        __path__.append(str(root))


_source_checkout()
TEMPLATES = resource("templates")
SCHEMAS = resource("schemas")

_API = {
    "generate_data": "tasktune.api",
    "train": "tasktune.api",
    "evaluate": "tasktune.api",
    "Assistant": "tasktune.tuning.inference.assistant",
    "builtin_specs": "tasktune.api",
}
__all__ = ["__version__", "resource", "TEMPLATES", "SCHEMAS", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'tasktune' has no attribute {name!r}")
