"""The tools a request declares itself (`tools`): OpenAI's rules for them, and the model's arguments held to them.

- Shape (400 naming the place): `{"type": "function", "function": {...}}`; a name of OpenAI's characters
  (`^[a-zA-Z0-9_-]{1,64}$`: "a b" was taken), each name once (two tools of one name: which one a call means is
  unknown); `description` a string, `strict` a boolean, `parameters` a valid JSON Schema.
- References in `parameters`: only local ones (`#...`), each resolvable, and none that comes back to its own
  schema without reading into the value (`{"$ref": "#"}` at the top, or two `$defs` that point at each other
  through `allOf`): such a schema validates nothing, it only recurses. A `$ref` to a URL (or any other document)
  is refused, and the validators below use a registry that refuses every retrieval, so no schema of a client's
  ever makes the server fetch anything (jsonschema without a registry fetched remote references with urllib).
  Recursion through a value (`properties.children.items: {"$ref": "#"}`, a tree) is fine: it ends with the value.
- The model's arguments against `parameters` (`arguments_error`): the error as serve/tools.py's `argument_error`
  words it for the spec's own schemas (`path: message`). A client's schema is evaluated under a budget: at most
  MAX_STEPS keyword evaluations (an acyclic `$defs` chain where each refers twice to the next doubles the work at
  every level) and `pattern` through the `regex` module with a deadline (a backtracking pattern such as `(a+)+$`
  on a model's answer blocked the event loop for good with `re`).
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable, Iterator

import jsonschema
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012, specification_with

NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
"""OpenAI's rule for a function's name."""

MAX_STEPS = 20_000
"""Keyword evaluations one validation of a client's schema may take (the grid's own schema takes ~10)."""

PATTERN_SECONDS = 0.25
"""The time all `pattern` matches of one validation may take together."""

IN_PLACE = ("allOf", "anyOf", "oneOf", "not", "if", "then", "else", "dependentSchemas")
"""Keywords whose subschemas apply to the same value (so a reference cycle through them never ends)."""

DATA = frozenset({"enum", "const", "default", "examples"})
"""Keywords whose values are data, not schemas (not searched for references)."""


class DeclaredToolError(ValueError):
    """A declared tool OpenAI would refuse: the message, and where (`param`, OpenAI's path)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def _refuse(uri: str) -> Resource:
    raise LookupError(f"{uri}: this server never retrieves schemas")


NO_RETRIEVAL = Registry(retrieve=_refuse)
"""A registry that refuses every retrieval (referencing wraps the refusal as Unretrievable)."""


def check_tools(tools: list[dict[str, Any]]) -> None:
    """Raise DeclaredToolError for the first tool OpenAI would refuse (see the module docstring)."""
    seen: dict[str, int] = {}
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise DeclaredToolError(f'tools[{i}] must be {{"type": "function", "function": {{...}}}}', f"tools[{i}]")
        name = function.get("name")
        where = f"tools[{i}].function"
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise DeclaredToolError(f"{where}.name must be 1 to 64 letters, digits, underscores or dashes "
                                    f"(^[a-zA-Z0-9_-]{{1,64}}$)" + (f", not {name[:80]!r}" if isinstance(name, str)
                                                                    else ""), f"{where}.name")
        if name in seen:
            raise DeclaredToolError(f"{where}.name: {name!r} is declared twice (tools[{seen[name]}] and tools[{i}]); "
                                    f"each tool needs a name of its own", f"{where}.name")
        seen[name] = i
        for field, kind, what in (("description", str, "a string"), ("parameters", dict, "a JSON object"),
                                  ("strict", bool, "a boolean")):
            if function.get(field) is not None and not isinstance(function[field], kind):
                raise DeclaredToolError(f"{where}.{field} must be {what}", f"{where}.{field}")
        if function.get("parameters") is not None:
            _check_schema(function["parameters"], f"{where}.parameters")


def _check_schema(schema: dict[str, Any], where: str) -> None:
    """A valid JSON Schema (the draft its `$schema` names, else 2020-12, as OpenAI's function schemas) whose
    references are local, resolvable and free of in-place cycles."""
    try:
        _validator_class(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise DeclaredToolError(f"{where} is not a valid JSON Schema: {_shown(exc.message)}", where) from None
    why = _reference_problem(schema)
    if why is not None:
        raise DeclaredToolError(f"{where}: {why}", where)


def _validator_class(schema: Any) -> type:
    return jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator)


def _reference_problem(schema: dict[str, Any]) -> str | None:
    """Why the schema's references cannot be used (None: they can): one that is not local, one that resolves to
    nothing, or a cycle of references through keywords that apply to the same value."""
    spec = specification_with(schema.get("$schema", ""), default=DRAFT202012) \
        if isinstance(schema.get("$schema"), str) else DRAFT202012
    resolver = NO_RETRIEVAL.resolver_with_root(spec.create_resource(schema))
    nodes = list(_schemas(schema, resolver, spec))
    place = {id(node): path for node, path, _ in nodes}
    edges: dict[int, list[int]] = {}
    for node, path, scope in nodes:
        targets = []
        for key in ("$ref", "$dynamicRef", "$recursiveRef"):
            ref = node.get(key)
            if not isinstance(ref, str):
                continue
            if not ref.startswith("#"):
                return (f"{key} {_shown(ref)!r} at {path or '/'} refers to another document: only references "
                        f"inside the schema (#...) are taken, and nothing is fetched")
            try:
                target = scope.lookup(ref).contents
            except Unresolvable:
                return f"{key} {_shown(ref)!r} at {path or '/'} refers to nothing in the schema"
            if isinstance(target, dict):
                targets.append(id(target))
        targets += [id(child) for child in _in_place(node)]
        edges[id(node)] = targets
    cycle = _cycle(edges)
    if cycle is not None:
        return (f"the schema at {place.get(cycle, '?') or '/'} refers back to itself without reading into the value "
                f"(a reference cycle: validating it would never end)")
    return None


def _schemas(schema: Any, resolver, spec) -> Iterator[tuple[dict[str, Any], str, Any]]:
    """Every object in the schema (what may be a subschema; data keywords skipped), with its JSON pointer and the
    resolver of its scope (a nested `$id` starts a scope of its own). Iterative: depth costs no recursion."""
    stack = [(schema, "", resolver)]
    while stack:
        node, path, scope = stack.pop()
        if isinstance(node, list):
            stack.extend((item, f"{path}/{k}", scope) for k, item in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        if path and isinstance(node.get("$id"), str):
            scope = scope.in_subresource(spec.create_resource(node))
        yield node, path, scope
        stack.extend((value, f"{path}/{key}", scope) for key, value in node.items()
                     if key not in DATA and isinstance(value, (dict, list)))


def _in_place(node: dict[str, Any]) -> list[dict[str, Any]]:
    """The subschemas of `node` that apply to the same value."""
    out = []
    for key in IN_PLACE:
        value = node.get(key)
        if key == "dependentSchemas" and isinstance(value, dict):
            value = list(value.values())
        out += [v for v in value if isinstance(v, dict)] if isinstance(value, list) else \
            [value] if isinstance(value, dict) else []
    return out


def _cycle(edges: dict[int, list[int]]) -> int | None:
    """A node on a cycle of `edges`, or None (iterative depth-first search)."""
    state: dict[int, int] = {}  # 1: on the current path, 2: done
    for start in edges:
        if start in state:
            continue
        state[start] = 1
        stack = [(start, iter(edges.get(start, ())))]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
            elif state.get(child) == 1:
                return child
            elif child not in state:
                state[child] = 1
                stack.append((child, iter(edges.get(child, ()))))
    return None


def arguments_error(schema: dict[str, Any] | None, arguments: Any) -> str | None:
    """Why `arguments` (the model's, for a tool the client declared) do not satisfy the tool's `parameters`
    (None: they do, or it declares none), as `error_text` words it."""
    if schema is None:
        return None
    validator = _budgeted(_validator_class(schema))(schema, registry=NO_RETRIEVAL)
    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
    except _OverBudget as exc:
        return str(exc)
    except (Unresolvable, RecursionError) as exc:  # (jsonschema wraps its resolution errors as Unresolvable)
        return f"the schema cannot be evaluated: {_shown(str(exc))}"
    return None if error is None else error_text(error)


def error_text(error: jsonschema.ValidationError) -> str:
    """A validation error as the tool errors word it: `path: message` (the argument's path, `a.b[0]`)."""
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
    return f"{where}: {error.message}" if where else error.message


class _OverBudget(Exception):
    """A client's schema took more than its budget (MAX_STEPS evaluations, PATTERN_SECONDS of matching)."""


def _budgeted(cls: type) -> type:
    """`cls` with every keyword counted against MAX_STEPS and `pattern` matched by `regex` under a deadline."""
    steps, deadline = [0], time.monotonic() + PATTERN_SECONDS

    def counted(keyword: Callable) -> Callable:
        def run(validator, value, instance, schema):
            steps[0] += 1
            if steps[0] > MAX_STEPS:
                raise _OverBudget(f"the schema takes more than {MAX_STEPS} evaluations for these arguments")
            return keyword(validator, value, instance, schema)
        return run

    def pattern(validator, value, instance, schema):
        if not validator.is_type(instance, "string"):
            return
        if not _search(value, instance, deadline):
            yield jsonschema.ValidationError(f"{instance!r} does not match {value!r}")

    keywords = {name: counted(fn) for name, fn in cls.VALIDATORS.items()}
    keywords["pattern"] = counted(pattern)
    return jsonschema.validators.extend(cls, keywords)


def _search(pattern: str, text: str, deadline: float) -> bool:
    import regex

    left = deadline - time.monotonic()
    try:
        if left <= 0:
            raise TimeoutError
        return regex.search(pattern, text, timeout=left) is not None
    except TimeoutError:
        raise _OverBudget(f"the schema's patterns take more than {PATTERN_SECONDS:g} s to match these "
                          f"arguments") from None
    except regex.error as exc:
        raise _OverBudget(f"pattern {_shown(pattern)!r} is not a regular expression this server can match: "
                          f"{exc}") from None


def _shown(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"
