"""OpenAI's chat-completions wire format (the subset tasktune serves), as pydantic models, and its error shape.

Longer than 300 lines because every check of a request's shape and types lives here, in one model (one place
that answers each 400 with its `param`), beside the one table of OpenAI's parameters it cannot honour (UNHONOURED)."""

from __future__ import annotations

import time
import uuid
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError, \
    field_validator, model_validator
from pydantic_core import PydanticCustomError

from .client_tools import DeclaredToolError, check_tools

SEED_RANGE = (-(2**63), 2**63 - 1)
"""OpenAI's seed is an int64; torch.Generator.manual_seed takes -2**63 .. 2**64-1 and raised (in the engine thread)
for 10**23. Outside int64: 400, param "seed"."""

MAX_STOPS = 4
"""OpenAI's limit on stop sequences. 95,000 of them in one body stalled the whole batch: each is looked for in each
row's text at every token, on the engine thread."""

MAX_STOP_CHARS = 256
"""Longest stop sequence, in characters: far above the stop sequences clients send (a newline, "User:", an end
marker), small enough that the per-token search (the new text plus a stop's length, inference/stops.py) stays tiny."""

RESPONSE_FORMATS = ("text", "json_object", "json_schema")
"""OpenAI's response_format types (only text is served: serve/service.py refuses the others as unsupported)."""


class FunctionCall(BaseModel):
    name: str
    arguments: str  # a JSON object, as text (OpenAI's convention)


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        """The content as one string (a list of text parts is joined; other part types are refused upstream)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") == "refusal" and self.role == "assistant" and isinstance(part.get("refusal"), str):
                parts.append(part["refusal"])  # OpenAI's assistant messages may carry refusal parts: their text
                continue
            if part.get("type") != "text":
                raise ValueError(f"content part of type {part.get('type')!r}: only text parts are supported")
            if not isinstance(part.get("text"), str):
                raise ValueError("a content part of type 'text' needs its text as a string in 'text'"
                                 + ("" if "text" in part else " (it has none)"))
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(BaseModel):
    """A chat request, typed as OpenAI types it: booleans take only JSON booleans (or null), integers only JSON
    integers (2.0 too is refused, as OpenAI refuses a decimal), numbers an integer or a decimal but no string or
    boolean; a wrong type is a 400 naming the field. Pydantic's lax mode took "stream": "yes" or 1 as true,
    "max_tokens": true as 1 and "2" as 2, and the extension ignore_eos, read from the extra fields with bool(),
    took "false" as true. Unknown fields are still accepted and ignored.

    An error's `param` is OpenAI's path (`messages[0].content`, `tools[1].function.parameters`): the field's
    location (serve/reading.py `param`), or the `param` in a custom error's context where a validator of a whole
    field or of the request finds the place inside it."""

    model_config = ConfigDict(extra="allow")

    model: StrictStr
    messages: list[Message] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: StrictFloat | None = Field(default=None, ge=0.0, le=2.0)  # below engine.GREEDY_BELOW (1e-5): greedy
    top_p: StrictFloat | None = Field(default=None, ge=0.0, le=1.0)  # OpenAI: 0..1; 0 keeps the most likely token
    stop: str | list[str] | None = None
    seed: StrictInt | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stream: StrictBool | None = False  # OpenAI's schema: boolean or null (clients that send unset fields send null)
    stream_options: dict[str, Any] | None = None
    n: StrictInt | None = Field(default=None, ge=1)  # more than 1: 400 unsupported_value (UNHONOURED)
    logprobs: StrictBool | None = None  # true: 400 unsupported_value (UNHONOURED)
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = Field(default=None, min_length=1)  # OpenAI: [] is a 400 empty_array
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None  # accepted, not applied (one call per answer)
    response_format: dict[str, Any] | None = None  # {"type": "text"}; others: 400 unsupported_value (UNHONOURED)
    presence_penalty: StrictFloat | None = Field(default=None, ge=-2.0, le=2.0)  # accepted, not applied
    frequency_penalty: StrictFloat | None = Field(default=None, ge=-2.0, le=2.0)  # (serve/service.py)
    user: StrictStr | None = None
    logit_bias: dict[str, Any] | None = None  # accepted, not applied (its shape is checked)
    ignore_eos: StrictBool | None = None  # vLLM's extension (benchmarks): decode max_tokens whatever the model says
    # OpenAI's parameters that would change the answer's shape: typed here, refused when set (UNHONOURED)
    modalities: list[Literal["text", "audio"]] | None = None
    audio: dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: StrictStr | dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    # OpenAI's parameters that do not change the answer: typed as OpenAI types them (400 otherwise), not applied
    metadata: dict[StrictStr, StrictStr] | None = None  # (nothing is stored; its bounds: _metadata_bounds)
    store: StrictBool | None = None
    service_tier: StrictStr | None = None
    reasoning_effort: StrictStr | None = None
    prediction: dict[str, Any] | None = None
    prompt_cache_key: StrictStr | None = None
    safety_identifier: StrictStr | None = None

    def unhonoured(self) -> tuple[str, str] | None:
        """The first parameter set to a value this server cannot honour, and why (UNHONOURED), or None."""
        for param, (cannot, why) in UNHONOURED.items():
            value = getattr(self, param)
            if value is not None and cannot(value):
                return param, why.format(value=value)
        return None

    @field_validator("messages")
    @classmethod
    def _a_conversation_openai_would_take(cls, messages: list[Message]) -> list[Message]:
        """The message sequence OpenAI takes (400 otherwise, naming the message): content is required, except
        an assistant's that carries tool calls (or a refusal), and a list of parts is not empty; every tool
        call of an assistant message is answered by a `tool` message (by its tool_call_id, ids unique) before
        the next message of another role, and every tool message answers such a call. These were answered: a
        call left unanswered, a tool message without an id, a user message without content; and tool_calls on a
        message that is not the assistant's (or a tool_call_id not on a tool message) were dropped unread."""
        pending: dict[str, int] = {}  # the open calls' ids -> the index of the assistant message that made them
        for i, message in enumerate(messages):
            if message.role != "tool" and pending:
                raise PydanticCustomError(
                    "tool_calls_unanswered", "messages[{at}]: the assistant message with tool_calls must be "
                    "followed by tool messages answering each tool_call_id; unanswered: {ids}",
                    {"at": next(iter(pending.values())), "ids": ", ".join(pending),
                     "param": f"messages[{next(iter(pending.values()))}].tool_calls"})
            if message.content is None and not (message.role == "assistant" and (
                    message.tool_calls or getattr(message, "refusal", None))):
                raise PydanticCustomError("missing", "messages[{i}].content is required for a message of role "
                                          "'{role}'", {"i": i, "role": message.role, "param": f"messages[{i}].content"})
            for field, role in (("tool_calls", "assistant"), ("tool_call_id", "tool")):  # set elsewhere: ignored
                if getattr(message, field) and message.role != role:
                    raise PydanticCustomError("misplaced", "messages[{i}].{field}: only a message of role '{role}' "
                                              "carries {field}, not one of role '{this}'", {"i": i, "field": field,
                                              "role": role, "this": message.role, "param": f"messages[{i}].{field}"})
            if isinstance(message.content, list) and not message.content:
                raise PydanticCustomError("empty_array", "messages[{i}].content is an empty array: send at least "
                                          "one part, or a string", {"i": i, "param": f"messages[{i}].content"})
            try:
                message.text()  # parts of other types than text, a text part without its text
            except ValueError as exc:
                raise PydanticCustomError("content_part", "messages[{i}].content: {why}",
                                          {"i": i, "why": str(exc), "param": f"messages[{i}].content"}) from None
            if message.role == "assistant" and message.tool_calls:
                ids = [call.id for call in message.tool_calls]
                if len(set(ids)) != len(ids):
                    raise PydanticCustomError("tool_call_ids", "messages[{i}].tool_calls: the ids are not unique",
                                              {"i": i, "param": f"messages[{i}].tool_calls"})
                pending = dict.fromkeys(ids, i)
            elif message.role == "tool":
                if message.tool_call_id is None:
                    raise PydanticCustomError("missing", "messages[{i}].tool_call_id is required for a message "
                                              "of role 'tool'", {"i": i, "param": f"messages[{i}].tool_call_id"})
                if pending.pop(message.tool_call_id, None) is None:
                    raise PydanticCustomError(
                        "tool_message_order", "messages[{i}]: a message of role 'tool' must answer a tool call of "
                        "the assistant message before it; no open call has the id {id}",
                        {"i": i, "id": repr(message.tool_call_id[:64]), "param": f"messages[{i}].tool_call_id"})
        if pending:
            at = next(iter(pending.values()))
            raise PydanticCustomError("tool_calls_unanswered", "messages[{at}]: the assistant message's tool calls "
                                      "need a tool message answering each; unanswered: {ids}",
                                      {"at": at, "ids": ", ".join(pending), "param": f"messages[{at}].tool_calls"})
        return messages

    @field_validator("logit_bias")
    @classmethod
    def _token_bias_map(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """OpenAI's shape, a map of token ids (as strings) to numbers in -100..100 (accepted, not applied)."""
        for key, bias in (value or {}).items():
            if not key.isdigit() or isinstance(bias, bool) or not isinstance(bias, (int, float)) \
                    or not -100 <= bias <= 100:
                raise PydanticCustomError("logit_bias", "maps token ids (strings of digits) to numbers from -100 to "
                                          "100; {key}: {bias} is not that",
                                          {"key": repr(key[:32]), "bias": repr(bias)[:32]})
        return value

    @field_validator("stream_options")
    @classmethod
    def _include_usage_is_a_boolean(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """stream_options.include_usage is read by truth value (serve/app.py): "no" would count as true. (On a
        request that does not stream, stream_options is ignored: api.openai.com refuses it, but clients that send
        their defaults on every request would break for nothing.)"""
        flag = (value or {}).get("include_usage")
        if flag is not None and not isinstance(flag, bool):
            raise PydanticCustomError("bool_type", "include_usage must be a boolean or null")
        return value

    @field_validator("tools")
    @classmethod
    def _tools_are_functions(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        """Each tool as OpenAI takes it (400 naming the place otherwise; serve/client_tools.py): a function of a
        name of OpenAI's characters, each name once, parameters a valid JSON Schema with local references only
        (nothing is ever fetched) and no reference cycle. A name that was a list crashed the tool matching."""
        try:
            check_tools(value or [])
        except DeclaredToolError as exc:
            raise PydanticCustomError("tool", "{why}", {"why": str(exc), "param": exc.param}) from None
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_bounds(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        """OpenAI's bounds: at most 16 pairs, keys of at most 64 characters, values of at most 512."""
        if value is not None and (len(value) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in value.items())):
            raise PydanticCustomError("metadata", "metadata takes at most 16 pairs of a key of at most 64 characters "
                                      "and a string value of at most 512")
        return value

    @field_validator("response_format")
    @classmethod
    def _response_format_shape(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """An object with a `type` of OpenAI's ("text", "json_object", "json_schema"); "text" alone is served."""
        if value is not None and value.get("type") not in RESPONSE_FORMATS:
            raise PydanticCustomError("response_format", "response_format.type must be one of {types}",
                                      {"types": ", ".join(map(repr, RESPONSE_FORMATS)),
                                       "param": "response_format.type"})
        return value

    @model_validator(mode="after")
    def _one_token_limit(self) -> "ChatRequest":
        """max_tokens (deprecated by OpenAI) and max_completion_tokens mean the same limit: both, with different
        values, are refused (max_completion_tokens silently won) rather than one picked."""
        if None not in (self.max_tokens, self.max_completion_tokens) and self.max_tokens != self.max_completion_tokens:
            raise PydanticCustomError("token_limits", "max_tokens ({a}) and max_completion_tokens ({b}) are both "
                                      "given and differ: send one (max_completion_tokens, OpenAI's current name)",
                                      {"a": self.max_tokens, "b": self.max_completion_tokens, "param": "max_tokens"})
        return self

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice_shape(cls, value: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        """'none', 'auto', 'required' or {"type": "function", "function": {"name": str}} (OpenAI's 400 otherwise;
        a `function` that was not an object crashed the request)."""
        if value is None or value in ("none", "auto", "required"):
            return value
        function = value.get("function") if isinstance(value, dict) else None
        if not (isinstance(value, dict) and value.get("type") == "function" and isinstance(function, dict)
                and isinstance(function.get("name"), str)):
            raise PydanticCustomError("tool_choice", "tool_choice must be 'none', 'auto', 'required' or "
                                      "{\"type\": \"function\", \"function\": {\"name\": ...}}")
        return value

    @field_validator("stop", mode="wrap")
    @classmethod
    def _bounded_stops(cls, value: Any, handler) -> str | list[str] | None:
        """At most MAX_STOPS stop sequences of at most MAX_STOP_CHARS characters (400, param "stop"). A wrong type
        is reported as "stop" too: the union's own errors are located at "stop.str" / "stop.list[str]", which the
        error's `param` would repeat."""
        try:
            stop = handler(value)
        except ValidationError:
            raise PydanticCustomError("stop_type", "must be a string, an array of strings or null") from None
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOPS:
            raise PydanticCustomError("stop_count", "at most {limit} stop sequences are allowed, got {count}",
                                      {"limit": MAX_STOPS, "count": len(stops)})
        longest = max(map(len, stops), default=0)
        if longest > MAX_STOP_CHARS:
            raise PydanticCustomError("stop_length", "a stop sequence may have at most {limit} characters, one "
                                      "has {length}", {"limit": MAX_STOP_CHARS, "length": longest})
        return stop

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


UNHONOURED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n": (lambda n: n > 1, "n={value} is not supported: this server answers one choice (send n: 1 or leave it out)"),
    "logprobs": (bool, "logprobs are not supported by this server (send logprobs: false or leave it out)"),
    "top_logprobs": (bool, "top_logprobs needs logprobs: true, and logprobs are not supported by this server "
                           "(leave top_logprobs out)"),
    "response_format": (lambda f: f.get("type") != "text", "response_format {value[type]!r} is not supported: this "
                        "server cannot constrain answers to JSON (leave response_format out, or send "
                        "{{\"type\": \"text\"}})"),
    "modalities": (lambda m: "audio" in m, "modalities {value}: this server answers text only (send [\"text\"] or "
                                           "leave modalities out)"),
    "audio": (lambda a: True, "audio output is not supported: this server answers text only (leave audio out)"),
    "functions": (lambda f: True, "functions is OpenAI's deprecated form of tools, not taken here: its answers "
                                  "would come as message.function_call, which this server does not send; declare "
                                  "them as tools (and function_call as tool_choice), whose calls come as tool_calls"),
    "function_call": (lambda c: True, "function_call is OpenAI's deprecated form of tool_choice, not taken here: "
                                      "send tool_choice (with tools)"),
    "web_search_options": (lambda w: True, "web search is not supported by this server (leave web_search_options "
                                           "out)"),
}
"""OpenAI's parameters whose meaning this server cannot honour, the one place that says which values: the value
is refused when `cannot(value)` (serve/service.py, 400 `unsupported_value` naming the parameter). Ignored, each
gave a 200 the client then failed on or misread: `chat.completions.parse` and LangChain's `with_structured_output`
(LengthFinishReasonError / ValidationError), logprobs None, one choice where several were read, no audio where
audio was asked, and a legacy `functions` client that never gets its `function_call` (vLLM does not translate
them either; translating only the request would give it tool_calls it does not read). Parameters that only tune
sampling or bookkeeping (penalties, logit_bias, metadata, store, service_tier, ...) are accepted, type-checked
as OpenAI types them, and not applied; unknown fields are ignored."""


def new_id(prefix: str = "chatcmpl") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


#: The longest error message sent: a message quotes the request (a model name, a tool result), and a 100,000-character
#: model name came back whole in its 404
MAX_MESSAGE = 1000


def shown(value: Any, limit: int = 100) -> str:
    """A client's value as an error message quotes it: at most `limit` characters, marked where cut."""
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def error_body(message: str, type_: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}, the message cut to MAX_MESSAGE; a lone
    surrogate quoted from the request is written as its escape (`\\ud800`): as text it cannot be encoded, and the
    error became a 500 (UnicodeEncodeError)."""
    return {"error": {"message": _encodable(shown(message, MAX_MESSAGE)), "type": type_,
                      "param": None if param is None else _encodable(param), "code": code}}


def _encodable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                   param: str | None = None, headers: dict[str, str] | None = None):
    """An HTTP error response in OpenAI's shape."""
    from starlette.responses import JSONResponse

    return JSONResponse(error_body(message, type_, code, param), status_code=status, headers=headers)
