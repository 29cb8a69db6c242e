"""tasktune: a task spec becomes training data (datagen) and a P-tuning v2 adapter (tuning)."""

from pathlib import Path

__version__ = "0.1.0"

#: The project root: templates/ and schemas/ live here (the package is installed editable).
ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"
SCHEMAS = ROOT / "schemas"
