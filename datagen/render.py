"""Sandboxed Jinja: compile each template/expression once, render through a memo.

Templates are pure functions of the slots they reference, so a render is cached on the
tuple of those values; this is what makes 100k records/s possible (a Jinja render costs ~10 us).

Longer than 300 lines because the sandbox is one piece: every bounded filter, string method and size check guards
the same render budget, and a reader auditing what a spec can do must see them all together.
"""

from __future__ import annotations

import inspect
import re
from functools import update_wrapper, wraps
from itertools import islice
from operator import itemgetter
from string import Formatter
from typing import Any, Callable

from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.parser import Parser
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import Namespace

from tasktune.datagen import segments
from tasktune.datagen.terminal import printable
from tasktune.errors import SpecError

#: the most text a template may build or output: a string's characters, or a list's items plus their text
#: (shared items counted each time, as writing the list out repeats them); also the largest width or count
#: a padding / wrapping / batching filter or method accepts
MAX_TEXT = 100_000
MAX_EXPONENT = 1_000  # largest `**` exponent (of a base other than 0, ±1)
MAX_INT_BITS = 100_000  # largest integer (in bits, ~30,000 digits) a `*` or `**` may build


def _size(value: Any, limit: int = MAX_TEXT) -> int:
    """How much text `value` makes when written out, counted only until it passes `limit` (so O(limit))."""
    if isinstance(value, (str, bytes)):
        return len(value)
    if not isinstance(value, (list, tuple, dict, set, frozenset, Namespace)):
        return 0  # numbers, None, undefined, generators, macros ...
    total, stack = 0, [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, (str, bytes)):
            total += len(item)
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += len(item)
            if total <= limit:
                stack.extend(item)
        elif isinstance(item, dict):
            total += len(item)
            if total <= limit:
                stack.extend(item.keys())
                stack.extend(item.values())
        elif isinstance(item, Namespace):
            stack.append(object.__getattribute__(item, "_Namespace__attrs"))
    return total


class TextTooLong(SecurityError):
    """A value over MAX_TEXT characters: the output bound, which a caller may tell from the sandbox's other refusals
    (tuning/data.py format_prompt: text a prompt frame takes over the bound is the text's length, said as such)."""


def _check(value: Any, what: str) -> Any:
    """`value`, unless it is more than MAX_TEXT of text, or text holding an object's memory address
    (SecurityError naming `what`)."""
    if _size(value) > MAX_TEXT:
        raise TextTooLong(f"{what} is longer than {MAX_TEXT:,} characters")
    if type(value) is str and "0x" in value:
        _no_address(value, what)
    return value


#: how CPython writes an object without a repr of its own: `<jinja2.utils.Joiner object at 0x7f3a...>`
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]{6,}>")


def _no_address(text: str, what: str) -> None:
    """SecurityError when `text` holds an object's memory address: such output differs from run to run, and
    the same spec, seed and N must always give byte-identical files."""
    found = _ADDRESS.search(text)
    if found:
        start = text.rfind("<", 0, found.start())
        shown = text[start if start >= 0 else found.start():found.end()]
        raise SecurityError(f"{what} holds an object's memory address ({shown[:80]}), which changes from run "
                            "to run; write text, numbers or slot values, not objects")


_PLAIN = (str, int, float, bool, type(None))


def _plain_value(value: Any) -> None:
    """SecurityError unless an expression's value is text, a number, a bool, None, or lists/tuples/dicts of
    them: an object (a joiner, a macro, a namespace) has no stable text and cannot be written to a record."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _PLAIN):
            continue
        if isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        else:
            raise SecurityError(f"the expression's value holds a {type(item).__name__} object; a slot value "
                                "must be text, a number, or a list of them")


def _deterministic(result: Any, where: str, context: dict | None = None) -> Any:
    """A template's output, checked to be the same bytes on every run and writable as UTF-8: no object
    addresses, no lone surrogates (`'%c' % 0xd800`, `'\\ud800'`). Anything else is a SpecError naming the
    template."""
    if type(result) is not str:
        return result
    try:
        if "0x" in result:
            _no_address(result, "the output")
        if not result.isascii():
            result.encode("utf-8")
    except SecurityError as exc:
        raise _render_error(exc, where, context or {}) from None
    except UnicodeEncodeError as exc:
        raise SpecError(f"{where}: the output holds invalid Unicode (a lone surrogate "
                        f"{result[exc.start]!a} at character {exc.start}), which cannot be written as UTF-8 "
                        "text") from None
    return result


def _width(value: Any, what: str) -> None:
    if isinstance(value, int) and value > MAX_TEXT:
        raise SecurityError(f"{what} {value:,} is too large (at most {MAX_TEXT:,})")


def _estimate(n: int, what: str) -> None:
    if n > MAX_TEXT:
        raise SecurityError(f"{what} would build {n:,} characters (at most {MAX_TEXT:,})")


_PERCENT = re.compile(r"%%|%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_percent(fmt: str | bytes, values: Any, what: str) -> None:
    """`fmt % values` must not ask for a width or precision over MAX_TEXT (`'%0999999999d' % 1`)."""
    if isinstance(fmt, bytes):
        fmt = fmt.decode("latin-1")
    star = False
    for match in _PERCENT.finditer(fmt):
        for number in match.groups():
            star = star or number == "*"
            if number and number != "*" and (len(number) > 7 or int(number) > MAX_TEXT):
                raise SecurityError(f"{what}: width/precision {number} is too large (at most {MAX_TEXT:,})")
    if star:
        for value in values if isinstance(values, tuple) else (values,):
            _width(value, f"{what}: `*` width/precision")


def _check_format_spec(fmt: str, args: tuple, kwargs: dict, what: str) -> None:
    """str.format: no width/precision over MAX_TEXT (`'{:>999999999}'`), nor a nested one (`'{:{}}'`)."""
    for _, field, spec, _ in Formatter().parse(fmt):
        if field is None or not spec:
            continue
        if "{" in spec:  # the width comes from an argument
            for value in [*args, *kwargs.values()] + [v for a in args if isinstance(a, dict) for v in a.values()]:
                _width(value, f"{what}: a nested width/precision")
            _check_format_spec(spec, args, kwargs, what)
        for number in re.findall(r"\d+", spec):
            if len(number) > 7 or int(number) > MAX_TEXT:
                raise SecurityError(f"{what}: width/precision {number} is too large (at most {MAX_TEXT:,})")


def _check_replace(s: Any, old: Any, new: Any, count: Any, what: str) -> None:
    if isinstance(s, (str, bytes)) and isinstance(old, type(s)) and isinstance(new, type(s)):
        n = s.count(old) if old else len(s) + 1
        if isinstance(count, int) and count >= 0:
            n = min(n, count)
        _estimate(len(s) + n * len(new), what)


def _check_join(items: list, separator: Any, what: str) -> None:
    _estimate(sum(_size(item) for item in items) + _size(separator) * len(items), what)


# -- filters: their width/count arguments and what they would build -------------------------------------

def _filter_indent(a: dict) -> None:
    s, width = str(a["s"]), a.get("width", 4)
    _width(width, "`indent` width")
    step = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    _estimate(len(s) + (s.count("\n") + 1) * step, "`indent`")


def _filter_wordwrap(a: dict) -> None:
    s, width = str(a["s"]), a.get("width", 79)
    _width(width, "`wordwrap` width")
    wrap = a.get("wrapstring") or a["environment"].newline_sequence
    lines = 2 * len(s) // max(width, 1) + s.count("\n") + 2 if isinstance(width, int) else len(s) + 1
    _estimate(len(s) + lines * _size(wrap), "`wordwrap`")


def _filter_join(a: dict) -> None:
    a["value"] = items = list(a["value"])  # (a generator is read once, here)
    _check_join(items, a.get("d", ""), "`join`")


def _filter_tojson(a: dict) -> None:
    indent = a.get("indent")
    _width(indent, "`tojson` indent")
    step = len(indent) if isinstance(indent, str) else indent if isinstance(indent, int) else 0
    if step:
        _estimate(_size(a["value"]) * (1 + step), "`tojson`")


_FILTER_CHECKS: dict[str, Callable[[dict], None]] = {
    "center": lambda a: _width(a.get("width", 80), "`center` width"),
    "indent": _filter_indent,
    "truncate": lambda a: (_width(a.get("length", 255), "`truncate` length"),
                           _width(a.get("leeway"), "`truncate` leeway")),
    "wordwrap": _filter_wordwrap,
    "format": lambda a: _check_percent(str(a["value"]), a.get("kwargs") or a.get("args", ()), "`format`"),
    "replace": lambda a: _check_replace(str(a["s"]), str(a["old"]), str(a["new"]), a.get("count"), "`replace`"),
    "join": _filter_join,
    "batch": lambda a: _width(a.get("linecount"), "`batch` size"),
    "slice": lambda a: _width(a.get("slices"), "`slice` count"),
    "tojson": _filter_tojson,
}
_NOT_CHECKED = frozenset({"_loop_vars", "_block_vars", "caller"})  # Jinja's own call arguments


def _bounded_filter(name: str, func: Callable) -> Callable:
    """`func` (a Jinja filter) with its inputs, its width/count arguments and its result bounded."""
    check = _FILTER_CHECKS.get(name)
    signature = inspect.signature(func) if check else None  # (of the sync variant, for Jinja's async_variant)
    skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0  # the context/environment argument
    # async_variant adds an eval context that the signature does not show: bind only what follows it
    head = skip if signature is not None and skip and next(iter(signature.parameters)) not in (
        "eval_ctx", "environment", "env", "context") else 0

    @wraps(func)  # keeps jinja_pass_arg
    def bounded(*args: Any, **kwargs: Any) -> Any:
        for value in (*args[skip:], *kwargs.values()):
            _check(value, f"the value given to `{name}`")
        if signature is not None:
            bound = signature.bind(*args[head:], **kwargs)
            check(bound.arguments)
            args, kwargs = (*args[:head], *bound.args), bound.kwargs
        return _check(func(*args, **kwargs), f"the result of `{name}`")

    return bounded


def _bounded_str_method(owner: str | bytes, name: str, args: tuple, kwargs: dict) -> tuple:
    """Check a str/bytes method call that can build far more text than it is given; return its args."""
    if name in ("center", "ljust", "rjust", "zfill"):
        _width(args[0] if args else kwargs.get("width"), f"`{name}` width")
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        _width(size, "`expandtabs` tab size")
        if isinstance(size, int):
            _estimate(len(owner) + owner.count("\t" if isinstance(owner, str) else b"\t") * size, "`expandtabs`")
    elif name == "replace" and len(args) >= 2:
        _check_replace(owner, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count"), "`replace`")
    elif name == "join" and args:
        items = list(args[0])  # (a generator is read once, here)
        _check_join(items, owner, "`join`")
        args = (items, *args[1:])
    elif name == "translate" and args and isinstance(args[0], dict):
        longest = max((len(v) for v in args[0].values() if isinstance(v, (str, bytes))), default=1)
        _estimate(len(owner) * max(longest, 1), "`translate`")
    return args


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with `a ~ b` checked (the parts of a `~` are not seen by call/call_binop) and
    the output buffers of blocks, macros and `{% set %}`/`{% filter %}` blocks bounded as they fill."""

    def buffer(self, frame: Frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.new_buffer()")

    @optimizeconst  # constant parts are folded at compile time, as Jinja does (no bigger than the source)
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            func_name = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            func_name = "markup_join"
        else:
            func_name = "str_join"
        self.write(f"{func_name}(environment.check_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write(")))")


def _bounded_concat(pieces) -> str:
    """"".join for a template's output (and blocks, macros): at most MAX_TEXT characters in MAX_TEXT pieces.

    Pieces are read 64 at a time (each is at most MAX_TEXT: `finalize` checked it), so a loop that outputs
    too much is stopped before it has filled memory; most templates are done in the first chunk.
    """
    pieces, out, total = iter(pieces), [], 0
    while True:
        chunk = list(islice(pieces, 64))
        out += chunk
        total += sum(map(len, chunk))
        if total > MAX_TEXT or len(out) > MAX_TEXT:
            raise TextTooLong(f"the output is longer than {MAX_TEXT:,} characters")
        if len(chunk) < 64:
            return "".join(out)


def _finalize(value: Any) -> Any:
    """Every `{{ value }}` before it is written out (a plain string: the fast path)."""
    if type(value) is str and len(value) <= MAX_TEXT:
        return value
    return _check(value, "an output value")


class _Buffer(list):
    """A block's output buffer (a list of strings) that refuses to hold more than MAX_TEXT."""

    __slots__ = ("_total",)

    def __init__(self) -> None:
        super().__init__()
        self._total = 0

    def append(self, piece: Any) -> None:
        self._total += _size(piece) + 1  # (+1: a million empty pieces are a million list slots)
        if self._total > MAX_TEXT:
            raise TextTooLong(f"a block's output is longer than {MAX_TEXT:,} characters")
        super().append(piece)

    def extend(self, pieces: Any) -> None:
        for piece in pieces:
            self.append(piece)


class _BoundedNamespace(Namespace):
    """`namespace()`, whose attributes (the only state a loop carries) are bounded like any built value."""

    def __setitem__(self, name: str, value: Any) -> None:
        super().__setitem__(name, _check(value, f"namespace attribute {name!r}"))


class BoundedSandbox(SandboxedEnvironment):
    """The sandbox (no Python internals) plus bounds on what a template can build, which could exhaust memory.

    The sandbox keeps templates away from code and files. These bounds keep a spec from building more than
    MAX_TEXT of text, or a huge number, anywhere a template can make something bigger than its inputs:
    operators (`*`, `**`, `%`, `+`, `~`), filters and method calls (and their width/count arguments:
    `center(10**9)`, `'%0999999999d'`, `'{:>999999999}'`), namespace attributes, and the output itself.
    Loops over `range` are capped by Jinja's sandbox (100,000 items); CPU time is not bounded.
    """

    intercepted_binops = frozenset({"*", "**", "%", "+", "-"})
    code_generator_class = _BoundedCodeGenerator
    concat = staticmethod(_bounded_concat)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        # the `random` filter is refused by name when a template is compiled (`_no_random_filter`)
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items() if name != "random"}
        self.globals["lipsum"] = _lipsum
        self.globals["namespace"] = _BoundedNamespace
        self.finalize = _finalize

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT and abs(left) not in (0, 1):
                raise SecurityError(f"exponent {right} is too large (at most {MAX_EXPONENT})")
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                _bits(left.bit_length() * right, "**")
            result = left**right
        elif operator == "*":
            if isinstance(left, int) and isinstance(right, int):
                _bits(left.bit_length() + right.bit_length(), "*")
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, bytes, list, tuple)) and isinstance(times, int):
                    if _size(seq) * times > MAX_TEXT:
                        raise SecurityError(f"`*` would build {_size(seq) * times:,} characters/items "
                                            f"(at most {MAX_TEXT:,})")
            result = left * right
        elif operator == "-":
            result = left - right
            if isinstance(result, (set, frozenset)):  # `d.keys() - [...]`: dict views subtract into a set
                raise SecurityError("`-` gives a set, whose order differs between runs (it depends on "
                                    "PYTHONHASHSEED); keep a list's order instead: `a|reject('in', b)|list`")
        elif operator == "%":
            if isinstance(left, (str, bytes)):
                _check(right, "the values given to `%`")
                _check_percent(left, right, "`%`")
            result = left % right
        else:
            result = left + right
        return _check(result, f"the result of `{operator}`")

    def call(__self, __context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (as Jinja's)
        name = getattr(__obj, "__name__", type(__obj).__name__)
        for key, value in (*enumerate(args), *kwargs.items()):
            if key not in _NOT_CHECKED:
                _check(value, f"an argument of `{name}`")
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, (str, bytes)):
            args = _bounded_str_method(owner, name, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(owner, (list, dict, set)):  # append / extend / update grow it in place
            _check(owner, f"the {type(owner).__name__} changed by `{name}`")
        return _check(result, f"the result of `{name}`")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt, what = value.__self__, f"`{value.__name__}`"

        def bounded(*args: Any, **kwargs: Any) -> str:
            _check_format_spec(fmt, args, kwargs, what)
            return _check(wrapped(*args, **kwargs), f"the result of {what}")

        return update_wrapper(bounded, value)

    @staticmethod
    def new_buffer() -> list:
        return _Buffer()

    def check_concat(self, parts: tuple) -> tuple:
        """The parts of an `a ~ b`, once their text adds up to at most MAX_TEXT."""
        if sum(_size(part) for part in parts) > MAX_TEXT:
            raise SecurityError(f"`~` would build more than {MAX_TEXT:,} characters")
        return parts


def _bits(n: int, operator: str) -> None:
    if n > MAX_INT_BITS:
        raise SecurityError(f"`{operator}` would build a {n:,}-bit integer (at most {MAX_INT_BITS:,})")


_RANDOM_TEXT = ("gives different text on every run, but the same spec and seed must give the same data; draw "
                "values from a slot (values/choices) instead")


def _lipsum(*args: Any, **kwargs: Any) -> str:
    """Jinja's `lipsum()` draws its words from Python's global random generator: refused (a SecurityError,
    reported as a render error naming the template)."""
    raise SecurityError(f"`lipsum()` {_RANDOM_TEXT}")


def _no_random_filter(ast: nodes.Template, where: str) -> None:
    """SpecError when the template uses Jinja's `random` filter (Python's global random generator, unseeded)."""
    if any(node.name == "random" for node in ast.find_all(nodes.Filter)):
        raise SpecError(f"{where}: the `random` filter {_RANDOM_TEXT}")


_ENV = BoundedSandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
GLOBALS = frozenset(_ENV.globals)
_MISSING = object()


_JINJA_NEWLINE = re.compile(r"\r\n|\r|\n")  # jinja2.lexer.newline_re


def _syntax_error(exc: TemplateSyntaxError, where: str, source: str) -> SpecError:
    lines = _JINJA_NEWLINE.split(source)  # Jinja's own line count (splitlines() also cuts at U+2028, \x0c...)
    line = lines[exc.lineno - 1] if 0 < exc.lineno <= len(lines) else source
    return SpecError(f"{where}: broken Jinja (template line {exc.lineno}): {exc.message}\n    {printable(line)}")


def _render_error(exc: Exception, where: str, context: dict) -> SpecError:
    if isinstance(exc, UndefinedError):
        what = f"undefined variable: {exc.message}"
    elif isinstance(exc, SecurityError):
        what = f"blocked by the sandbox: {exc}"
    else:
        what = f"{type(exc).__name__}: {exc}"
    shown = {k: v for k, v in context.items() if not callable(v)}
    return SpecError(f"{where}: cannot render ({what}) with slots {shown}")


def _is_plain_text(source: str) -> bool:
    """Whether Jinja would output `source` unchanged: no `{` (no tag, output or comment can start), no newline
    (which the lexer normalises, and trims at the end), not longer than the output bound."""
    return "{" not in source and "\n" not in source and "\r" not in source and len(source) <= MAX_TEXT


def _parse_expression(source: str) -> None:
    """Raise TemplateSyntaxError where `Environment.compile_expression(source)` would, without compiling."""
    parser = Parser(_ENV, source, state="variable")
    parser.parse_expression()
    if not parser.stream.eos:
        raise TemplateSyntaxError("chunk after expression", parser.stream.current.lineno, None, None)


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

    `refs` are the variables it reads; calling it with a slot dict returns the (cached) result. A template
    that reads several slots is also split into pieces cached on fewer slots (`datagen.segments`), which
    render it on a cache miss; the whole Jinja render remains the reference (it runs whenever a piece fails,
    so errors read as before).
    """

    __slots__ = ("source", "where", "kind", "refs", "_fn", "_tree", "_memo", "_key", "_join", "_ops")

    def __init__(self, source: str, where: str, kind: str = "template", *, tree: nodes.Template | None = None,
                 pieces: dict[str, segments.Piece] | None = None):
        """`tree`: the parsed template, when it is not `source` itself (a piece of it); `pieces`: pieces shared
        with other templates (by their text), so that each is rendered and cached once.

        Every error a spec can have is raised here: syntax errors by the parser, the others (an unknown
        filter or test, a block defined twice, ...) by Jinja's code generator, which runs here to find
        `refs`. The Python code itself is compiled on the first render (a template never rendered, e.g. a
        summary case that only the merged answer template uses, costs no compile)."""
        self.source, self.where, self.kind = source, where, kind
        if kind == "template" and tree is None and _is_plain_text(source):
            self._plain(source)
            return
        text = source if kind == "template" else "{{ (" + source + ") }}"
        try:
            ast = _ENV.parse(text) if tree is None else tree
            if kind == "expr":
                _parse_expression(source)  # as `compile_expression` will: no text after the expression
            _no_random_filter(ast, where)  # (before the code generator says "no filter named 'random'")
            undeclared = meta.find_undeclared_variables(ast)  # (runs the code generator: its errors surface here)
        except TemplateSyntaxError as exc:
            raise _syntax_error(exc, where, source) from None
        self._tree = ast if kind == "template" else None
        self._fn = None
        self.refs = tuple(sorted(undeclared - GLOBALS))
        self._memo: dict[tuple, Any] = {}
        # the memo key: the values of `refs` (one value itself, not a 1-tuple: itemgetter is C, no tuple is built)
        self._key = itemgetter(self.refs[0]) if len(self.refs) == 1 else getter(self.refs)
        # without a loop the output has as many pieces as the source has outputs, each checked by finalize:
        # a plain join, then a length check, is safe (and faster); a loop's output is bounded as it comes
        self._join = _ENV.concat if ast.find(nodes.For) is not None else "".join
        self._ops = None
        if kind == "template" and tree is None and len(self.refs) > 1:
            ops = segments.plan(ast, self._piece, {} if pieces is None else pieces)
            self._ops = segments.compile_plan(ops) if ops is not None else None

    def _plain(self, text: str) -> None:
        """A template that is only text renders to that text (Jinja's lexer would make it one TemplateData):
        nothing to parse or compile; the memo holds the answer."""
        self._tree, self._fn, self.refs = None, None, ()
        self._key, self._join = getter(()), "".join
        self._memo = {(): text}
        self._ops = lambda values: text  # (for `uncached`)

    def _compile(self) -> None:
        self._fn = _ENV.from_string(self._tree) if self.kind == "template" else _ENV.compile_expression(self.source)
        # Jinja keeps globals in a ChainMap that every render copies slowly; a plain dict is 3x faster
        template = self._fn if self.kind == "template" else self._fn._template
        template.globals = dict(template.globals)

    def _piece(self, tree: nodes.Template) -> segments.Piece:
        return Compiled(self.source, self.where, tree=tree).memo_view()

    def check_refs(self, known: set[str] | frozenset[str]) -> None:
        """Raise SpecError for a variable that is neither a slot nor `utterance` (where allowed)."""
        unknown = [r for r in self.refs if r not in known]
        if unknown:
            raise SpecError(
                f"{self.where}: undefined variable {unknown[0]!r} in {self.source!r} "
                f"(known: {', '.join(sorted(known)) or 'none'})"
            )

    def key_source(self, values: str) -> str:
        """Python source of this template's memo key, read from the dict named `values` (for generated code)."""
        if len(self.refs) == 1:
            return f"{values}[{self.refs[0]!r}]"
        return "(" + "".join(f"{values}[{r!r}], " for r in self.refs) + ")"

    def memo_view(self) -> tuple[Compiled, dict[tuple, Any], Callable[[dict], tuple]]:
        """(self, memo, key): `memo.get(key(values))` is the cached result for `values`, if any (a hot loop can
        look there before calling; `key` raises KeyError where a value is missing)."""
        return self, self._memo, self._key

    def __call__(self, values: dict[str, Any]) -> Any:
        try:
            key = self._key(values)
        except KeyError as exc:
            raise SpecError(f"{self.where}: undefined variable {exc.args[0]!r} in {self.source!r}") from None
        result = self._memo.get(key, _MISSING)
        if result is not _MISSING:
            return result
        result = self._memo[key] = self._render(key, values)
        return result

    def uncached(self, values: dict[str, Any]) -> Any:
        """The result, not looked up in nor added to the memo: for a caller that caches it on a key that
        determines this one (the memo would only grow)."""
        if self._ops is not None:
            result = self._split_render(values)
            if result is not _MISSING:
                return _deterministic(result, self.where)
        try:
            key = self._key(values)
        except KeyError as exc:
            raise SpecError(f"{self.where}: undefined variable {exc.args[0]!r} in {self.source!r}") from None
        return self._render(key, values)

    def _split_render(self, values: dict[str, Any]) -> Any:
        """The output from the pieces, or _MISSING when a piece fails (the whole render then says why)."""
        try:
            result = self._ops(values)
        except Exception:  # (a SpecError from a piece, a KeyError for a missing slot)
            return _MISSING
        return result if len(result) <= MAX_TEXT else _MISSING

    def _render(self, key: Any, values: dict[str, Any]) -> Any:
        if self._ops is not None:
            result = self._split_render(values)
            if result is not _MISSING:
                return _deterministic(result, self.where)
        context = dict(zip(self.refs, (key,) if len(self.refs) == 1 else key))
        return _deterministic(self._render_in(context), self.where, context)

    def _render_in(self, context: dict[str, Any]) -> Any:
        try:
            if self._fn is None:
                self._compile()
            if self.kind == "template":  # Template.render minus its argument copying
                result = self._join(self._fn.root_render_func(self._fn.new_context(context)))
                if len(result) > MAX_TEXT:
                    raise TextTooLong(f"the output is longer than {MAX_TEXT:,} characters")
            else:
                result = self._fn(**context)
                if type(result) is not str or len(result) > MAX_TEXT:
                    _check(result, "the expression's value")
                if isinstance(result, StrictUndefined):
                    str(result)  # raises UndefinedError with the name
                if isinstance(result, range):
                    result = tuple(result)
                elif isinstance(result, list):
                    result = tuple(result)
                _plain_value(result)
        except SpecError:
            raise
        except Exception as exc:  # whatever a user's template raises (filters assert, recurse, ...) is the spec's fault
            raise _render_error(exc, self.where, context) from None
        return result

