"""The spec's steps as OpenAI tools, model-free: recognise framed prompts, frame and route plain text, parse tool
calls out of a step's answer, frame a function's result as the result step's prompt.

`TaskTools.from_spec(spec)` builds everything once:

- **frames** (`match`): a step's pattern (Jinja) is turned into regexes. Its *control variables* (what its
  `{% if %}` tests read) must be slots with a finite domain; for every combination of their values the pattern
  is rendered (sandboxed, `datagen.render.Compiled`) with every other `{{ }}` output replaced by a sentinel, and
  the rendered text becomes a regex: literal text escaped, each sentinel a group (a named group for a plain
  variable, a back-reference where it repeats; one of the slot's values for a finite slot; `.+?` else; `.*?`
  for `utterance`, which noise may edit). So `match(content)` holds exactly when `content` is the pattern
  rendered for some values of its control variables, with some text in place of each other output. A pattern
  with other statements (`{% for %}`, `{% set %}`), or whose tests read a variable without a finite domain, gets
  no matcher (`TaskTools.unmatched` says why); `frame()` still renders it.
- **tool calls** (`tool_calls`): the answer patterns eval uses (`datagen.answers.build_pattern`, a regex per
  summary case with one named group per argument) are built once per case of the action's step, from a render
  with placeholder values; an answer that fully matches one (stripped, as `tuning.evaluation.metrics` does) gives the
  arguments, typed back to the slot's values and validated against the action's `parameters`.
- **result frames** (`result_prompt`): the result's fields (checked against `result_fields`) and the call's
  arguments (by `frame_arguments`) fill the result step's pattern, as the data generator fills it from slots.

Errors a client can cause (an unknown tool or step, a bad function result) are `ToolError` (a `DataError` and a
`ValueError`; the server answers 400); spec problems are `SpecError`.

Longer than 300 lines because recognising a step's frame, parsing its answer into tool calls and framing a tool
result all derive regexes from the same compiled spec patterns.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

import jsonschema
from jinja2 import Environment, TemplateSyntaxError, nodes

from tasktune.datagen.answers import build_pattern
from tasktune.datagen.render import Compiled
from tasktune.datagen.spec import ActionSpec, StepSpec, TaskSpec, load_spec
from tasktune.errors import DataError, SpecError

from .client_tools import error_text

UTTERANCE = "utterance"
MAX_COMBINATIONS = 4096  # control-variable value combinations a frame may have
_PARSER = Environment()  # parses only (same syntax as the sandbox); every render goes through render.Compiled
_INT = re.compile(r"-?[0-9]+")


class ToolError(DataError, ValueError):
    """A tool call or result the spec cannot take (unknown tool/step, missing or mistyped result field)."""


@dataclass(frozen=True)
class StepMatch:
    """A framed prompt recognised: its step and the frame's variables (what the regex captured, typed back to
    slot values where possible, plus the control variables' values when the frame fixes them)."""

    step: str
    variables: dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    """A call of action `name` with JSON-serialisable `arguments`."""

    name: str
    arguments: dict[str, Any]

    def openai(self, call_id: str) -> dict[str, Any]:
        """The OpenAI `tool_calls` entry (arguments as a JSON string, not ASCII-escaped)."""
        return {"id": call_id, "type": "function",
                "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)}}


@dataclass(frozen=True)
class _FrameRegex:
    regex: re.Pattern[str]
    fixed: dict[str, Any]  # control-variable values every combination of this regex shares
    literal: int  # characters of literal text: the more, the more specific


@dataclass(frozen=True)
class _AnswerRegex:
    regex: re.Pattern[str]
    arguments: tuple[str, ...]


class _Unmatchable(Exception):
    """Why a step's frame gets no matcher."""


def _names(node: nodes.Node) -> set[str]:
    found = {n.name for n in node.find_all(nodes.Name) if n.ctx == "load"}
    return found | ({node.name} if isinstance(node, nodes.Name) and node.ctx == "load" else set())


def _statements(body: list[nodes.Node]):
    """Every statement node of a template body, depth first, refusing what a frame regex cannot invert."""
    for node in body:
        if isinstance(node, nodes.Output):
            yield node
        elif isinstance(node, nodes.If):
            yield node
            for branch in (node, *node.elif_):
                yield from _statements(branch.body)
            yield from _statements(node.else_)
        else:
            raise _Unmatchable(f"the pattern uses {{% {type(node).__name__.lower()} %}}, which match() cannot invert")


def _value_regex(values: tuple) -> str:
    texts = sorted({str(v) for v in values}, key=len, reverse=True)
    return "|".join(map(re.escape, texts))


class _Frame:
    """One step's frame: its renderer and its regexes (or why it has none)."""

    def __init__(self, spec: TaskSpec, step: StepSpec):
        self.step = step
        self.template = Compiled(step.pattern, step.pattern_where)
        try:
            self.regexes = self._regexes(spec)
            self.why_not = ""
        except _Unmatchable as exc:
            self.regexes, self.why_not = [], f"{step.pattern_where}: {exc}"

    def _regexes(self, spec: TaskSpec) -> list[_FrameRegex]:
        try:
            tree = _PARSER.parse(self.step.pattern)
        except TemplateSyntaxError as exc:  # (the spec's loader would have refused it first)
            raise _Unmatchable(f"broken Jinja: {exc.message}") from None
        statements = list(_statements(tree.body))
        control = set().union(*(_names(s.test) for s in statements if isinstance(s, nodes.If)),
                              *(_names(e.test) for s in statements if isinstance(s, nodes.If) for e in s.elif_))
        domains = {}
        for name in sorted(control):
            slot = spec.slots.get(name)
            domain = slot.domain() if slot is not None else None
            if domain is None:
                raise _Unmatchable(f"its {{% if %}} tests read {name!r}, which has no finite set of values")
            domains[name] = domain
        holes: dict[str, str | None] = {}  # sentinel -> the variable it prints (None: an expression)
        for output in (s for s in statements if isinstance(s, nodes.Output)):
            for k, child in enumerate(output.nodes):
                if isinstance(child, nodes.TemplateData) or _names(child) <= control:  # (constants stay)
                    continue
                sentinel = f"\x00hole{len(holes)}\x00"
                holes[sentinel] = child.name if isinstance(child, nodes.Name) else None
                output.nodes[k] = nodes.Const(sentinel, lineno=child.lineno)
        renderer = Compiled(self.step.pattern, self.step.pattern_where, tree=tree)
        combos = [dict(zip(domains, values)) for values in itertools.product(*domains.values())]
        if len(combos) > MAX_COMBINATIONS:
            raise _Unmatchable(f"its {{% if %}} tests read {len(combos):,} value combinations "
                               f"(at most {MAX_COMBINATIONS:,})")
        by_text: dict[str, list[dict]] = {}
        for combo in combos:
            try:
                text = renderer.uncached(combo)
            except SpecError:
                continue  # (a combination the frame cannot render is one the data never has)
            by_text.setdefault(text, []).append(combo)
        if not by_text:
            raise _Unmatchable("it renders for no combination of its control variables' values")
        split = re.compile("(" + "|".join(map(re.escape, holes)) + ")") if holes else None
        out = []
        for text, group in by_text.items():
            fixed = {name: group[0][name] for name in domains if all(c[name] == group[0][name] for c in group)}
            pieces = split.split(text) if split else [text]
            out.append(_FrameRegex(re.compile(self._regex(pieces, holes, spec), re.DOTALL), fixed,
                                   sum(len(p) for p in pieces if p not in holes)))
        return out

    @staticmethod
    def _regex(pieces: list[str], holes: dict[str, str | None], spec: TaskSpec) -> str:
        seen: set[str] = set()
        out = []
        for piece in pieces:
            if piece not in holes:
                out.append(re.escape(piece))
                continue
            name = holes[piece]
            slot = spec.slots.get(name) if name else None
            if name is None:
                out.append("(?:.+?)")
            elif name in seen:
                out.append(f"(?P={name})")
            else:
                seen.add(name)
                domain = slot.domain() if slot is not None else None
                body = ".*?" if name == UTTERANCE else _value_regex(domain) if domain else ".+?"
                out.append(f"(?P<{name}>{body})")
        return "".join(out)


def _typed(spec: TaskSpec, name: str, text: str, schema: Mapping[str, Any] | None = None) -> Any:
    """A captured text as the value the data has: the slot value it spells, else a number where the parameter's
    schema (or, without one, the text's own form) says so, else the text."""
    slot = spec.slots.get(name)
    domain = slot.domain() if slot is not None else None
    for value in domain or ():
        if str(value) == text:
            return value
    kind = (schema or {}).get("type")
    try:
        if kind == "integer" or (schema is None and name != UTTERANCE and domain is None and _INT.fullmatch(text)):
            return int(text)
        if kind == "number":
            return float(text) if not _INT.fullmatch(text) else int(text)
    except ValueError:
        pass
    if kind == "boolean" and text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


class TaskTools:
    """The spec's frames, routes and actions (see the module docstring)."""

    def __init__(self, spec: TaskSpec):
        self.spec = spec
        self._frames = {step.name: _Frame(spec, step) for step in spec.steps}
        self.unmatched = {name: f.why_not for name, f in self._frames.items() if f.why_not}
        self._actions = {a.name: a for a in spec.actions}
        self._answers = {a.step: self._answer_regexes(spec.step(a.step), a) for a in spec.actions}
        self._spoken = {a.step: _spoken_arguments(spec.step(a.step)) for a in spec.actions}
        self._param_validators = {a.name: jsonschema.Draft202012Validator(a.parameters) for a in spec.actions}
        self._field_validators = {a.name: {f: jsonschema.Draft202012Validator(s) for f, s in a.result_fields.items()}
                                  for a in spec.actions}
        self._routes = [(s.name, s.route, [re.compile(r) for r in s.route.regex])
                        for s in spec.steps if s.route is not None]

    @classmethod
    def from_spec(cls, spec: TaskSpec | str) -> TaskTools:
        """From a loaded spec, a spec path or a built-in spec's name."""
        return cls(spec if isinstance(spec, TaskSpec) else load_spec(spec))

    # -- frames -----------------------------------------------------------------------------------------

    def match(self, content: str) -> StepMatch | None:
        """The step whose frame `content` is (the most specific, on a tie the first in spec order), or None."""
        best: tuple[int, str, _FrameRegex, re.Match] | None = None
        for name, frame in self._frames.items():
            for candidate in frame.regexes:
                found = candidate.regex.fullmatch(content)
                if found and (best is None or candidate.literal > best[0]):
                    best = (candidate.literal, name, candidate, found)
        if best is None:
            return None
        _, name, candidate, found = best
        variables = {k: _typed(self.spec, k, v) for k, v in found.groupdict().items()}
        return StepMatch(name, {**candidate.fixed, **variables})

    def frame(self, step: str, **variables: Any) -> str:
        """Step `step`'s pattern rendered with `variables` (e.g. `frame("arguments", utterance=text)`)."""
        template = self._frame(step).template
        missing = [r for r in template.refs if r not in variables]
        if missing:
            raise ToolError(f"step {step!r}: its frame needs {', '.join(map(repr, missing))}")
        try:
            return template.uncached(variables)  # (user text: nothing to memoise)
        except SpecError as exc:
            raise ToolError(f"step {step!r}: cannot frame {variables}: {exc}") from None

    def route(self, text: str) -> str | None:
        """The step plain user `text` goes to: the first step (spec order) whose keyword or regex hits, else the
        `default` step, else None."""
        folded = text.casefold()
        for name, rule, regexes in self._routes:
            if any(k.casefold() in folded for k in rule.keywords) or any(r.search(text) for r in regexes):
                return name
        return next((name for name, rule, _ in self._routes if rule.default), None)

    def has_step(self, step: object) -> bool:
        """Whether the spec has a step of that name."""
        return isinstance(step, str) and step in self._frames

    def _frame(self, step: str) -> _Frame:
        if step not in self._frames:
            raise ToolError(f"unknown step {step!r} (steps: {', '.join(self._frames)})")
        return self._frames[step]

    # -- actions ----------------------------------------------------------------------------------------

    def tools(self) -> list[dict[str, Any]]:
        """The OpenAI `tools` entries of the spec's actions."""
        return [{"type": "function", "function": {"name": a.name, "description": a.description,
                                                  "parameters": json.loads(json.dumps(a.parameters))}}
                for a in self.spec.actions]

    def action(self, name: str) -> ActionSpec:
        if name not in self._actions:
            raise ToolError(f"unknown tool {name!r} (tools: {', '.join(self._actions) or 'none'})")
        return self._actions[name]

    def _answer_regexes(self, step: StepSpec, action: ActionSpec) -> list[_AnswerRegex]:
        """One regex per summary case of `step` whose answer names every argument as it is (not computed)."""
        out = []
        for k, case in enumerate(step.cases):
            compiled = Compiled(case.text, case.where)
            names = (*step.arguments, *(r for r in compiled.refs if r not in step.arguments))
            placeholders = {n: f"\x01{i}\x01" for i, n in enumerate(names)}
            try:
                answer = compiled.uncached(placeholders)
                pattern, general = build_pattern(compiled, placeholders, names, answer, case.where)
            except SpecError:
                continue  # (a case that computes with an argument: its answers cannot be read back)
            if general:
                out.append(_AnswerRegex(re.compile(pattern, re.DOTALL), step.arguments))
        if not out:
            raise SpecError(f"{action.where}: no answer of step {step.name!r} names its arguments so that they can "
                            "be read back (each must appear as it is, e.g. {{ place }})")
        return out

    def parse_arguments(self, step: str, answer: str) -> dict[str, str] | None:
        """The argument texts `answer` names (the first case pattern it fully matches), or None."""
        text = answer.strip()
        for candidate in self._answers.get(step, ()):
            found = candidate.regex.fullmatch(text)
            if found:
                return {a: found.group(a) for a in candidate.arguments}
        return None

    def tool_calls(self, step: str, answer: str, request: str | None = None) -> list[ToolCall]:
        """The calls `answer` (the tuned model's answer for `step`) asks for: one per action of `step` whose
        parameters the parsed arguments satisfy; none when the answer does not parse. With `request` (the text the
        answer was given for), none either when an argument every request of the step speaks (the grid's place) is
        not said in it (`said`): a model asked something else ("您好,请简单自我介绍一下", routed to the arguments
        step) invents one, and no action may run on a place nobody named."""
        texts = self.parse_arguments(step, answer)
        if texts is None:
            return []
        if request is not None:
            found = self.match(request.strip())  # a framed request: what the user said is its `utterance`
            spoken = str(found.variables.get("utterance", request)) if found is not None else request
            mask = self.spec.noise.mask_token if self.spec.noise else None
            if not all(said(texts[a], spoken, mask) for a in self._spoken.get(step, ())):
                return []
        calls = []
        for action in self.spec.actions:
            if action.step != step:
                continue
            props = action.parameters["properties"]
            arguments = {a: _typed(self.spec, a, t, props[a]) for a, t in texts.items()}
            if self._param_validators[action.name].is_valid(arguments):
                calls.append(ToolCall(action.name, arguments))
        return calls

    def argument_error(self, name: str, arguments: Any) -> str | None:
        """Why `arguments` (a client's call of tool `name`) do not satisfy its parameters' JSON Schema (None: they
        do), as jsonschema says it, with the argument's path."""
        error = jsonschema.exceptions.best_match(self._param_validators[self.action(name).name].iter_errors(arguments))
        return None if error is None else error_text(error)

    def result_prompt(self, call: ToolCall, result: Any) -> str:
        """The result step's frame for `result` (a function's return value) of `call`, as the data frames it."""
        action = self.action(call.name)
        if not isinstance(result, Mapping):
            raise ToolError(f"tool {action.name!r}: the result must be an object with fields "
                            f"{', '.join(action.result_fields)}, not {type(result).__name__}")
        values: dict[str, Any] = {}
        for field, validator in self._field_validators[action.name].items():
            if field not in result:
                raise ToolError(f"tool {action.name!r}: the result lacks field {field!r} "
                                f"(fields: {', '.join(action.result_fields)})")
            value = result[field]
            error = jsonschema.exceptions.best_match(validator.iter_errors(value))
            if error is not None:
                raise ToolError(f"tool {action.name!r}: result field {field!r}: {error.message}")
            if isinstance(value, float) and value.is_integer() and validator.schema.get("type") == "integer":
                value = int(value)  # (47.0 is a JSON Schema integer; the frame writes 47, as the data does)
            values[field] = value
        for variable, argument in action.frame_arguments.items():
            if argument not in call.arguments:
                raise ToolError(f"tool {action.name!r}: the call lacks argument {argument!r}")
            values[variable] = call.arguments[argument]
        try:
            return self._frame(action.result_step).template.uncached(values)
        except SpecError as exc:
            raise ToolError(f"tool {action.name!r}: cannot frame the result {dict(result)}: {exc}") from None


def _spoken_arguments(step: StepSpec) -> tuple[str, ...]:
    """The arguments of `step` that every request carries in its own words (a `{{ name }}` slot of each content
    template), as against those a request may imply (`fix`: the grid's check type; "it is cold, warm it up" names
    no heater)."""
    return tuple(a for a in step.arguments
                 if all(re.search(r"\{\{-?\s*" + re.escape(a) + r"\b", c.text) for c in step.contents))


def said(value: str, text: str, mask: str | None = None) -> bool:
    """Whether `value` is said somewhere in `text` as speech recognition may have written it: an edit distance of
    `value` against the best stretch of `text` (Sellers' approximate matching) of at most half its length for
    Chinese (a 2-character place with one character deleted still counts), under a third for other text (letters
    say less each). The spec's mask token in place of a character, or a character that sounds the same (pinyin
    without tones: 洞萤 for 东营), costs half an edit: "济[MASK]" says 济南, but neither a lone mask nor one
    homophone names a place ("潍[MASK]" is not 平阴, 请 is not 青岛)."""
    want, heard = _units(str(value).strip().lower(), None), _units(text.lower(), mask)
    if not want:
        return False
    sound = _sound_of({u for u in want + heard if u is not _MASK})
    previous = [0] * (len(heard) + 1)  # a match may start anywhere in `text`: row 0 costs nothing
    for i, unit in enumerate(want, 1):
        current = [i] + [0] * len(heard)
        for j, other in enumerate(heard, 1):
            cost = 0 if other == unit else 0.5 if other is _MASK or sound.get(other, 1) == sound.get(unit, 2) else 1
            current[j] = min(previous[j - 1] + cost, previous[j] + 1, current[j - 1] + 1)
        previous = current
    chinese = any(unit in sound for unit in want)
    return min(previous) <= (len(want) / 2 if chinese else (len(want) - 1) / 3)


_MASK = object()


def _units(text: str, mask: str | None) -> list:
    """`text` as characters, each mask token one unit (`_MASK`)."""
    parts = text.split(mask.lower()) if mask else [text]
    units: list = []
    for k, part in enumerate(parts):
        if k:
            units.append(_MASK)
        units.extend(part)
    return units


def _sound_of(chars: set) -> dict[str, str]:
    """Each Chinese character's pinyin without tones (others: themselves)."""
    from pypinyin import lazy_pinyin

    chars = sorted(c for c in chars if "\u4e00" <= c <= "\u9fff")
    return dict(zip(chars, lazy_pinyin(chars)))
