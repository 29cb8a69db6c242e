"""The chat page at / (serve/static), in a real headless Chromium: task list, streamed answers, history, tool
calls, errors and the API key.

Against `live_server` (tests/serve/conftest.py: the tiny trained runs "grid" and "grid2") for what the real server
does; against tests/serve/browser.py's stub for what a tiny model cannot be made to do on demand (a tool call and
its result sent back, a call the server ran, an error event in the middle of a stream, events cut inside a UTF-8
character, an answer arriving in many pieces).
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.serve.browser import browser, chromium_path, page, stub_server  # noqa: F401 (fixtures)
from tests.serve.browser import (EXECUTED, EXECUTED_WORD, FAIL_WORD, STUB_MODELS, StubServer, stub_answer,
                                 stub_tool_call)

pytestmark = pytest.mark.browser

SCREENSHOT = "/tmp/tasktune-chat-page.png"


def turn(page, act) -> dict:
    """Run `act()` (what starts a turn) and wait until the answer has finished -> the request body the page sent."""
    before = page.locator("#transcript > .message").count()
    with page.expect_request("**/v1/chat/completions") as sent:
        act()
    # the sent message's bubble comes at once; the answer, tool calls or error before the page stops being busy
    page.wait_for_function(
        "n => document.querySelectorAll('#transcript > .message').length >= n + 2"
        " && document.getElementById('transcript').getAttribute('aria-busy') === 'false'", arg=before)
    return json.loads(sent.value.post_data)


def send(page, text: str, *, enter: bool = True) -> dict:
    """Type `text` and send it (Enter, or a click on #send) -> the request body, once the answer has finished."""
    page.fill("#message", text)
    return turn(page, lambda: page.press("#message", "Enter") if enter else page.click("#send"))


def record_lengths(page) -> None:
    """From now on, window.lengths collects the text length of the last .assistant bubble at each DOM change."""
    page.evaluate("""() => {
        window.lengths = [];
        new MutationObserver(() => {
            const all = document.querySelectorAll('.assistant');
            if (all.length) window.lengths.push(all[all.length - 1].textContent.length);
        }).observe(document.getElementById('transcript'), {childList: true, subtree: true, characterData: true});
    }""")


def non_stream(url: str, body: dict, key: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.post(f"{url}/v1/chat/completions", json=dict(body, stream=False), headers=headers, timeout=60)
    response.raise_for_status()
    return response.json()["choices"][0]["message"]


def open_page(page, url: str) -> None:
    page.goto(url + "/")
    page.wait_for_function("() => document.querySelectorAll('#model option').length > 0")


def test_the_task_list_comes_from_v1_models(page, live_server):
    ids = [m["id"] for m in httpx.get(f"{live_server.url}/v1/models").json()["data"]]
    assert {"grid", "grid2", "auto"} <= set(ids)
    open_page(page, live_server.url)
    assert page.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == ids
    assert page.input_value("#api-key") == ""  # no key unless the user types one
    assert page.locator(".error").count() == 0


def test_streamed_answers_equal_the_non_streamed_ones_and_keep_the_conversation(page, live_server, serve_prompts):
    open_page(page, live_server.url)
    page.select_option("#model", "grid")
    first = send(page, serve_prompts[0])
    assert first["stream"] is True and first["model"] == "grid"
    assert first["messages"] == [{"role": "user", "content": serve_prompts[0]}]
    answer = page.locator(".assistant").last.text_content()
    assert answer.strip() and answer == non_stream(live_server.url, first)["content"]

    second = send(page, serve_prompts[1], enter=False)  # the Send button too
    assert [(m["role"], m["content"]) for m in second["messages"]] == [
        ("user", serve_prompts[0]), ("assistant", answer), ("user", serve_prompts[1])]
    assert page.locator(".assistant").last.text_content() == non_stream(live_server.url, second)["content"]
    assert page.locator(".error").count() == 0


def test_a_missing_api_key_shows_the_401_then_the_key_is_sent(page, serve_runs):
    from tests.serve.conftest import LiveServer

    server = LiveServer([f"grid={serve_runs['grid']}", "--api-key", "s3cret", "--max-tokens", "16"])
    try:
        page.goto(server.url + "/")
        error = page.locator(".error").first
        error.wait_for()
        assert "401" in error.text_content() and "API key" in error.text_content()
        assert page.locator("#model option").count() == 0

        page.fill("#api-key", "s3cret")
        page.press("#api-key", "Tab")  # `change`: the task list is loaded again, with the key
        page.wait_for_function("() => document.querySelectorAll('#model option').length > 0")
        body = send(page, "步骤#问候*语音#你好")
        assert page.locator(".assistant").last.text_content() == non_stream(server.url, body, "s3cret")["content"]

        page.fill("#api-key", "wrong")
        errors = page.locator(".error").count()
        send(page, "你好")  # (leaving the key field reloads the task list: a 401 too)
        assert page.locator(".error").count() > errors
        assert "401" in page.locator(".error").last.text_content()
        assert page.locator(".assistant").count() == 1
    finally:
        server.stop()


# --- against the stub: a tool call, an error event mid-stream, events cut inside a character -------------------

def test_tool_calls_show_in_their_own_box(page, stub_server):
    open_page(page, stub_server.url)
    assert page.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == STUB_MODELS
    page.select_option("#model", "grid2")
    record_lengths(page)
    send(page, "你好")
    assert page.locator(".assistant").last.text_content() == stub_answer("grid2", [{"content": "你好"}])
    lengths = page.evaluate("window.lengths")
    assert len(set(lengths)) > 3 and lengths == sorted(lengths), f"not streamed in pieces: {lengths}"
    body = send(page, "查查济南的人数")
    assert page.locator(".assistant").last.text_content() == stub_answer("grid2", body["messages"])
    box = page.locator(".tool-call")
    assert box.count() == 1
    assert "query_headcount" in box.text_content()
    assert json.loads(box.locator(".tool-arguments").text_content()) == {"place": "济南", "task": "人数检测"}

    # the client runs the tool: its result goes back as a `tool` message, after the call in the conversation
    result = '{"expected": 47, "present": 34}'
    page.fill(".tool-call textarea", result)
    page.screenshot(path=SCREENSHOT, full_page=True)
    third = turn(page, lambda: page.click(".tool-call button[type=submit]"))
    reply, tool = third["messages"][3:]
    assert reply["role"] == "assistant"
    assert reply["tool_calls"] == [stub_tool_call([{"content": "查查济南的人数"}])]
    assert tool == {"role": "tool", "tool_call_id": "call_stub0", "content": result}
    assert page.locator(".assistant").last.text_content() == stub_answer("grid2", third["messages"])
    assert page.locator(".tool-result-form").count() == 0  # answered: no second result for that call


def test_a_new_message_instead_of_a_tool_result_drops_the_unanswered_call(page, stub_server):
    """OpenAI (and this server) refuses a conversation whose assistant tool call no tool message answers: typing
    on instead of sending the result keeps the assistant's text and leaves its call out of the history."""
    open_page(page, stub_server.url)
    page.select_option("#model", "grid2")
    send(page, "查查济南的人数")
    assert page.locator(".tool-call").count() == 1
    body = send(page, "你好")
    assistant = body["messages"][1]
    assert assistant["role"] == "assistant" and "tool_calls" not in assistant and "content" in assistant
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]


def test_a_call_the_server_ran_shows_its_result(page, stub_server):
    open_page(page, stub_server.url)
    send(page, f"please {EXECUTED_WORD}")
    box = page.locator(".tool-call")
    assert "query_headcount" in box.text_content()
    assert json.loads(box.locator(".tool-arguments").text_content()) == EXECUTED["arguments"]
    assert json.loads(box.locator(".tool-result").text_content()) == EXECUTED["result"]
    assert page.locator(".tool-result-form").count() == 0  # nothing left for the client to run
    body = send(page, "ok")
    assert "tool_calls" not in body["messages"][1]


def test_an_error_event_mid_stream_shows_and_the_message_can_be_sent_again(page, stub_server):
    open_page(page, stub_server.url)
    send(page, f"please {FAIL_WORD}")
    assert "generation failed: stub" in page.locator(".error").last.text_content()
    assert page.locator(".error").last.get_attribute("role") == "alert"
    assert page.input_value("#message") == ""  # part of the answer came: it stays, as a turn
    body = send(page, "again")
    assert len(body["messages"]) == 3


def test_an_http_error_keeps_the_message_for_a_retry(page):
    server = StubServer(api_key="k")
    try:
        page.goto(server.url + "/")
        page.locator(".error").first.wait_for()
        page.fill("#api-key", "k")
        page.press("#api-key", "Tab")
        page.wait_for_function("() => document.querySelectorAll('#model option').length > 0")
        page.fill("#api-key", "")
        send(page, "lost?")
        assert "HTTP 401: Incorrect or missing API key (stub)" == page.locator(".error").last.text_content()
        assert page.input_value("#message") == "lost?"
        assert "failed" in page.locator(".user").last.get_attribute("class")
        page.fill("#api-key", "k")
        body = send(page, "lost?")
        assert body["messages"] == [{"role": "user", "content": "lost?"}]  # the failed turn was not kept
    finally:
        server.stop()
