"""A chat request's body: read as JSON (serve/guard.py refused any other Content-Type with 415), checked for
what JSON parsers let through but nothing downstream can take (deep nesting, lone surrogates), validated into a
ChatRequest; and the `param` an error names."""

from __future__ import annotations

import json
import sys
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from tasktune.tuning.rows import SURROGATE

from .protocol import ChatRequest


async def chat_request(request: Request) -> ChatRequest:
    """The body as a ChatRequest. Its Content-Type is application/json: the guard (serve/guard.py) answers 415 to
    any other, since a form or text/plain body is what a page on another site can POST without a CORS preflight.
    Errors take the same path as FastAPI's own (RequestValidationError -> 400)."""
    raw = await request.body()
    try:
        # RFC 8259: JSON between systems is UTF-8, and a parser may ignore a byte order mark
        data = json_value(raw.decode("utf-8").removeprefix("\ufeff"))
    except UnicodeDecodeError as exc:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error", "ctx": {
            "error": f"the body is not UTF-8 (byte {raw[exc.start]:#04x} at offset {exc.start})"}}]) from None
    except JsonValueError as exc:  # valid JSON holding what nothing downstream can take: the field named
        raise RequestValidationError([{"type": "value_error", "loc": ("body", *exc.loc), "input": None,
                                       "msg": exc.reason if exc.loc else f"the body: {exc.reason}"}]) from None
    except ValueError as exc:  # not JSON
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error",
                                       "ctx": {"error": str(exc)}}]) from None
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


def json_value(text: str) -> Any:
    """JSON as this server reads it, the body and the JSON inside its strings (a tool result, a call's arguments):
    ValueError (saying what is wrong) for text that is not JSON, nests deeper than MAX_DEPTH, holds a lone
    surrogate, NaN or Infinity, or an integer longer than Python converts (4,300 digits). Inside the strings
    json.loads' RecursionError and ValueError came out as 500s."""
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as exc:
        if "integer string conversion" in str(exc):  # Python's text names sys.set_int_max_str_digits()
            raise ValueError(f"an integer has more than {sys.get_int_max_str_digits()} digits") from None
        raise
    _check_json(data)
    return data


def _no_constant(name: str) -> Any:
    """NaN, Infinity and -Infinity are not JSON (RFC 8259), though Python's json reads them: a `temperature: NaN`
    was refused as 'should be less than or equal to 2'; it is now what it is, a body that is not JSON."""
    raise ValueError(f"{name} is not a JSON number")


class JsonValueError(ValueError):
    """JSON that parses but that this server refuses (a lone surrogate, nesting past MAX_DEPTH), at `loc` (keys and
    indexes, as pydantic's locations: the body's error names it as `param`, `messages[0].content`); its text, for
    JSON inside a string (a tool result), says where as before (`messages.0.content: a string holds ...`)."""

    def __init__(self, loc: tuple, reason: str, text: str):
        super().__init__(text)
        self.loc, self.reason = loc, reason


#: How deep a request's JSON may nest (OpenAI's bodies need ~6 levels; Python's recursion limit is ~1000, and
#: pydantic and json recurse per level)
MAX_DEPTH = 64


def _check_json(data: Any) -> None:
    """Refuse (ValueError) JSON nested deeper than MAX_DEPTH or holding a lone UTF-16 surrogate in a string or key
    (`"\\ud83d"`: a client that cut an emoji in half; Python keeps it in a str, which then fails in the tokenizer,
    the spec's frames and any error message that echoes it). Iterative, so depth itself cannot overflow here."""
    stack: list[tuple[Any, int, tuple]] = [(data, 1, ())]
    while stack:
        value, depth, loc = stack.pop()
        if depth > MAX_DEPTH:  # `param` names the outermost levels (the field), not all 64
            raise JsonValueError(loc[:4], f"nested more than {MAX_DEPTH} levels deep",
                                 f"nested more than {MAX_DEPTH} levels deep at {_place(loc)}")
        if isinstance(value, str):
            if SURROGATE.search(value):
                reason = "a string holds a lone UTF-16 surrogate (not valid Unicode)"
                raise JsonValueError(loc, reason, f"{_place(loc)}: {reason}")
        elif isinstance(value, dict):
            for key, item in value.items():  # a key before its value: a value's place names its key
                if SURROGATE.search(key):
                    reason = "a key holds a lone UTF-16 surrogate (not valid Unicode)"
                    raise JsonValueError(loc, reason, f"{_place(loc)}: {reason}")
                stack.append((item, depth + 1, (*loc, key)))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, (*loc, i)) for i, item in enumerate(value))


def _place(loc: tuple) -> str:
    """A place in the body as the JSON errors inside strings name it: `messages.0.content` (or "the body")."""
    return ".".join(map(str, loc)) or "the body"


#: pydantic's location parts that name a union member's type, not a field ("stop.str", "messages.0.content.str")
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


#: pydantic's error types -> OpenAI's `code` for the same mistake (what api.openai.com answers: "invalid_type" for
#: "max_tokens": "10", "integer_above_max_value" for n=130, "missing_required_parameter", "unknown_parameter", ...)
_CODES = {"missing": "missing_required_parameter", "extra_forbidden": "unknown_parameter",
          "literal_error": "invalid_value", "enum": "invalid_value", "value_error": "invalid_value",
          "assertion_error": "invalid_value", "empty_array": "empty_array", "string_too_long": "string_above_max_length",
          "string_too_short": "string_below_min_length", "too_long": "array_above_max_length",
          "json_invalid": None}
_BOUNDS = {"greater_than": "below_min_value", "greater_than_equal": "below_min_value",
           "less_than": "above_max_value", "less_than_equal": "above_max_value"}


def code(error: dict) -> str | None:
    """OpenAI's `code` for one pydantic error: invalid_type, integer_above_max_value, decimal_below_min_value,
    missing_required_parameter, unknown_parameter, empty_array, invalid_value, ... (None where OpenAI sends none)."""
    kind = error.get("type", "")
    if kind in _CODES:
        return _CODES[kind]
    if kind in _BOUNDS:
        bound = next(iter(error.get("ctx", {}).values()), None)  # as the field declares it: 2.0 for temperature
        number = "decimal" if isinstance(bound, float) else "integer"
        return f"{number}_{_BOUNDS[kind]}"
    if kind == "too_short":
        return "empty_array" if not error.get("input") else "array_below_min_length"
    if kind.endswith(("_type", "_parsing")) or kind in ("is_instance_of", "union_tag_invalid"):
        return "invalid_type"
    return "invalid_value"


#: JSON's names for Python's types, for "expected an object, got an array"
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "an integer", float: "a number",
               bool: "a boolean", type(None): "null"}


def message(error: dict) -> str:
    """One pydantic error's message as a client reads it: "expected an object, got an array" where pydantic
    said "Input should be a valid dictionary or instance of ChatRequest" (a class name of this server's)."""
    if error.get("type") in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected an object, got {_JSON_TYPES.get(type(error.get('input')), 'another type')}"
    return error.get("msg", "invalid request")


def param(error: dict) -> str:
    """OpenAI's `param` for one pydantic error: the `param` a custom error names in its context (the place inside
    a field a validator found), else the location's path in OpenAI's style, `messages[0].content` (without "body"
    and type tags; pydantic's own is `messages.0.content`)."""
    given = (error.get("ctx") or {}).get("param")
    if isinstance(given, str):
        return given
    out = ""
    for part in error.get("loc", ()):
        if part == "body" or (isinstance(part, str) and (part in _TYPE_TAGS or "[" in part)):
            continue
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out
