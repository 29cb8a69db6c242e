"""Sandboxed Jinja: compile each template/expression once, render through a memo.

Templates are pure functions of the slots they reference, so a render is cached on the
tuple of those values; this is what makes 100k records/s possible (a Jinja render costs ~10 us).
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any, Callable

from jinja2 import StrictUndefined, TemplateSyntaxError, meta
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum

from tasktune.errors import SpecError

MAX_SIZE = 1_000_000  # longest string/list a `*` may build; largest `**` exponent is MAX_EXPONENT
MAX_EXPONENT = 1_000


class BoundedSandbox(SandboxedEnvironment):
    """The sandbox (no Python internals) plus bounds on `*`, `**` and lipsum, which could exhaust memory/CPU.

    The sandbox keeps templates away from code and files; these bounds keep the most direct
    resource bombs (`'a' * 10**10`, `10**10**10`, `lipsum(10**6)`) from hanging `tasktune data`.
    """

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT and abs(left) not in (0, 1):
                raise SecurityError(f"exponent {right} is too large (at most {MAX_EXPONENT})")
            return left**right
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and len(seq) * times > MAX_SIZE:
                raise SecurityError(f"`*` would build {len(seq) * times:,} items (at most {MAX_SIZE:,})")
        return left * right


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    if n > 100 or max > 1000:
        raise SecurityError("lipsum is limited to n <= 100 paragraphs of max <= 1000 words")
    return generate_lorem_ipsum(n, html, min, max)


_ENV = BoundedSandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
_ENV.globals["lipsum"] = _lipsum
GLOBALS = frozenset(_ENV.globals)
_MISSING = object()


def _syntax_error(exc: TemplateSyntaxError, where: str, source: str) -> SpecError:
    line = source.splitlines()[exc.lineno - 1] if 0 < exc.lineno <= len(source.splitlines()) else source
    return SpecError(f"{where}: broken Jinja (template line {exc.lineno}): {exc.message}\n    {line}")


def _render_error(exc: Exception, where: str, context: dict) -> SpecError:
    if isinstance(exc, UndefinedError):
        what = f"undefined variable: {exc.message}"
    elif isinstance(exc, SecurityError):
        what = f"blocked by the sandbox: {exc}"
    else:
        what = f"{type(exc).__name__}: {exc}"
    shown = {k: v for k, v in context.items() if not callable(v)}
    return SpecError(f"{where}: cannot render ({what}) with slots {shown}")


def getter(names: tuple[str, ...]) -> Callable[[dict], tuple]:
    """A fast `values -> tuple(values[n] for n in names)` (raises KeyError for a missing name)."""
    if not names:
        return lambda values: ()
    if len(names) == 1:
        one = itemgetter(names[0])
        return lambda values: (one(values),)
    return itemgetter(*names)


class Compiled:
    """A template (`kind="template"`) or expression (`kind="expr"`) compiled once.

    `refs` are the variables it reads; calling it with a slot dict returns the (cached) result.
    """

    __slots__ = ("source", "where", "kind", "refs", "_fn", "_memo", "_key")

    def __init__(self, source: str, where: str, kind: str = "template"):
        self.source, self.where, self.kind = source, where, kind
        text = source if kind == "template" else "{{ (" + source + ") }}"
        try:
            ast = _ENV.parse(text)
            self._fn = _ENV.from_string(ast) if kind == "template" else _ENV.compile_expression(source)
        except TemplateSyntaxError as exc:
            raise _syntax_error(exc, where, source) from None
        # Jinja keeps globals in a ChainMap that every render copies slowly; a plain dict is 3x faster
        template = self._fn if kind == "template" else self._fn._template
        template.globals = dict(template.globals)
        self.refs = tuple(sorted(meta.find_undeclared_variables(ast) - GLOBALS))
        self._memo: dict[tuple, Any] = {}
        self._key = getter(self.refs)

    def check_refs(self, known: set[str] | frozenset[str]) -> None:
        """Raise SpecError for a variable that is neither a slot nor `utterance` (where allowed)."""
        unknown = [r for r in self.refs if r not in known]
        if unknown:
            raise SpecError(
                f"{self.where}: undefined variable {unknown[0]!r} in {self.source!r} "
                f"(known: {', '.join(sorted(known)) or 'none'})"
            )

    def __call__(self, values: dict[str, Any]) -> Any:
        try:
            key = self._key(values)
        except KeyError as exc:
            raise SpecError(f"{self.where}: undefined variable {exc.args[0]!r} in {self.source!r}") from None
        result = self._memo.get(key, _MISSING)
        if result is not _MISSING:
            return result
        context = dict(zip(self.refs, key))
        try:
            if self.kind == "template":  # Template.render minus its argument copying
                result = "".join(self._fn.root_render_func(self._fn.new_context(context)))
            else:
                result = self._fn(**context)
                if isinstance(result, StrictUndefined):
                    str(result)  # raises UndefinedError with the name
                if isinstance(result, range):
                    result = tuple(result)
                elif isinstance(result, list):
                    result = tuple(result)
        except SpecError:
            raise
        except Exception as exc:  # whatever a user's template raises (filters assert, recurse, ...) is the spec's fault
            raise _render_error(exc, self.where, context) from None
        self._memo[key] = result
        return result

