"""`tasktune tiny-model`: the embedded default base model (moved from tuning/tiny.py; split up next)."""

from tasktune.tuning.tiny.build import *  # noqa: F401,F403
from tasktune.tuning.tiny.build import _device  # noqa: F401
