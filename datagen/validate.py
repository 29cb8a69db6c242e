"""Check every output record against its format's JSON Schema (schemas/output.schema.json).

The hot path is the schema compiled into one Python predicate (`datagen.schemacheck`, which accepts
exactly what fastjsonschema accepts, ~2.5x faster); a failing record is re-checked with `jsonschema` to
name the JSON path at fault. Should the schema ever use a keyword that compiler lacks, fastjsonschema
(else jsonschema) does the hot path instead.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any, Callable

import jsonschema

from tasktune.datagen.schemacheck import Unsupported, compile_check
from tasktune import SCHEMAS
from tasktune.errors import SpecError

OUTPUT_SCHEMA = SCHEMAS / "output.schema.json"


def _inline(node: Any, definitions: dict[str, Any]) -> Any:
    """Replace every `{"$ref": "#/definitions/x"}` by x itself (the output schema is not recursive).

    fastjsonschema calls a function per $ref and formats the item's name for it even when the
    item is valid; inlined, the happy path is ~4x faster.
    """
    if isinstance(node, dict):
        ref = node.get("$ref", "")
        if ref.startswith("#/definitions/"):
            return _inline(definitions[ref.rsplit("/", 1)[1]], definitions)
        return {k: _inline(v, definitions) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, definitions) for v in node]
    return node


@cache
def format_schema(fmt: str) -> dict[str, Any]:
    """The self-contained (refs inlined) schema of one record of `fmt`."""
    schema = json.loads(OUTPUT_SCHEMA.read_text(encoding="utf-8"))
    definitions = schema["definitions"]
    if fmt not in definitions:
        raise SpecError(f"unknown output format {fmt!r} (choose from {', '.join(definitions)})")
    return {"$schema": schema["$schema"], **_inline(definitions[fmt], definitions)}


@cache
def checker(fmt: str) -> Callable[[Any], bool]:
    """`check(record) -> bool`: whether `record` satisfies the schema of `fmt` (compiled once)."""
    schema = format_schema(fmt)
    try:
        return compile_check(schema)
    except Unsupported:
        pass
    try:
        import fastjsonschema
    except ImportError:  # correct but ~20x slower
        return jsonschema.Draft7Validator(schema).is_valid
    validate = fastjsonschema.compile(schema)

    def check(record: Any) -> bool:
        try:
            validate(record)
        except fastjsonschema.JsonSchemaException:
            return False
        return True

    return check


def explain(record: Any, fmt: str) -> str:
    """`$.path: message` for the first schema error of `record` ('' when it is valid)."""
    error = jsonschema.exceptions.best_match(jsonschema.Draft7Validator(format_schema(fmt)).iter_errors(record))
    if error is None:
        return ""
    path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"{path}: {short_message(error)}"


def short_message(error: jsonschema.ValidationError, limit: int = 200) -> str:
    """A schema error's message with the value it quotes cut to `limit` characters: jsonschema quotes the whole
    value, so a data file given as a spec printed its 20,000 characters of records on one line."""
    text, quoted = error.message, repr(error.instance)
    if len(quoted) <= limit or quoted not in text:
        return text
    size = f"{len(error.instance):,} items" if isinstance(error.instance, (list, dict)) else f"{len(quoted):,} " \
                                                                                              "characters"
    return text.replace(quoted, f"{quoted[:limit]}... ({type(error.instance).__name__} of {size})")


def _holds(check: Callable[[Any], bool], record: Any) -> bool:
    try:
        return check(record)
    except Exception:
        return False


def validate_records(records: list[dict[str, Any]], fmt: str, where: str = "", start: int = 0) -> None:
    """Raise SpecError naming the record, JSON path and problem of the first invalid record.

    `start` is the index of `records[0]` in the whole file (for checks done chunk by chunk).
    """
    check = checker(fmt)
    try:
        if all(map(check, records)):
            return
    except Exception:  # (a checker only answers yes or no; anything else counts as a no)
        pass
    bad = next(((i, r) for i, r in enumerate(records, start) if not _holds(check, r)), None)
    if bad is None:
        return
    i, record = bad
    detail = explain(record, fmt) or "invalid"
    content = record.get("content", record.get("text", record.get("instruction", ""))) if isinstance(
        record, dict) else record
    raise SpecError(f"{where}record {i} ({fmt}) fails the output schema: {detail}; record content: {content!r}")
