"""The openai Python client (openai.OpenAI with base_url), as its README shows it: models, chat (plain, streamed,
seeded), tool calls and their result, errors."""

from __future__ import annotations

import json
from importlib.metadata import version

import openai

from common import ACT_URL, ASK, FRAMED, HELLO, KEY, KEY_URL, LONG, RESULT, TOOL, URL, run

client = openai.OpenAI(base_url=f"{URL}/v1", api_key="none", max_retries=0, timeout=60)


def chat(**kwargs):
    reply = client.chat.completions.create(model="grid", messages=[{"role": "user", "content": HELLO}], **kwargs)
    choice = reply.choices[0]
    return {"text": choice.message.content, "finish_reason": choice.finish_reason,
            "usage": [reply.usage.prompt_tokens, reply.usage.completion_tokens]}


def stream():
    chunks = list(client.chat.completions.create(model="grid", messages=[{"role": "user", "content": HELLO}],
                                                 max_tokens=6, stream=True, stream_options={"include_usage": True}))
    finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    return {"text": "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), "finish_reason": finish,
            "usage": [chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens]}


def tools(content: str):
    asked = [{"role": "user", "content": content}]
    first = client.chat.completions.create(model="grid", messages=asked, tools=[TOOL])
    message = first.choices[0].message
    (call,) = message.tool_calls
    summary = client.chat.completions.create(model="grid", tools=[TOOL], messages=[
        *asked, message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps(RESULT)}])
    return {"finish_reason": first.choices[0].finish_reason, "name": call.function.name,
            "arguments": json.loads(call.function.arguments), "summary": summary.choices[0].message.content}


def stream_tools():
    with client.chat.completions.stream(model="grid", messages=[{"role": "user", "content": ASK}],
                                        tools=[TOOL]) as events:
        final = events.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    chunks = client.chat.completions.create(model="grid", tools=[TOOL], stream=True, messages=[
        {"role": "user", "content": ASK}, final.choices[0].message.model_dump(exclude_none=True, exclude={"parsed"}),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps(RESULT)}])
    return {"finish_reason": final.choices[0].finish_reason, "name": call.function.name,
            "arguments": json.loads(call.function.arguments),
            "summary": "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)}


def actions():
    acting = openai.OpenAI(base_url=f"{ACT_URL}/v1", api_key="none", max_retries=0, timeout=60)
    reply = acting.chat.completions.create(model="grid", messages=[{"role": "user", "content": ASK}])
    chunks = list(acting.chat.completions.create(model="grid", messages=[{"role": "user", "content": ASK}],
                                                 stream=True))
    return {"text": reply.choices[0].message.content,
            "executed": [c["arguments"] for c in reply.choices[0].message.model_extra["executed_tool_calls"]],
            "streamed": "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)}


run({
    "versions": lambda: {"openai": version("openai")},
    "models": lambda: [m.id for m in client.models.list()],
    "chat": lambda: chat(max_tokens=6),
    "stream": stream,
    "sampled": lambda: [chat(max_tokens=6, temperature=0.8, seed=7, stop=["\n"])["text"] for _ in range(2)],
    "tools": lambda: tools(ASK),
    "tools_framed": lambda: tools(FRAMED),
    "stream_tools": stream_tools,
    "actions": actions,
    "unknown_model": lambda: client.chat.completions.create(model="nope",
                                                            messages=[{"role": "user", "content": HELLO}]),
    "bad_key": lambda: openai.OpenAI(base_url=f"{KEY_URL}/v1", api_key="wrong", max_retries=0).models.list(),
    "good_key": lambda: [m.id for m in openai.OpenAI(base_url=f"{KEY_URL}/v1", api_key=KEY).models.list()],
    "max_tokens_too_large": lambda: chat(max_tokens=100_000),
    "overflow": lambda: client.chat.completions.create(model="grid", messages=[{"role": "user", "content": LONG}]),
    "responses_api": lambda: client.responses.create(model="grid", input=HELLO),
})
