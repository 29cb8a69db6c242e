"""The chat page renders everything the server says as text, never as HTML (docs/reliability.md, "A seventh
probe"): a run folder named as markup, the model's answer, a tool call's arguments and an error message that quotes
the user's markup, in a real headless Chromium against a real server. Each payload would set `window.pwned` (and
add an element) if the page parsed it; the page's code writes only `textContent`, and its CSP allows no inline
script anyway."""

from __future__ import annotations

import json
import shutil
import threading

import pytest

from tasktune.tuning.inference.engine import Event
from tests.serve.browser import browser, chromium_path, page  # noqa: F401 (fixtures)
from tests.serve.conftest import LiveServer
from tests.serve.test_page import open_page, send, turn

pytestmark = pytest.mark.browser

NAME = "<img src=x onerror=window.pwned=1>"
PLACE = "<img src=x onerror=window.pwned=2>"
ANSWER = "<b id=bold>bold?</b><img src=x onerror=window.pwned=3><script>window.pwned=4</script>"


@pytest.fixture(scope="module")
def marked_up(serve_runs, tmp_path_factory):
    """A server of the grid run copied into a folder named NAME (with the grid spec's tools), whose engine answers
    the arguments step with a call at PLACE and anything else with ANSWER."""
    folder = tmp_path_factory.mktemp("markup") / NAME
    shutil.copytree(serve_runs["grid"], folder)
    server = LiveServer([str(folder), "--spec", f"{NAME}=grid", "--max-tokens", "64"])
    service = server.service

    def submit(request):
        prompt = service.tokenizer.decode(request.prompt_ids, skip_special_tokens=True)
        text = (f"因为出现地名为{PLACE}, 所以函数一参数为{PLACE}; 因为出现人数要求, 所以函数二参数为人数检测"
                if "拆分函数参数" in prompt and PLACE in prompt else ANSWER)
        threading.Timer(0.01, request.emit, [Event(text=text, finish_reason="stop", full_text=text,
                                                   prompt_tokens=5, completion_tokens=5)]).start()
        return request

    service.engine.submit = submit
    yield server
    server.stop()


def _nothing_parsed(page) -> None:
    assert page.evaluate("() => window.pwned") is None
    assert page.locator("#transcript img, #transcript b, #transcript script, #model img").count() == 0


def test_markup_from_the_server_is_shown_as_text(page, marked_up):
    open_page(page, marked_up.url)
    assert page.eval_on_selector_all("#model option", "os => os.map(o => o.textContent)")[0] == NAME
    send(page, "你好 <i>there</i>")
    assert page.locator(".user").last.text_content() == "你好 <i>there</i>"
    assert page.locator(".assistant").last.text_content() == ANSWER
    send(page, f"查查{PLACE}的人数")
    arguments = page.locator(".tool-call .tool-arguments").last.text_content()
    assert json.loads(arguments) == {"place": PLACE, "check": "人数检测"}, arguments
    assert NAME not in page.locator(".tool-call .tool-name").last.text_content()
    # a result the server refuses: its message quotes the user's markup
    page.fill(".tool-call textarea", json.dumps({"expected": PLACE, "present": 1, "ok": 1}))
    turn(page, lambda: page.click(".tool-call button[type=submit]"))
    error = page.locator(".error").last.text_content()
    assert error.startswith("HTTP 400: ") and PLACE in error, error
    _nothing_parsed(page)
