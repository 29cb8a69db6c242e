"""Expand a `TaskSpec` into clean `Example`s: pick a content template, fill slots, render frame/content/answer.

Counts per step come from `count`/`share`/an even split of the rest of N; uniqueness is by
(prompt, answer) text; asking for more unique examples than combinations exist is an error
when the number is known, a warning when sampling stalls.

Longer than 300 lines because it holds the three expansion modes (independent steps, fixed chains, sampled chains)
that share one count plan and one uniqueness rule; split apart they would pass that state around.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import random
import secrets
from dataclasses import dataclass
from sys import getsizeof
from typing import Any, Callable

from tasktune.datagen.answers import build_pattern, recovers
from tasktune.datagen.budget import TextMemory
from tasktune.datagen.render import Compiled, getter
from tasktune.datagen.slots import SlotSampler, Unsatisfiable
from tasktune.datagen.spec import StepSpec, TaskSpec
from tasktune.errors import SpecError

UTTERANCE = "utterance"
# markers rendered in place of the utterance / an answer no case gives: NUL-delimited, with a token drawn once per
# process (never written out, so the files do not depend on it) that no template can spell: a pattern printing
# '\x00utterance\x00' itself read as a second {{ utterance }}
_TOKEN = secrets.token_hex(8)
_SENTINEL = f"\x00utterance-{_TOKEN}\x00"
_NO_CASE = f"\x00no case-{_TOKEN}\x00"
_STALL_LIMIT = 2000  # consecutive duplicates before a step is declared exhausted


@dataclass(slots=True)
class Example:
    """One clean example; `noise` spans are filled by `datagen.noise` (offsets within `utterance`)."""

    step: str
    template: str
    prefix: str
    utterance: str
    suffix: str
    summary: str
    slots: dict[str, Any]
    arguments: dict[str, Any] | None = None
    answer_pattern: str | None = None
    history: list[list[str]] | None = None
    label: bool = False
    spoken: bool = True
    chain: tuple[str, ...] | None = None
    noise: list[dict] | tuple = ()  # (a list once noised)
    key: tuple[str, str] = ("", "")  # the clean (content, summary), for dedup and split

    @property
    def content(self) -> str:
        return self.prefix + self.utterance + self.suffix


class StepPlan:
    """A step with every template compiled once and checked against the declared slots."""

    def __init__(self, step: StepSpec, sampler: SlotSampler, pieces: dict | None = None):
        """`pieces`: template pieces shared with the other steps' plans (see `Compiled`)."""
        self.step, self.sampler = step, sampler
        slots = set(sampler.slots)
        pieces = {} if pieces is None else pieces
        template = functools.partial(Compiled, pieces=pieces)
        self.pattern = template(step.pattern, step.pattern_where)
        self.pattern.check_refs(slots | {UTTERANCE})
        if UTTERANCE not in self.pattern.refs and any(c.text.strip() for c in step.contents):
            # the content would be glued to the pattern's end ("fixed" + "hi x" -> "fixedhi x")
            raise SpecError(f"{step.pattern_where}: the pattern has no {{{{ utterance }}}}, so the step's contents "
                            f"have no place in it; put {{{{ utterance }}}} where the spoken text goes (or leave contents "
                            f"[\"\"])")
        self.contents = [template(c.text, c.where) for c in step.contents]
        whens = [Compiled(c.when, c.when_where, "expr") if c.when else None for c in step.cases]
        self.cases = [template(c.text, c.where) for c in step.cases]
        self.label = template(step.label, step.label_where) if step.label is not None else None
        for compiled in [*self.contents, *self.cases, *(w for w in whens if w), *([self.label] if self.label else [])]:
            compiled.check_refs(slots)
        # all `when`s in one template that prints the index of the first case that holds
        if any(w is None for w in whens[:-1]):
            k = whens.index(None)
            raise SpecError(f"{step.cases[k].where}: only the last summary case may lack `when` (later cases never apply)")
        self.selector = None
        if whens and (len(whens) > 1 or whens[0] is not None):
            branches = "".join(
                ("{% if " if k == 0 else "{% elif ") + f"({w.source}) %}}{k}" if w else f"{{% else %}}{k}"
                for k, w in enumerate(whens)
            )
            else_ = "" if whens[-1] is None else "{% else %}-1"
            self.selector = template(branches + else_ + "{% endif %}", f"{step.where}.summary")
        # ... and all cases in one template that renders the answer directly (one render, not two)
        self.answer = None
        if self.selector is not None:
            merged = "".join(
                (("{% if " if k == 0 else "{% elif ") + f"({w.source}) %}}" if w else "{% else %}") + c.source
                for k, (w, c) in enumerate(zip(whens, self.cases))
            )
            else_ = "" if whens[-1] is None else "{% else %}" + _NO_CASE
            self.answer = template(merged + else_ + "{% endif %}", f"{step.where}.summary")
        shared = set(self.pattern.refs) - {UTTERANCE}
        shared |= set(itertools.chain.from_iterable(c.refs for c in self.cases))
        shared |= set(itertools.chain.from_iterable(w.refs for w in whens if w))
        shared |= set(self.label.refs if self.label else ()) | set(step.arguments)
        self.needs = [frozenset(shared | set(c.refs) | set(spec.fix)) for c, spec in zip(self.contents, step.contents)]
        self.orders = [sampler.order(need) for need in self.needs]
        self.draw_plans = [sampler.compile(order) for order in self.orders]
        self.cum_weights = list(itertools.accumulate(c.weight for c in step.contents))
        self.bounds = [sampler.size(o, c.fix) for o, c in zip(self.orders, step.contents)]
        self._patterns: dict[tuple, str] = {}
        # the texts depend only on the slots templates read, not on intermediate derived slots
        self._keys = [getter(tuple(sorted(need))) for need in self.needs]
        self.names = [f"{step.name}/{i}" for i in range(len(step.contents))]
        self.spoken = step.spoken and UTTERANCE in self.pattern.refs
        self._made: list[dict[Any, tuple]] = [{} for _ in step.contents]  # per template: slot values -> texts
        self._name, self._labelled = step.name, self.label is not None
        # a template that reads every slot of the texts key is rendered only when `_made` misses, on a new
        # combination: its own memo would never hit (so it is skipped); one that reads fewer keeps its memo
        self._pattern, self._answer, self._label = (self._cached(t) for t in (self.pattern, self.answer, self.label))
        self._cases = [self._cached(c) for c in self.cases]
        self._arguments = step.arguments if step.arguments and self.label is None else ()
        self.memory = TextMemory(0)  # (expand() gives all plans one, for the whole set)

    def _cached(self, template: Compiled | None) -> Callable[[dict[str, Any]], Any] | None:
        if template is None:
            return None
        reads = set(template.refs)
        return template.uncached if all(need <= reads for need in self.needs) else template

    def frame(self, values: dict[str, Any]) -> tuple[str, str]:
        values[UTTERANCE] = _SENTINEL
        text = self._pattern(values)
        del values[UTTERANCE]
        if text.count(_SENTINEL) > 1:
            raise SpecError(f"{self.step.pattern_where}: the pattern uses {{{{ utterance }}}} more than once")
        prefix, _, suffix = text.partition(_SENTINEL)
        return prefix, suffix

    def case(self, values: dict[str, Any]) -> int:
        if self.selector is None:
            return 0
        index = int(self.selector(values))
        if index < 0:
            raise SpecError(f"{self.step.where}.summary: no case holds for slots {values}")
        return index

    def answer_pattern(self, index: int, values: dict[str, Any], answer: str) -> str:
        """A regex matching this answer with one named group per argument (cached per shape)."""
        args = self.step.arguments
        case = self.cases[index]
        key = (index, *[values[r] for r in case.refs if r not in args])
        pattern = self._patterns.get(key)
        # a shape's pattern holds for values like the first's: one holding its own separators (or empty) does not
        if pattern is not None and recovers(pattern, answer, values, args):
            return pattern
        pattern, general = build_pattern(case, values, args, answer, self.step.where)
        if general and key not in self._patterns:  # holds for any argument values: reuse it
            self._patterns[key] = pattern
        return pattern

    def render(self, index: int, values: dict[str, Any]) -> tuple[str, str, str, str, str | None]:
        """(prefix, utterance, suffix, answer, answer_pattern) for content template `index`."""
        utterance = self.contents[index](values)
        prefix, suffix = self.frame(values)
        pattern = None
        if self.label is not None:
            summary = self._label(values)
        elif self.step.arguments:  # the case index is needed for the pattern
            case = self.case(values)
            summary = self._cases[case](values)
            pattern = self.answer_pattern(case, values, summary)
        elif self.answer is not None:
            summary = self._answer(values)
            if _NO_CASE in summary:
                raise SpecError(f"{self.step.where}.summary: no case holds for slots {values}")
        else:
            summary = self._cases[0](values)
        return prefix, utterance, suffix, summary, pattern

    def texts(self, index: int, values: dict[str, Any]) -> tuple:
        """(prefix, utterance, suffix, answer, answer_pattern, (content, answer)) of content template `index`.

        Every text is a pure function of (template, the slots its templates read): each combination is
        rendered once; records that share it share these (immutable) strings and the key tuple.
        """
        made = self._made[index]
        key = self._keys[index](values)
        texts = made.get(key)
        if texts is None:
            prefix, utterance, suffix, summary, pattern = self.render(index, values)
            content = prefix + utterance + suffix
            answer = ("label", self.step.label_where) if self.label else ("summary", f"{self.step.where}.summary")
            for (what, where), text in ((("content", self.step.contents[index].where), content), (answer, summary)):
                if not text or text.isspace():  # an empty prompt or answer: nothing to train on (`train` refuses it)
                    raise SpecError(f"{where}: template {self.names[index]} gives an empty {what} ({text!r}) for "
                                    f"slots {values}; every record needs text on both sides")
                if "\x00" in text:  # (a spec's text holds none: a template made it, e.g. '\x00' or '%c' % 0)
                    if what == "content" and "\x00" not in utterance:
                        where = self.step.pattern_where  # (the frame made it)
                    raise SpecError(f"{where}: template {self.names[index]} gives a {what} holding a NUL character "
                                    f"(U+0000) for slots {values}: C-based readers end text there, and tasktune marks "
                                    "its own places with it; remove it")
            texts = made[key] = (prefix, utterance, suffix, summary, pattern, (content, summary))
            self.memory.bytes += sum(map(getsizeof, (prefix, utterance, suffix, summary, content)))
        return texts

    def make(self, index: int, values: dict[str, Any]) -> Example:
        """The example of content template `index` for these slot values (kept as its `slots`, not copied)."""
        prefix, utterance, suffix, summary, pattern, clean = self.texts(index, values)
        args = self._arguments
        # (all fields positionally: a dataclass __init__ with keywords costs ~3x as much)
        return Example(self._name, self.names[index], prefix, utterance, suffix, summary, values,
                       {a: values[a] for a in args} if args else None, pattern, None, self._labelled, self.spoken,
                       None, (), clean)


def plan_counts(spec: TaskSpec, n: int, warnings: list[str] | None = None) -> tuple[dict[str, int], int]:
    """Records per step and chain count: `count`, `share` of n, else an even split of what is left. When every
    step has a count or share and they ask for fewer than n, the rest is not made: a warning says so."""
    fixed: dict[str, int] = {}
    exact: dict[str | None, float] = {}  # share * n of each step with a share (None: the chains)
    for s in spec.steps:
        if s.count is not None:
            fixed[s.name] = s.count
        elif s.share is not None:
            fixed[s.name] = round(s.share * n)
            exact[s.name] = s.share * n
    chains = spec.chains
    chain_n = 0 if chains is None else chains.count if chains.count is not None else round((chains.share or 0) * n)
    if chains is not None and chains.count is None and chains.share:
        exact[None] = chains.share * n
    if sum(exact.values()) > n * (1 + 1e-9):  # shares over 1 in all: more than n at any n, whatever rounds
        shares = [(w, path, value) for w, path, key, value, _ in _count_fields(spec, fixed, chain_n) if key == "share"]
        listed = ", ".join(f"{path}.share {value:g}" for _, path, value in shares)
        raise SpecError(f"{shares[0][0]}.share: impossible counts: the shares add up to "
                        f"{sum(value for *_, value in shares):g}, more than all of n ({listed})")
    chain_n = _fit_shares(fixed, chain_n, exact)
    rest = n - sum(fixed.values()) - chain_n
    free = [s.name for s in spec.steps if s.name not in fixed]
    if rest < 0:
        listed = ", ".join(f"{path}.{key} {value:g}" + (f" ({made:,})" if key == "share" else "")
                           for _, path, key, value, made in _count_fields(spec, fixed, chain_n) if made)
        where = next(f"{w}.{key}" for w, _, key, _, made in _count_fields(spec, fixed, chain_n) if made)
        raise SpecError(f"{where}: impossible counts: steps and chains ask for {n - rest:,} records but n is {n:,} "
                        f"({listed}); lower them, or raise n (or --n)")
    counts = dict(fixed)
    for i, name in enumerate(free):
        counts[name] = rest // len(free) + (1 if i < rest % len(free) else 0)
    if not chain_n and not any(counts.values()):  # (only when every step has a count or share: free ones get n)
        _no_records(spec, n)
    if rest and not free and warnings is not None:
        chains = ", with the chains," if chain_n else ""
        warnings.append(f"{spec.path}: n is {n:,} but every step has a count or share and{chains} they "
                        f"ask for {n - rest:,} records: the other {rest:,} are not made (leave one step without "
                        "count/share to take the rest, or lower n)")
    return {s.name: counts[s.name] for s in spec.steps}, chain_n


def _fit_shares(fixed: dict[str, int], chain_n: int, exact: dict[str | None, float]) -> int:
    """Take back what rounding each share on its own added over the shares' total (`share: 0.5` twice of n 3 rounds
    to 2 + 2 = 4 records, refused as more than n): one record from each share rounded up the most (the first in spec
    order on a tie) until the shares give round(their total). `fixed` is changed in place; returns the chain count.
    Shares whose rounding stays within their total are left as they were."""
    made = {name: (fixed[name] if name is not None else chain_n) for name in exact}
    excess = sum(made.values()) - round(sum(exact.values()))
    if excess > 0:
        order = sorted(exact, key=lambda name: exact[name] - made[name])  # (stable: spec order on a tie)
        for name in order[:excess]:
            made[name] -= 1
    for name, count in made.items():
        if name is not None:
            fixed[name] = count
    return made.get(None, chain_n)


def _count_fields(spec: TaskSpec, fixed: dict[str, int], chain_n: int) -> list[tuple[str, str, str, float, int]]:
    """(where, JSON path, `count` or `share`, its value, records it gives) of each step and the chains that has
    one."""
    fields = [(s.where, f"$.steps[{i}]", "count" if s.count is not None else "share",
               s.count if s.count is not None else s.share, fixed[s.name])
              for i, s in enumerate(spec.steps) if s.name in fixed]
    if spec.chains is not None:
        count = spec.chains.count
        fields.append((f"{spec.path}: $.chains", "$.chains", "count" if count is not None else "share",
                       count if count is not None else spec.chains.share or 0, chain_n))
    return fields


def _no_records(spec: TaskSpec, n: int) -> None:
    """Refuse a plan of no records at all (every step's `count: 0`, or a `share` that is or rounds to 0, and no
    chains): it wrote an empty train.json and dev.json with exit 0, which `tasktune train` and `eval` then refused."""
    fields = [(s.where, f"$.steps[{i}]", "count" if s.count is not None else "share",
               s.count if s.count is not None else s.share) for i, s in enumerate(spec.steps)]
    if spec.chains is not None:  # a chain count or share that gives 0 too
        count = spec.chains.count
        fields.append(("", "$.chains", "count" if count is not None else "share",
                       count if count is not None else spec.chains.share or 0))
    listed = ", ".join(f"{path}.{key} {value:g}" for _, path, key, value in fields)
    where, _, key, _ = fields[0]
    raise SpecError(f"{where}.{key}: every count or share gives 0 of the {n:,} records asked for ({listed}), so "
                    "train.json and dev.json would be empty; give a step a count or a share above 0 (a step with "
                    "neither shares what the others leave of n)")


def expand_step(plan: StepPlan, count: int, rng: random.Random, warnings: list[str],
                made_before: int = 0) -> list[Example]:
    """`count` examples of one step (unique by text unless the step says `unique: false`); `made_before`: records of
    the steps before it (for the memory projection)."""
    step, memory = plan.step, plan.memory
    if step.unique and all(b is not None for b in plan.bounds) and sum(plan.bounds) < count:
        raise SpecError(
            f"{step.where}: impossible counts: {count} unique examples asked for but the templates give at most "
            f"{sum(plan.bounds)} combinations (lower count/share, add slot values or set unique: false)"
        )
    active = list(range(len(plan.contents)))
    weights = [c.weight for c in step.contents]
    cum = list(plan.cum_weights)
    made = [0] * len(active)
    seen: set[tuple[str, str]] = set()
    out: list[Example] = []
    stall = 0
    fixes = [c.fix for c in step.contents]
    # the hot loop: names looked up once
    draw_plans, make, append, rand, unique = plan.draw_plans, plan.make, out.append, rng.random, step.unique
    while len(out) < count and active:
        # min(): r * total can round up to total itself (tiny or subnormal weights)
        index = active[min(bisect.bisect_right(cum, rand() * cum[-1]), len(active) - 1)]
        try:
            values = draw_plans[index](fixes[index], rng)
        except Unsatisfiable as exc:
            raise SpecError(f"{step.contents[index].where}.fix.{exc.slot}: {exc}") from None
        example = make(index, values)
        if unique:
            key = example.key
            if key in seen:
                stall += 1
                if stall > _STALL_LIMIT:
                    break
                continue
            seen.add(key)
            made[index] += 1
            if plan.bounds[index] is not None and made[index] >= plan.bounds[index]:
                active.remove(index)
                cum = list(itertools.accumulate(weights[i] for i in active))
        stall = 0
        append(example)
        if memory.bytes > memory.next_check:  # (long texts: does the whole set still fit in memory?)
            memory.check(made_before + len(out))
    if len(out) < count:
        warnings.append(f"step {step.name!r}: only {len(out)} unique examples of the {count} asked for")
    return out


def _chain_fixed(steps: list[StepPlan], picks: tuple[int, ...]) -> dict[str, Any]:
    """The slot values fixed by the content templates picked so far (later picks override, as `dict.update`)."""
    fixed: dict[str, Any] = {}
    for plan, index in zip(steps, picks):
        fixed.update(plan.step.contents[index].fix)
    return fixed


def expand_chains(spec: TaskSpec, plans: dict[str, StepPlan], count: int, rng: random.Random,
                  warnings: list[str], made_before: int = 0) -> list[Example]:
    """Whole dialogues: one record per chain, the last step's turn with the earlier turns as history."""
    steps = [plans[name] for name in spec.chains.steps] if spec.chains else []
    last_plan = steps[-1] if steps else None
    # the picks so far determine the fixed slot values: per such prefix, the templates that agree with them
    candidates: dict[tuple[int, ...], tuple[list[int], list[float]]] = {}
    finals: dict[tuple[int, ...], tuple[dict[str, Any], Callable]] = {}  # all picks -> (fixed values, draw plan)
    seen: set[tuple] = set()
    out: list[Example] = []
    stall = 0
    rand = rng.random
    while len(out) < count:
        picks: tuple[int, ...] = ()
        for plan in steps:
            entry = candidates.get(picks)
            if entry is None:
                fixed = _chain_fixed(steps, picks)
                ok = [i for i, c in enumerate(plan.step.contents) if all(fixed.get(n, v) == v for n, v in c.fix.items())]
                if not ok:
                    raise SpecError(f"{plan.step.where}: no content template agrees with {fixed} in the chain")
                entry = candidates[picks] = ok, list(itertools.accumulate(plan.step.contents[i].weight for i in ok))
            ok, cum = entry
            # min(): r * total can round up to total itself (tiny or subnormal weights)
            picks += (ok[min(bisect.bisect_right(cum, rand() * cum[-1]), len(ok) - 1)],)
        final = finals.get(picks)
        if final is None:
            need = frozenset().union(*(p.needs[i] for p, i in zip(steps, picks)))
            sampler = steps[0].sampler
            final = finals[picks] = _chain_fixed(steps, picks), sampler.compile(sampler.order(need))
        fixed, draw = final
        try:
            values = draw(fixed, rng)
        except Unsatisfiable as exc:  # name the (last) content template of the chain that fixes the slot
            where = [p.step.contents[i].where for p, i in zip(steps, picks) if exc.slot in p.step.contents[i].fix]
            raise SpecError(f"{where[-1]}.fix.{exc.slot}: {exc} (in the chain {' -> '.join(spec.chains.steps)})") \
                from None
        # earlier turns are only text (history); the last turn is the record and keeps `values` as its slots
        earlier = [p.texts(i, values) for p, i in zip(steps[:-1], picks)]
        key = (*(t[5] for t in earlier), steps[-1].texts(picks[-1], values)[5])
        if key in seen:
            stall += 1
            if stall > _STALL_LIMIT:
                warnings.append(f"chains: only {len(out)} unique dialogues of the {count} asked for")
                break
            continue
        seen.add(key)
        stall = 0
        last = steps[-1].make(picks[-1], values)
        last.history = [list(t[5]) for t in earlier]  # [content, answer], clean
        last.chain = spec.chains.steps
        out.append(last)
        if last_plan.memory.bytes > last_plan.memory.next_check:
            last_plan.memory.check(made_before + len(out))
    return out


def expand(spec: TaskSpec, rng: random.Random, n: int | None = None,
           warnings: list[str] | None = None, progress: Callable[[int], Any] | None = None) -> list[Example]:
    """Every clean example of the spec, step by step in spec order, then the chains."""
    warnings = [] if warnings is None else warnings
    counts, chain_n = plan_counts(spec, n or spec.n, warnings)
    sampler = SlotSampler(spec.slots)
    pieces: dict = {}
    plans = {s.name: StepPlan(s, sampler, pieces) for s in spec.steps}
    memory = TextMemory(sum(counts.values()) + chain_n)
    for plan in plans.values():
        plan.memory = memory
    out: list[Example] = []
    for step in spec.steps:
        out.extend(expand_step(plans[step.name], counts[step.name], rng, warnings, len(out)))
        if progress:
            progress(counts[step.name])
    out.extend(expand_chains(spec, plans, chain_n, rng, warnings, len(out)))
    if progress:
        progress(chain_n)
    return out
