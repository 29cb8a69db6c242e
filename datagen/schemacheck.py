"""A JSON Schema (the keywords schemas/output.schema.json uses) compiled into one Python predicate.

`compile_check(schema)` returns `check(instance) -> bool`: True exactly when fastjsonschema's validator of
the same schema accepts the instance (its type rules: an array is a list or a tuple, an integer may be an
integral float, a bool is neither an integer nor a number; a `pattern`'s `$` is the end of the text). It
only answers yes or no, ~2.5x faster than fastjsonschema on datagen's records: the whole schema becomes
one function (no call per node, no copy of each object's key set, no per-node error bookkeeping).
`datagen.validate` asks jsonschema for the path and message of a record it refuses.

The code is generated from our own schema file (trusted input; names and constants go in through `repr`
or the function's namespace, never pasted as text). A keyword not handled here raises `Unsupported` at
compile time, so a schema change cannot be silently ignored: `datagen.validate` then uses fastjsonschema.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Callable

#: keywords that only annotate (ignored); every other keyword must be one of _HANDLED
_ANNOTATIONS = frozenset({"$schema", "$id", "$comment", "title", "description", "default", "examples"})
_HANDLED = frozenset({"type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems",
                      "minLength", "maxLength", "pattern", "enum", "const", "minimum", "maximum"})
_SCALAR = frozenset({"string", "integer", "number", "boolean"})
_TYPE_TESTS = {
    "string": "isinstance({v}, str)",
    "integer": "((isinstance({v}, int) and not isinstance({v}, bool)) or (isinstance({v}, float) and {v}.is_integer()))",
    "number": "(isinstance({v}, (int, float, Decimal)) and not isinstance({v}, bool))",
    "boolean": "isinstance({v}, bool)",
    "object": "isinstance({v}, dict)",
    "array": "isinstance({v}, (list, tuple))",
    "null": "{v} is None",
}
_DOLLAR = re.compile(r"(?<!\\)\$")
_REMEMBERED = 4096  # strings remembered per `pattern` as matching


class Unsupported(ValueError):
    """The schema uses a keyword (or a form of one) that this compiler does not implement."""


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality (for enum/const): 1 == 1.0 but True != 1; arrays and objects element by element."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    numbers = (int, float, Decimal)
    if isinstance(a, numbers) and isinstance(b, numbers):
        return a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    return a is None and b is None


class _Writer:
    """Collects the generated lines and the constants they refer to (by name, in the namespace)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, Any] = {"Decimal": Decimal, "json_equal": json_equal, "_MISSING": object()}
        self.counter = 0

    def fresh(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}{self.counter}"

    def const(self, value: Any) -> str:
        name = self.fresh("C")
        self.names[name] = value
        return name

    def line(self, depth: int, text: str) -> None:
        self.lines.append("    " * depth + text)

    def fail_unless(self, depth: int, test: str) -> None:
        self.line(depth, f"if not ({test}): return False")


def _emit(w: _Writer, schema: Any, v: str, depth: int) -> None:
    """Lines that `return False` unless the value in variable `v` satisfies `schema`."""
    if schema is True or schema == {}:
        return
    if schema is False:
        w.line(depth, "return False")
        return
    if not isinstance(schema, dict):
        raise Unsupported(f"schema {schema!r}")
    unknown = set(schema) - _HANDLED - _ANNOTATIONS
    if unknown:
        raise Unsupported(f"keyword {sorted(unknown)[0]!r}")
    types = schema.get("type")
    names = [types] if isinstance(types, str) else list(types) if types is not None else None
    if names is not None:
        if any(t not in _TYPE_TESTS for t in names):
            raise Unsupported(f"type {types!r}")
        if set(names) == _SCALAR:  # a bool is an int
            w.fail_unless(depth, f"isinstance({v}, (str, int, float, Decimal))")
        else:
            w.fail_unless(depth, " or ".join(_TYPE_TESTS[t].format(v=v) for t in names))
    only = names[0] if names is not None and len(names) == 1 else None  # the one type `v` is known to have

    if "enum" in schema:
        options = schema["enum"]
        if options and all(isinstance(o, str) for o in options):
            w.fail_unless(depth, f"isinstance({v}, str) and {v} in {w.const(frozenset(options))}")
        else:
            w.fail_unless(depth, f"any(json_equal({v}, o) for o in {w.const(tuple(options))})")
    if "const" in schema:
        value = schema["const"]
        if value is True or value is False or value is None:
            w.fail_unless(depth, f"{v} is {value!r}")
        else:
            w.fail_unless(depth, f"json_equal({v}, {w.const(value)})")

    def guarded(kind: str, keywords: set[str]) -> int | None:
        """The depth to write `kind`'s keyword checks at (under an isinstance guard unless `v` is known)."""
        if not keywords & set(schema):
            return None
        if only == kind or (kind == "number" and only == "integer"):
            return depth
        if only is not None:  # another type: these keywords never apply
            return None
        w.line(depth, f"if {_TYPE_TESTS[kind].format(v=v)}:")
        w.line(depth + 1, "pass")
        return depth + 1

    at = guarded("string", {"minLength", "maxLength", "pattern"})
    if at is not None:
        if "minLength" in schema:
            w.fail_unless(at, f"len({v}) >= {int(schema['minLength'])}")
        if "maxLength" in schema:
            w.fail_unless(at, f"len({v}) <= {int(schema['maxLength'])}")
        if "pattern" in schema:
            # a regex search per string, unless this string matched before (a few thousand remembered: such
            # fields repeat, e.g. a record's template name)
            search = re.compile(_DOLLAR.sub(r"\\Z", schema["pattern"])).search
            seen = w.const(set())
            w.line(at, f"if {v} not in {seen}:")
            w.fail_unless(at + 1, f"{w.const(search)}({v}) is not None")
            w.line(at + 1, f"if type({v}) is str and len({seen}) < {_REMEMBERED}: {seen}.add({v})")

    at = guarded("number", {"minimum", "maximum"})
    if at is not None:
        if "minimum" in schema:
            w.fail_unless(at, f"{v} >= {w.const(schema['minimum'])}")
        if "maximum" in schema:
            w.fail_unless(at, f"{v} <= {w.const(schema['maximum'])}")

    at = guarded("object", {"properties", "required", "additionalProperties"})
    if at is not None:
        _emit_object(w, schema, v, at)

    at = guarded("array", {"items", "minItems", "maxItems"})
    if at is not None:
        _emit_array(w, schema, v, at)


def _emit_object(w: _Writer, schema: dict, v: str, depth: int) -> None:
    props: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", ()))
    extra = schema.get("additionalProperties", True)
    # presence by `get` (a key set comparison costs ~3x a look-up); a closed object (additionalProperties
    # false) has no other key when its size equals the number of its declared properties found
    closed = extra is False
    found = w.fresh("n")
    for name in sorted(required - set(props)):  # required but not declared: must be there, is then an extra key
        w.fail_unless(depth, f"{name!r} in {v}")
        if closed:
            w.line(depth, "return False")
            return
    if closed:
        w.line(depth, f"{found} = {len(required & set(props))}")
    for name, sub in props.items():
        x = w.fresh("v")
        w.line(depth, f"{x} = {v}.get({name!r}, _MISSING)")
        if name in required:
            w.line(depth, f"if {x} is _MISSING: return False")
            _emit(w, sub, x, depth)
        else:
            w.line(depth, f"if {x} is not _MISSING:")
            w.line(depth + 1, f"{found} += 1" if closed else "pass")
            _emit(w, sub, x, depth + 1)
    if closed:
        w.fail_unless(depth, f"len({v}) == {found}")
    if extra is not True and extra is not False and extra != {}:
        x = w.fresh("v")
        if props:
            key = w.fresh("key")
            w.line(depth, f"for {key}, {x} in {v}.items():")
            w.line(depth + 1, f"if {key} in {w.const(frozenset(props))}: continue")
            _emit(w, extra, x, depth + 1)
        elif set(extra) == {"type"} and _plain_types(extra["type"]):
            # every value of a plain type (`type(x) in ...`, one C call for all values), else the full check
            w.line(depth, f"if not {w.const(_plain_types(extra['type']))}.issuperset(map(type, {v}.values())):")
            w.line(depth + 1, f"for {x} in {v}.values():")
            _emit(w, extra, x, depth + 2)
        else:
            w.line(depth, f"for {x} in {v}.values():")
            _emit(w, extra, x, depth + 1)


def _plain_types(types: str | list[str]) -> frozenset[type] | None:
    """The exact Python types that surely satisfy `types` (a value of another type gets the full check)."""
    names = {types} if isinstance(types, str) else set(types)
    exact = {"string": {str}, "integer": {int}, "number": {int, float}, "boolean": {bool}, "object": {dict},
             "array": {list, tuple}, "null": {type(None)}}
    if not names <= set(exact):
        return None
    return frozenset().union(*(exact[n] for n in names))  # (exact types: a bool is not an int here)


def _emit_array(w: _Writer, schema: dict, v: str, depth: int) -> None:
    if "minItems" in schema:
        w.fail_unless(depth, f"len({v}) >= {int(schema['minItems'])}")
    if "maxItems" in schema:
        w.fail_unless(depth, f"len({v}) <= {int(schema['maxItems'])}")
    items = schema.get("items")
    if isinstance(items, list):
        raise Unsupported("the tuple form of `items`")
    if items is not None and items is not True and items != {}:
        x = w.fresh("v")
        w.line(depth, f"for {x} in {v}:")
        _emit(w, items, x, depth + 1)


def compile_check(schema: Any) -> Callable[[Any], bool]:
    """`check(instance) -> bool` for `schema` (a dict or a boolean schema). Raises `Unsupported`."""
    w = _Writer()
    _emit(w, schema, "v0", 1)
    source = "def check(v0):\n" + "\n".join(w.lines + ["    return True"]) + "\n"
    namespace = dict(w.names)
    exec(compile(source, "<datagen.schemacheck>", "exec"), namespace)  # noqa: S102 (generated from our schema)
    check = namespace["check"]
    check.source = source  # for debugging / tests
    return check
