"""LiteLLM's completion(model="openai/NAME", api_base=...), as its docs show an OpenAI-compatible server: plain and
streamed (stream=True, stream_chunk_builder), tools and their result, and the exceptions it maps errors to."""

from __future__ import annotations

import json
import os
from importlib.metadata import version

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download of the cost map at import

import litellm  # noqa: E402

from common import ACT_URL, ASK, FRAMED, HELLO, KEY, KEY_URL, LONG, RESULT, TOOL, URL, run  # noqa: E402

litellm.suppress_debug_info = True


def completion(url: str = URL, **kwargs):
    kwargs.setdefault("api_key", "none")
    kwargs.setdefault("model", "openai/grid")
    kwargs.setdefault("messages", [{"role": "user", "content": HELLO}])
    return litellm.completion(api_base=f"{url}/v1", num_retries=0, timeout=60, **kwargs)


def chat():
    reply = completion(max_tokens=6)
    return {"text": reply.choices[0].message.content, "finish_reason": reply.choices[0].finish_reason,
            "usage": [reply.usage.prompt_tokens, reply.usage.completion_tokens]}


def stream():
    chunks = list(completion(max_tokens=6, stream=True, stream_options={"include_usage": True}))
    built = litellm.stream_chunk_builder(chunks)
    return {"text": "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
            "finish_reason": built.choices[0].finish_reason,
            "usage": [built.usage.prompt_tokens, built.usage.completion_tokens]}


def tools(content: str, stream: bool = False):
    asked = [{"role": "user", "content": content}]
    if stream:
        first = litellm.stream_chunk_builder(list(completion(messages=asked, tools=[TOOL], stream=True)))
    else:
        first = completion(messages=asked, tools=[TOOL])
    message = first.choices[0].message
    (call,) = message.tool_calls
    follow = [*asked, message.model_dump(), {"role": "tool", "tool_call_id": call.id, "name": call.function.name,
                                             "content": json.dumps(RESULT)}]
    if stream:
        summary = "".join(c.choices[0].delta.content or "" for c in completion(messages=follow, tools=[TOOL],
                                                                               stream=True))
    else:
        summary = completion(messages=follow, tools=[TOOL]).choices[0].message.content
    return {"finish_reason": first.choices[0].finish_reason, "name": call.function.name,
            "arguments": json.loads(call.function.arguments), "summary": summary}


def actions():
    asked = [{"role": "user", "content": ASK}]
    reply = completion(ACT_URL, messages=asked)
    streamed = "".join(c.choices[0].delta.content or "" for c in completion(ACT_URL, messages=asked, stream=True))
    executed = reply.choices[0].message.provider_specific_fields["executed_tool_calls"]  # (not streamed)
    return {"text": reply.choices[0].message.content, "streamed": streamed,
            "executed": [call["arguments"] for call in executed]}


run({
    "versions": lambda: {"litellm": version("litellm"), "openai": version("openai")},
    "chat": chat,
    "stream": stream,
    "sampled": lambda: [completion(max_tokens=6, temperature=0.8, seed=7, stop=["\n"]).choices[0].message.content
                        for _ in range(2)],
    "tools": lambda: tools(ASK),
    "tools_framed": lambda: tools(FRAMED),
    "stream_tools": lambda: tools(ASK, stream=True),
    "actions": actions,
    "unknown_model": lambda: completion(model="openai/nope"),
    "bad_key": lambda: completion(KEY_URL, api_key="wrong"),
    "good_key": lambda: completion(KEY_URL, api_key=KEY, max_tokens=2).choices[0].finish_reason,
    "max_tokens_too_large": lambda: completion(max_tokens=100_000),
    "overflow": lambda: completion(messages=[{"role": "user", "content": LONG}]),
})
