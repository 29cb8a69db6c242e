"""`--router` (docs/reliability.md, "A seventh probe"): a router's label that is no step of the requested run's spec
means "no step" (the spec's route rules decide), never the client's 400; a router whose labels name no step of the
served specs (not an intent classifier for them) is refused at startup, before its model loads."""

from __future__ import annotations

import threading

import httpx
import pytest

from tasktune.errors import ConfigError
from tasktune.tuning.inference.engine import Event


@pytest.fixture
def recorded(live_server, monkeypatch) -> list[str]:
    """The prompts (as the model sees them) of `live_server`'s requests; each is answered `好的`."""
    service, prompts = live_server.service, []

    def submit(request):
        prompts.append(service.tokenizer.decode(request.prompt_ids, skip_special_tokens=True))
        threading.Timer(0.01, request.emit, [Event(text="好的", finish_reason="stop", full_text="好的",
                                                   prompt_tokens=5, completion_tokens=1)]).start()
        return request

    monkeypatch.setattr(service.engine, "submit", submit)
    return prompts


@pytest.mark.parametrize("label, step", [("positive", "arguments"), ("report", "arguments"), (7, "arguments"),
                                         ("greet", "greet")])
def test_a_router_label_that_is_no_step_of_the_run_falls_back_to_the_route_rules(live_server, recorded,
                                                                               monkeypatch, label, step):
    """A label the run's spec has no step of (a sentiment model's `positive`, the smarthome spec's `report`) made
    every plain request a 400 `messages: unknown step 'positive'`, blamed on the client."""
    monkeypatch.setattr(live_server.service, "router", lambda text: (None, label))
    reply = httpx.post(f"{live_server.url}/v1/chat/completions", timeout=30,
                       json={"model": "grid", "messages": [{"role": "user", "content": "hello there"}]})
    assert reply.status_code == 200, reply.text
    framed = live_server.service.tools["grid"].frame(step, utterance="hello there")
    assert len(recorded) == 1 and framed in recorded[0], (recorded, framed)


def test_a_router_whose_labels_name_no_served_step_is_refused():
    from tasktune.datagen.spec import load_spec
    from tasktune.serve.router import check_labels
    from tasktune.serve.tools import TaskTools

    tools = {"grid": TaskTools(load_spec("grid"))}
    with pytest.raises(ConfigError, match=r"^--router runs/sentiment: its labels \(positive, negative\) name no step "
                                          r"of the served runs' specs \(arguments, greet, summary\); train it on"):
        check_labels("runs/sentiment", ["positive", "negative"], tools)
    with pytest.raises(ConfigError, match=r"no run has a spec: give one with --spec NAME=SPEC"):
        check_labels("runs/intent", ["greet", "arguments"], {})
    check_labels("runs/intent", ["greet", "arguments", "chitchat"], tools)  # some labels route: fine
