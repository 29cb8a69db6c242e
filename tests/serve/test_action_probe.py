"""The seventh probe's hostile action libraries (docs/reliability.md, "A seventh probe"): what an action raises
or returns is described and checked on its worker thread, and fails its own request only, as a 502
`action_failed`, plain or streamed; never a 500 `internal error` with a traceback on the server's terminal."""

from __future__ import annotations

import re

import openai
import pytest

from tests.serve.test_actions import ASK, _act, _still_serves, _streamed_error, acting, action_server  # noqa: F401


class _Unsayable(Exception):
    def __str__(self):
        raise RuntimeError("no message for you")


def test_an_exception_whose_message_cannot_be_read_is_still_a_502(acting, monkeypatch):  # noqa: F811
    """An exception whose __str__ raised was a 500 `internal error: RuntimeError` (the message was read on the event
    loop, outside the action's protection) with a traceback on the terminal; a stream ended the same way."""
    def site_check(place, check):
        raise _Unsayable()

    _act(acting, monkeypatch, site_check)
    with pytest.raises(openai.APIStatusError) as err:
        acting.client().chat.completions.create(model="grid", messages=ASK)
    body = err.value.body
    assert err.value.status_code == 502 and body["code"] == "action_failed", body
    assert body["message"] == "action site_check failed: _Unsayable (its message could not be read: RuntimeError)"
    error = _streamed_error(acting)
    assert error["code"] == "action_failed" and "_Unsayable" in error["message"], error
    _still_serves(acting, monkeypatch)


@pytest.mark.parametrize("result, said", [
    ({"expected": 1, "present": 1, "ok": 1, "note": "bad \ud800 half"}, r"result.note: a string with a lone surrogate"),
    ({"expected": 1, "present": 1, "ok": 1, "\udfff": 1}, r"result: key: a string with a lone surrogate"),
    ({"expected": 1, "present": 1, "ok": 1, "list": ["ok", "\ud83d"]}, r"result.list[1]: a string with a lone"),
], ids=["value", "key", "in-a-list"])
def test_a_lone_surrogate_in_a_result_is_a_502_not_a_500(acting, monkeypatch, result, said):  # noqa: F811
    """A string UTF-8 cannot write (a lone surrogate, as `surrogateescape` decoding leaves) in a result's extra
    field passed the checks, then failed writing the answer: a 500 `internal error: UnicodeEncodeError` with a
    traceback; a stream broke off without its error event or [DONE]."""
    _act(acting, monkeypatch, lambda place, check: result)
    with pytest.raises(openai.APIStatusError) as err:
        acting.client().chat.completions.create(model="grid", messages=ASK)
    body = err.value.body
    assert err.value.status_code == 502 and body["code"] == "action_failed", body
    assert body["message"].startswith("action site_check returned a result that is not JSON: ") and \
        said in body["message"], body
    error = _streamed_error(acting)
    assert error["code"] == "action_failed" and said in error["message"], error
    _still_serves(acting, monkeypatch)


def test_a_registry_name_that_is_no_tool_is_warned_about():
    """A name in REGISTRY that no served spec has as a tool (a misspelling beside the right names) started without
    a word, and its function never ran. The startup now warns, naming it and the tools there are."""
    from tasktune.datagen.spec import load_spec
    from tasktune.serve.actions.loading import check_actions
    from tasktune.serve.tools import TaskTools

    def act(place, check):
        return {}

    warned: list[str] = []
    check_actions("acts.py", {"site_check": act, "site_chek": act, "Site_Check": act},
                  {"grid": TaskTools(load_spec("grid"))}, warned.append)
    assert warned == ["--actions acts.py: REGISTRY has 'site_chek', 'Site_Check', which no served spec has as a tool "
                      "(tools: site_check): they never run"], warned
    warned.clear()
    check_actions("grid", {"site_check": act}, {"grid": TaskTools(load_spec("grid"))}, warned.append)
    assert warned == []


def test_numpy_numbers_in_a_result_are_json_numbers(acting, monkeypatch):  # noqa: F811
    """Counts computed with numpy or pandas come as numpy.int64: a number where the tool wants one, yet the action
    failed with 502 `'int64' is not a JSON type`. Integers and reals of any kind (numbers.Integral, numbers.Real)
    are now JSON numbers; what is not a number still fails, named with its module (`numpy.bool`, not `bool`)."""
    import numpy as np

    result = {"expected": np.int64(47), "present": np.int32(34), "ok": np.uint8(34), "share": np.float32(0.5)}
    _act(acting, monkeypatch, lambda place, check: result)
    reply = acting.client().chat.completions.create(model="grid", messages=ASK)
    (executed,) = reply.choices[0].message.model_extra["executed_tool_calls"]
    assert executed["result"] == {"expected": 47, "present": 34, "ok": 34, "share": 0.5}, executed
    assert all(type(v) in (int, float) for v in executed["result"].values())
    _act(acting, monkeypatch, lambda place, check: {**result, "all_present": np.bool_(True)})
    with pytest.raises(openai.APIStatusError) as err:
        acting.client().chat.completions.create(model="grid", messages=ASK)
    assert err.value.status_code == 502, err.value.body
    assert re.search(r"result\.all_present: 'numpy\.bool_?' is not a JSON type", err.value.body["message"]), \
        err.value.body  # (numpy 1 names it bool_)
