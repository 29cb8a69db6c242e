"""What the Python client scripts share (they run under .venv-clients' python, started by
tests/serve/test_real_clients.py, which reads the one JSON line each prints: check name -> {"ok": value} or
{"error": the exception described})."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable

URL, KEY_URL, ACT_URL = os.environ["TT_URL"], os.environ["TT_KEY_URL"], os.environ["TT_ACT_URL"]
KEY = os.environ["TT_KEY"]
ASK = "查查济南的人数"
FRAMED = "步骤#理解并基于输入拆分函数参数*语音#查查济南的人数"
HELLO = "你好"
LONG = ASK * 300  # over the test server's --max-prompt-tokens (256)
RESULT = {"expected": 47, "present": 34, "ok": 34}
PARAMETERS = {  # templates/grid/spec.yaml, actions[0].parameters
    "type": "object",
    "properties": {"place": {"type": "string", "description": "工地名称, 如 济南"},
                   "check": {"type": "string", "enum": ["人数检测", "安全检查", "设备检查"],
                             "description": "检查类型"}},
    "required": ["place", "check"], "additionalProperties": False}
TOOL = {"type": "function", "function": {"name": "site_check", "description": "查询工地的工单与现场检测结果",
                                         "parameters": PARAMETERS}}


def described(exc: BaseException) -> dict[str, Any]:
    """An exception as the tests read it: its class (and its bases' names), HTTP status, error code, message."""
    body = getattr(exc, "body", None)
    code = getattr(exc, "code", None) or (body.get("code") if isinstance(body, dict) else None)
    return {"class": type(exc).__name__, "classes": [c.__name__ for c in type(exc).__mro__],
            "status": getattr(exc, "status_code", None), "code": code, "message": str(exc)[:600]}


def run(checks: dict[str, Callable[[], Any]]) -> None:
    """Each check in turn; one JSON line on stdout with what each returned or raised."""
    out = {}
    for name, check in checks.items():
        try:
            out[name] = {"ok": check()}
        except Exception as exc:  # noqa: BLE001 (reported, the test decides)
            out[name] = {"error": described(exc)}
    sys.stdout.write(json.dumps(out, ensure_ascii=False, default=repr) + "\n")
