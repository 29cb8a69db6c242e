"""Load a task spec: YAML -> JSON Schema check (errors name file, line and JSON path) -> `TaskSpec`.

Nothing is rendered here; `datagen.expand` compiles the templates. Pool files are read here,
relative to the spec's folder (paths escaping that folder are refused).

Longer than 300 lines because it is the spec's one owner: the typed records, the schema check with its
file/line/JSON-path locator and the pool reading all build one `TaskSpec`.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import unicodedata
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tasktune import SCHEMAS, files, yamlread
from tasktune.errors import SpecError

SPEC_SCHEMA = SCHEMAS / "spec.schema.json"
Scalar = str | int | float | bool
MAX_NODES = 1_000_000  # YAML nodes after alias expansion; a real spec has a few hundred
MAX_SPEC_BYTES = 4 << 20  # a spec file larger than this is refused, not read (a real spec is a few KiB)


@dataclass(frozen=True)
class SlotSpec:
    """One slot. kind: `pool` (values/file), `range` (inclusive ints), `choices` (weighted), `expr` (derived)."""

    name: str
    kind: str
    where: str
    values: tuple[Scalar, ...] = ()
    weights: tuple[float, ...] | None = None
    expr: str | None = None

    def domain(self) -> tuple[Scalar, ...] | None:
        """Every value the slot can take, or None when unknown (derived slots)."""
        return None if self.kind == "expr" else self.values


@dataclass(frozen=True)
class ContentSpec:
    """What the user says: a template, the slot values it implies (`fix`) and its weight."""

    text: str
    where: str
    fix: dict[str, Scalar] = field(default_factory=dict)
    weight: float = 1.0


@dataclass(frozen=True)
class CaseSpec:
    """One summary branch: the first case whose `when` holds (or has no `when`) gives the answer."""

    text: str
    where: str
    when: str | None = None
    when_where: str = ""


@dataclass(frozen=True)
class RouteSpec:
    """Which plain user text goes to a step (`tasktune serve`): a keyword (case-insensitive substring) or regex
    (`re.search`) hit, or `default` for text no step's rule claims."""

    where: str
    keywords: tuple[str, ...] = ()
    regex: tuple[str, ...] = ()
    default: bool = False


@dataclass(frozen=True)
class StepSpec:
    name: str
    pattern: str
    contents: tuple[ContentSpec, ...]
    cases: tuple[CaseSpec, ...]  # summary cases; empty for label steps
    where: str
    pattern_where: str
    label: str | None = None
    label_where: str = ""
    arguments: tuple[str, ...] = ()
    count: int | None = None
    share: float | None = None
    unique: bool = True
    spoken: bool = True
    route: RouteSpec | None = None


@dataclass(frozen=True)
class NoiseSpec:
    rate: float = 0.0
    ops: dict[str, float] = field(default_factory=lambda: {"mask": 1.0})
    mask_token: str = "[MASK]"
    insert_chars: str = ""  # empty: an insert repeats the current character (a stutter)
    splits: tuple[str, ...] = ("train",)


@dataclass(frozen=True)
class SplitSpec:
    strategy: str = "random"
    dev: float = 0.1
    slot: str | None = None


@dataclass(frozen=True)
class ChainSpec:
    steps: tuple[str, ...]
    count: int | None = None
    share: float | None = None


@dataclass(frozen=True)
class ActionSpec:
    """A function the assistant calls (an OpenAI tool in `tasktune serve`); it never changes the data.

    Its arguments are `step`'s `arguments`, parsed out of that step's answer; its result's `result_fields`
    (name -> JSON Schema of the value), with the call arguments named by `frame_arguments` (frame variable ->
    argument), fill the frame (pattern) of `result_step`."""

    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema of the arguments (type: object)
    step: str
    result_step: str
    result_fields: dict[str, dict[str, Any]]
    frame_arguments: dict[str, str]
    where: str


@dataclass(frozen=True)
class TaskSpec:
    name: str
    path: Path
    language: str
    n: int
    seed: int | None
    slots: dict[str, SlotSpec]
    steps: tuple[StepSpec, ...]
    noise: NoiseSpec
    split: SplitSpec
    chains: ChainSpec | None = None
    actions: tuple[ActionSpec, ...] = ()

    def step(self, name: str) -> StepSpec:
        """The step called `name` (KeyError if none)."""
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)


#: slot names a template could never read: Jinja's literals, its special names and the sandbox's globals
#: (schemas/spec.schema.json lists the same, plus `utterance`); such a slot was shadowed without a word
RESERVED = frozenset({"true", "false", "none", "True", "False", "None", "self", "loop", "caller", "varargs", "kwargs",
                      "range", "dict", "lipsum", "cycler", "joiner", "namespace"})

# JSON Schema's "integer" also takes an integral float (`seed: 1.0`); a spec's integers are ints
_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda checker, value: isinstance(value, int) and not isinstance(value, bool))
_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_TYPES)


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return _Validator(json.loads(SPEC_SCHEMA.read_text(encoding="utf-8")))


def _json_path(parts) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def _line_map(node: yaml.Node, prefix: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """JSON path (tuple) -> 1-based line of the YAML node, so errors can point into the file."""
    out = {} if out is None else out
    out[prefix] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            _line_map(value, prefix + (key.value,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            _line_map(value, prefix + (i,), out)
    return out


class _Locator:
    """Formats `file:line: $.json.path` for a path into the spec."""

    def __init__(self, path: Path, lines: dict[tuple, int]):
        self.path, self.lines = path, lines

    def __call__(self, *parts) -> str:
        probe = tuple(parts)
        while probe not in self.lines and probe:
            probe = probe[:-1]
        return f"{self.path}:{self.lines.get(probe, 1)}: {_json_path(parts)}"


def _expanded_size(root: yaml.Node, path: Path) -> int:
    """Nodes in `root` with every alias expanded (memoised: linear time), refusing alias bombs and cycles."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise SpecError(f"{path}:{node.start_mark.line + 1}: an alias refers to the node that contains it")
        active.add(key)
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            children = []
        total = 1 + sum(size(child) for child in children)
        active.discard(key)
        if total > MAX_NODES:
            raise SpecError(f"{path}:{node.start_mark.line + 1}: the spec expands to more than {MAX_NODES:,} "
                            "YAML nodes (aliases that repeat aliases?)")
        sizes[key] = total
        return total

    return size(root)


def _read_text(path: Path) -> str:
    """The spec file's text. A regular file only, read up to MAX_SPEC_BYTES: a FIFO would block forever and a
    device (/dev/zero) never end. A link to a spec is followed (the user named it), then the file is opened
    without following one."""
    try:
        data = files.read_small(os.path.realpath(path), limit=MAX_SPEC_BYTES)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise SpecError(f"{path}: cannot read spec: not a regular file (a FIFO, socket or device); give a "
                            "YAML file") from None
        if exc.errno == errno.EFBIG:
            raise SpecError(f"{path}: cannot read spec: larger than {MAX_SPEC_BYTES >> 20} MiB; a task spec is "
                            "a few KiB (put long value lists in pool files)") from None
        raise SpecError(f"{path}: cannot read spec: {exc.strerror or exc}") from None
    return data.decode("utf-8")


def _read_yaml(path: Path) -> tuple[Any, dict[tuple, int]]:
    try:
        text = _read_text(path)
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            _expanded_size(node, path)  # before anything walks the tree alias by alias
        data = yamlread.load_spec_text(text)  # duplicate keys refused (with their line); YAML 1.2 scalars
    except yaml.reader.ReaderError as exc:  # a character YAML refuses (NUL, other controls): no mark, a position
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - text.rfind("\n", 0, exc.position)
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        raise SpecError(f"{path}:{line}:{column}: invalid YAML: character U+{ord(char):04X} is not allowed in YAML "
                        f"text ({exc.reason})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise SpecError(f"{path}{line}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise SpecError(f"{path}: nested too deeply to be a task spec") from None
    return data, (_line_map(node) if node is not None else {})


MAX_POOL_BYTES = 256 << 20  # a pool file larger than this is refused, not read into memory


def _read_pool(spec_dir: Path, name: str, where: str) -> tuple[str, ...]:
    target = (spec_dir / name).resolve()
    if not target.is_relative_to(spec_dir.resolve()):
        raise SpecError(f"{where}: pool file {name!r} lies outside the spec's folder {spec_dir}")
    try:  # a regular file only: a FIFO or device could block or never end, and is never opened for reading
        text = files.read_small(target, limit=MAX_POOL_BYTES).decode("utf-8-sig")  # BOM dropped
    except OSError as exc:
        if exc.errno == 22:
            raise SpecError(f"{where}: pool file {target} is not a regular file (a FIFO, socket or device); "
                            "give a text file, one value a line") from None
        raise SpecError(f"{where}: cannot read pool file {target}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{where}: pool file {target} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    if "\x00" in text:
        raise SpecError(f"{where}: pool file {target}, line {text.count(chr(10), 0, text.index(chr(0))) + 1}: "
                        f"{_NUL_TEXT}{_NUL_FIX}")
    # one value a line: cut at "\n" only (splitlines() also cut at U+2028, NEL, form feed... inside a value)
    return tuple(s for s in (line.strip() for line in files.text_lines(text)) if s and not s.startswith("#"))


def _build_slot(name: str, raw: dict, spec_dir: Path, at: _Locator) -> SlotSpec:
    where = at("slots", name)
    if "expr" in raw:
        return SlotSpec(name, "expr", where, expr=raw["expr"])
    if "range" in raw:
        low, high = raw["range"]
        if low > high:
            raise SpecError(f"{where}.range: low {low} is above high {high}")
        _exact_in_json((low, high), f"{where}.range", "give a pool of the values as text instead")
        if high - low >= 1_000_000:
            raise SpecError(f"{where}.range: {high - low + 1} values; at most 1,000,000 (use an expr slot)")
        return SlotSpec(name, "range", where, values=tuple(range(low, high + 1)))
    if "choices" in raw:
        values, weights = tuple(raw["choices"]), raw.get("weights")
        if weights is not None:
            if len(weights) != len(values):
                raise SpecError(f"{where}.weights: {len(weights)} weights for {len(values)} choices")
            if sum(weights) <= 0:
                raise SpecError(f"{where}.weights: weights sum to 0")
            _finite_sum(weights, f"{where}.weights", "the weights")
        _no_lookalikes(values, f"{where}.choices: values")
        _exact_in_json(values, f"{where}.choices")
        return SlotSpec(name, "choices", where, values=values, weights=tuple(weights) if weights else None)
    values = tuple(raw["values"]) if "values" in raw else _read_pool(spec_dir, raw["file"], where)
    if not values:
        raise SpecError(f"{where}: empty pool (no values)")
    _exact_in_json(values, f"{where}.values")
    _no_lookalikes(values, f"{where}.values: values" if "values" in raw else
                   f"{where}: pool file {raw['file']}: values")
    return SlotSpec(name, "pool", where, values=tuple(dict.fromkeys(values)))


def _finite_sum(weights: list[float], where: str, what: str) -> None:
    """SpecError when relative weights add up past the largest float: the running total became inf, so every draw
    landed on the last one (`weights: [1e308, 1e308]` drew only the second choice, template or noise op)."""
    if not math.isfinite(sum(weights)):  # (the running total the draws bisect, as they add it up)
        listed = ", ".join(f"{w:g}" for w in weights[:4]) + (", ..." if len(weights) > 4 else "")
        raise SpecError(f"{where}: {what} add up to more than the largest float ({listed}), so draws would take only "
                        "the last; only their ratios count: scale them down")


#: the largest integer every JSON reader keeps exactly: JavaScript's numbers and pyarrow (datasets, LLaMA-Factory)
#: past int64 are doubles, so 9007199254740993 is read as ...992 (RFC 8259, section 6)
JSON_SAFE_INT = 2**53 - 1


def _exact_in_json(values: tuple[Scalar, ...], where: str, fix: str = "quote it to make it text") -> None:
    """SpecError for an integer slot value that JSON readers other than Python's would round (records' meta.slots
    and meta.arguments hold it as a number)."""
    for value in values:
        if type(value) is int and abs(value) > JSON_SAFE_INT:
            raise SpecError(f"{where}: {value} is beyond ±{JSON_SAFE_INT:,} (2**53 - 1), which JSON readers other "
                            "than Python's (JavaScript, pyarrow under `datasets` and LLaMA-Factory) read as a rounded "
                            f"float in meta.slots; {fix}")


def _no_lookalikes(values: tuple[Scalar, ...], where: str) -> None:
    """SpecError for two values of one slot that a reader takes for one: the same text once written (`1` and
    `'1'`), but for Unicode normal form (NFC 'é' and NFD 'e' + U+0301, as lists merged from macOS give) or
    whitespace at the ends (eval compares arguments stripped), or equal numbers of other types (`1`, `1.0`, `true`:
    the pool kept only the first without a word). Such values made records that differ only in invisible bytes: a
    `slot` split held one out while its twin trained, and uniqueness counted them twice. The same value given
    twice is still one value."""
    by_text: dict[str, Scalar] = {}
    by_value: dict[Scalar, Scalar] = {}
    seen: set[tuple[type, Scalar]] = set()
    for value in values:
        if (type(value), value) in seen:
            continue
        seen.add((type(value), value))
        text = unicodedata.normalize("NFC", str(value)).strip()
        other = by_text.get(text, by_value.get(value, _NONE))
        if other is not _NONE:
            tail = "records would differ only in bytes a reader does not see; keep one of them"
            if str(other) == str(value):
                why = "write the same text"
            elif unicodedata.normalize("NFC", str(other)) == unicodedata.normalize("NFC", str(value)):
                why = (f"are the same text in two Unicode normal forms (NFC and NFD: {_points(other)} vs "
                       f"{_points(value)})")
            elif text == unicodedata.normalize("NFC", str(other)).strip():
                why = "differ only in whitespace at the ends (eval compares arguments stripped)"
            else:
                why = f"are equal as {type(other).__name__} and {type(value).__name__}"
                tail = "the slot kept only the first; keep one of them, or quote them to make them text"
            raise SpecError(f"{where} {other!r} and {value!r} {why}: {tail}")
        by_text[text] = value
        by_value.setdefault(value, value)


_NONE = object()


def _points(value: Scalar) -> str:
    text = str(value)
    return " ".join(f"U+{ord(c):04X}" for c in text[:12]) + (" ..." if len(text) > 12 else "")


def _build_step(i: int, raw: dict, slots: dict[str, SlotSpec], at: _Locator) -> StepSpec:
    name = raw["name"]
    contents = []
    for j, item in enumerate(raw["contents"]):
        item = {"text": item} if isinstance(item, str) else item
        where = at("steps", i, "contents", j)
        for slot, value in item.get("fix", {}).items():
            if slot not in slots:
                raise SpecError(f"{where}.fix: unknown slot {slot!r} (declared: {', '.join(slots) or 'none'})")
            domain = slots[slot].domain()
            if domain is not None and value not in domain:
                raise SpecError(f"{where}.fix.{slot}: {value!r} is not a value of slot {slot!r}")
        contents.append(ContentSpec(item["text"], where, dict(item.get("fix", {})), item.get("weight", 1.0)))
    _finite_sum([c.weight for c in contents], at("steps", i, "contents"), "the contents' weights")
    summary = raw.get("summary")
    if isinstance(summary, str):
        cases = (CaseSpec(summary, at("steps", i, "summary")),)
    else:
        cases = tuple(
            CaseSpec(c["text"], at("steps", i, "summary", k, "text"), c.get("when"), at("steps", i, "summary", k, "when"))
            for k, c in enumerate(summary or ())
        )
    for arg in raw.get("arguments", ()):
        if arg not in slots:
            raise SpecError(f"{at('steps', i, 'arguments')}: unknown slot {arg!r}")
    route = None
    if "route" in raw:
        rule = raw["route"]
        for k, source in enumerate(rule.get("regex", ())):
            try:
                re.compile(source)
            except re.error as exc:
                raise SpecError(f"{at('steps', i, 'route', 'regex', k)}: not a regular expression ({exc})") from None
        route = RouteSpec(at("steps", i, "route"), tuple(rule.get("keywords", ())), tuple(rule.get("regex", ())),
                          rule.get("default", False))
    return StepSpec(
        name=name, pattern=raw.get("pattern", "{{ utterance }}"), contents=tuple(contents), cases=cases,
        where=at("steps", i), pattern_where=at("steps", i, "pattern"), label=raw.get("label"),
        label_where=at("steps", i, "label"), arguments=tuple(raw.get("arguments", ())), count=raw.get("count"),
        share=raw.get("share"), unique=raw.get("unique", True), spoken=raw.get("spoken", True), route=route,
    )


def _check_schema(schema: dict, where: str) -> None:
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        raise SpecError(f"{where}{_json_path(exc.absolute_path)[1:]}: not a JSON Schema: {exc.message}") from None


def _build_action(k: int, raw: dict, steps: dict[str, StepSpec], at: _Locator) -> ActionSpec:
    """An action, cross-checked: its steps exist, its parameters are the step's arguments, and every variable
    of the result step's frame is a result field or a frame argument."""
    where = at("actions", k)
    for key in ("step", "result_step"):
        if raw[key] not in steps:
            raise SpecError(f"{at('actions', k, key)}: unknown step {raw[key]!r} (steps: {', '.join(steps)})")
    step = steps[raw["step"]]
    if not step.arguments or step.label is not None:
        raise SpecError(f"{at('actions', k, 'step')}: step {step.name!r} declares no `arguments` to call with")
    params = raw["parameters"]
    _check_schema(params, at("actions", k, "parameters"))
    for name in params["properties"]:
        if name not in step.arguments:
            raise SpecError(f"{at('actions', k, 'parameters', 'properties', name)}: {name!r} is not an argument of "
                            f"step {step.name!r} (arguments: {', '.join(step.arguments)})")
    for name in step.arguments:
        if name not in params["properties"]:
            raise SpecError(f"{at('actions', k, 'parameters', 'properties')}: no parameter for argument {name!r} of "
                            f"step {step.name!r}")
    fields = raw["result_fields"]
    for name, schema in fields.items():
        _check_schema(schema, at("actions", k, "result_fields", name))
    frame_arguments = raw.get("frame_arguments", {})
    for variable, argument in frame_arguments.items():
        if argument not in step.arguments:
            raise SpecError(f"{at('actions', k, 'frame_arguments', variable)}: {argument!r} is not an argument of "
                            f"step {step.name!r} (arguments: {', '.join(step.arguments)})")
        if variable in fields:
            raise SpecError(f"{at('actions', k, 'frame_arguments', variable)}: {variable!r} is also a result field")
    result_step = steps[raw["result_step"]]
    from tasktune.datagen.render import Compiled  # (only specs with actions compile a frame here)

    unfilled = [v for v in Compiled(result_step.pattern, result_step.pattern_where).refs
                if v not in fields and v not in frame_arguments]
    if unfilled:
        raise SpecError(f"{where}: the frame of step {result_step.name!r} reads {unfilled[0]!r}, which is neither a "
                        "result field nor a frame argument (frame_arguments maps frame variables to arguments)")
    return ActionSpec(raw["name"], raw["description"], params, step.name, result_step.name, dict(fields),
                      dict(frame_arguments), where)


def _lone_surrogate(text: str) -> int | None:
    """The index of the first lone UTF-16 surrogate in `text` (YAML's `"\\ud800"` escape makes one), or None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


#: a NUL in a spec's text (YAML's "\0" escape; a raw one is refused by the YAML reader) or pool file: the generator
#: marks where the utterance and the arguments go with NUL-delimited sentinels, so a value `"\0utterance\0"` read as
#: a second utterance ("the pattern uses {{ utterance }} more than once"), and C-based readers end text at a NUL
_NUL_TEXT = "holds a NUL character (U+0000)"
_NUL_FIX = (", which tasktune keeps for its own markers (a value holding one read as the utterance's or an "
            "argument's place) and which C-based readers take for the end of the text; remove it")


def _check_tree(data: Any, at: _Locator) -> None:
    """One walk over the loaded spec, in document order, refusing what the schema cannot see: a NaN or ±inf
    (it passes every `minimum`/`maximum`, comparing false), a mapping key that is not text (`1:`, `null:`,
    `true:`: a slot of that name was dropped without a word), and any text, key or value, holding a lone
    surrogate (it cannot be written as UTF-8: `insert_chars: "\\ud800"` was a traceback in the writer). Then a
    slot named after something Jinja reads as its own."""
    stack: list[tuple[tuple, Any]] = [((), data)]
    while stack:
        here, node = stack.pop()
        if isinstance(node, str):
            bad = _lone_surrogate(node)
            if bad is not None:
                raise SpecError(f"{at(*here)}: holds invalid Unicode (a lone surrogate {node[bad]!a} at character "
                                f"{bad}), which cannot be written as UTF-8 text")
            if "\x00" in node:
                raise SpecError(f"{at(*here)}: {_NUL_TEXT} at character {node.index(chr(0))}{_NUL_FIX}")
        elif isinstance(node, float) and not math.isfinite(node):
            raise SpecError(f"{at(*here)}: {node} is not a finite number (NaN and infinities are not allowed)")
        elif isinstance(node, dict):
            for key in node:
                if not isinstance(key, str):
                    what = "slot name" if here == ("slots",) else "key"
                    spellings = (str(key), str(key).lower(), "null", "~", "")  # the line map's keys are YAML text
                    written = next((t for t in spellings if here + (t,) in at.lines), str(key))
                    raise SpecError(f"{at(*here, written)}: {what} {key!r} is not text ({type(key).__name__}); write "
                                    "a name, or quote it")
                bad = _lone_surrogate(key)
                if bad is not None:
                    raise SpecError(f"{at(*here, key)}: the key {key!a} holds invalid Unicode (a lone surrogate at "
                                    f"character {bad}), which cannot be written as UTF-8 text")
            stack.extend((here + (k,), v) for k, v in reversed(list(node.items())))
        elif isinstance(node, list):
            stack.extend((here + (i,), v) for i, v in reversed(list(enumerate(node))))
    slots = data.get("slots") if isinstance(data, dict) else None
    for name in slots if isinstance(slots, dict) else ():
        if name in RESERVED:
            raise SpecError(f"{at('slots', name)}: slot name {name!r} is reserved: in a template Jinja reads "
                            f"`{name}` as its own (a literal, a special name or a global), never as this slot; "
                            "rename it")


def parse_spec(data: Any, path: Path, lines: dict[tuple, int] | None = None) -> TaskSpec:
    """Check `data` (the parsed YAML) against the spec schema, then build a `TaskSpec`."""
    at = _Locator(path, lines or {})
    _check_tree(data, at)  # before the schema: NaN passes its bounds, a surrogate its string checks
    error = jsonschema.exceptions.best_match(_validator().iter_errors(data))
    if error is not None:
        from tasktune.datagen.validate import short_message

        raise SpecError(f"{at(*error.absolute_path)}: {short_message(error)}")
    slots = {name: _build_slot(name, raw, path.parent, at) for name, raw in (data.get("slots") or {}).items()}
    steps = tuple(_build_step(i, raw, slots, at) for i, raw in enumerate(data["steps"]))
    names = [s.name for s in steps]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise SpecError(f"{at('steps', i, 'name')}: duplicate step name {name!r}")
    noise_raw = data.get("noise") or {}
    noise = NoiseSpec(
        rate=noise_raw.get("rate", 0.05 if noise_raw else 0.0),
        ops=dict(noise_raw.get("ops", {"mask": 1.0})),
        mask_token=noise_raw.get("mask_token", "[MASK]"),
        insert_chars=noise_raw.get("insert_chars", ""),
        splits=tuple(noise_raw.get("splits", ["train"])),
    )
    if noise.rate > 0 and sum(noise.ops.values()) <= 0:
        raise SpecError(f"{at('noise', 'ops')}: op probabilities sum to 0")
    _finite_sum(list(noise.ops.values()), at("noise", "ops"), "the op probabilities")
    split_raw = data.get("split") or {}
    split = SplitSpec(split_raw.get("strategy", "random"), split_raw.get("dev", 0.1), split_raw.get("slot"))
    if split.slot is not None and split.slot not in slots:
        raise SpecError(f"{at('split', 'slot')}: unknown slot {split.slot!r}")
    chains = None
    if data.get("chains"):
        raw = data["chains"]
        for k, step in enumerate(raw["steps"]):
            if step not in names:
                raise SpecError(f"{at('chains', 'steps', k)}: unknown step {step!r} (steps: {', '.join(names)})")
        chains = ChainSpec(tuple(raw["steps"]), raw.get("count"), raw.get("share"))
    defaults = [i for i, s in enumerate(steps) if s.route is not None and s.route.default]
    if len(defaults) > 1:
        raise SpecError(f"{at('steps', defaults[1], 'route', 'default')}: step {steps[defaults[0]].name!r} is "
                        "already the default route (one step at most)")
    by_name = {s.name: s for s in steps}
    actions = tuple(_build_action(k, raw, by_name, at) for k, raw in enumerate(data.get("actions") or ()))
    seen: dict[str, int] = {}
    for k, action in enumerate(actions):
        if action.name in seen:
            raise SpecError(f"{at('actions', k, 'name')}: duplicate action name {action.name!r}")
        seen[action.name] = k
    return TaskSpec(
        name=data["name"], path=path, language=data.get("language", "zh"), n=data.get("n", 1000),
        seed=data.get("seed"), slots=slots, steps=steps, noise=noise, split=split, chains=chains, actions=actions,
    )


def builtin_specs() -> dict[str, Path]:
    """The specs shipped with tasktune, by name: every `templates/NAME/spec.yaml`."""
    from tasktune import TEMPLATES

    return {p.parent.name: p for p in sorted(TEMPLATES.glob("*/spec.yaml"))}


def resolve_spec(name_or_path: str | Path) -> Path:
    """A spec file path, or a built-in spec's name (`grid`, `smarthome`) -> its file. An existing path wins
    over a name; neither is a SpecError listing the built-in names."""
    if isinstance(name_or_path, str) and not name_or_path.strip() and not os.path.isfile(name_or_path):
        raise SpecError("SPEC is empty: give a task spec file (SPEC.yaml) or a built-in spec's name (built-in: "
                        f"{', '.join(builtin_specs()) or 'none'}; `tasktune specs` lists them)")
    path = Path(name_or_path)
    if path.exists() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path
    known = builtin_specs()
    if str(name_or_path) in known:
        return known[str(name_or_path)]
    raise SpecError(f"{name_or_path}: no such spec file, and no built-in spec of that name "
                    f"(built-in: {', '.join(known) or 'none'}; `tasktune specs` lists them)")


def load_spec(path: str | Path) -> TaskSpec:
    """Read and check a YAML task spec (a path, or a built-in spec's name). Raises `SpecError` naming file,
    line and JSON path."""
    path = resolve_spec(path)
    data, lines = _read_yaml(path)
    return parse_spec(data, path, lines)
