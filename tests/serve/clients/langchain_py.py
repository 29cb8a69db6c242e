"""LangChain's ChatOpenAI (langchain-openai) with base_url, as its docs show it: invoke, stream, batch, bind_tools
and a tool round trip (streamed too), create_agent's loop, and the errors it classifies."""

from __future__ import annotations

from importlib.metadata import version

from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from common import ASK, FRAMED, HELLO, KEY, KEY_URL, LONG, RESULT, URL, run


def model(url: str = URL, **kwargs) -> ChatOpenAI:
    kwargs.setdefault("api_key", "none")
    return ChatOpenAI(base_url=f"{url}/v1", model=kwargs.pop("name", "grid"), max_retries=0, timeout=60, **kwargs)


@tool
def site_check(place: str, check: str) -> dict:
    """查询工地的工单与现场检测结果(人数检测/安全检查/设备检查)"""
    return RESULT


def invoke():
    reply = model(max_tokens=6).invoke(HELLO)
    return {"text": reply.content, "finish_reason": reply.response_metadata["finish_reason"],
            "usage": [reply.usage_metadata["input_tokens"], reply.usage_metadata["output_tokens"]]}


def stream():
    total = None
    for chunk in model(max_tokens=6, stream_usage=True).stream(HELLO):
        total = chunk if total is None else total + chunk
    return {"text": total.content, "finish_reason": total.response_metadata["finish_reason"],
            "usage": [total.usage_metadata["input_tokens"], total.usage_metadata["output_tokens"]]}


def tools(content: str, streaming: bool = False):
    bound = model(streaming=streaming).bind_tools([site_check])
    asked = [HumanMessage(content)]
    if streaming:
        first = None
        for chunk in bound.stream(asked):
            first = chunk if first is None else first + chunk
    else:
        first = bound.invoke(asked)
    (call,) = first.tool_calls
    result = site_check.invoke(call)
    summary = "".join(c.content for c in bound.stream([*asked, first, result])) if streaming else \
        bound.invoke([*asked, first, result]).content
    return {"finish_reason": first.response_metadata.get("finish_reason"), "name": call["name"],
            "arguments": call["args"], "summary": summary}


def agent():
    from langchain.agents import create_agent

    out = create_agent(model(), tools=[site_check]).invoke({"messages": [{"role": "user", "content": ASK}]})
    return [m.type for m in out["messages"]] + [out["messages"][-1].content]


run({
    "versions": lambda: {p: version(p) for p in ("langchain-openai", "langchain-core", "langchain", "openai")},
    "chat": invoke,
    "stream": stream,
    "sampled": lambda: [model(max_tokens=6, temperature=0.8, seed=7).invoke(HELLO, stop=["\n"]).content
                        for _ in range(2)],
    "batch": lambda: [m.content for m in model(max_tokens=6).batch([HELLO, HELLO])],
    "tools": lambda: tools(ASK),
    "tools_framed": lambda: tools(FRAMED),
    "stream_tools": lambda: tools(ASK, streaming=True),
    "agent": agent,
    "unknown_model": lambda: model(name="nope").invoke(HELLO),
    "bad_key": lambda: model(KEY_URL, api_key="wrong").invoke(HELLO),
    "good_key": lambda: model(KEY_URL, api_key=KEY, max_tokens=2).invoke(HELLO).response_metadata["finish_reason"],
    "max_tokens_too_large": lambda: model(max_tokens=100_000).invoke(HELLO),
    "overflow": lambda: model().invoke(LONG),
})
