"""Render a template as its literal text plus small parts, each cached on the few slots it reads.

A template's render is cached on all the slots it reads (`datagen.render.Compiled`); when those are many
(the grid summary frame reads check, expected, present and ok: ~38,000 combinations in 100,000 records),
most renders miss that cache. But such a template is mostly literal text, `{{ slot }}` outputs and
`{% if %}` tests that each read one or two slots. Split into those pieces, every piece is itself a tiny
sandboxed template, cached on its own slots, and nearly always found in its cache: a miss of the whole
template costs a few dictionary look-ups instead of a Jinja render (~5 us).

Only templates made of nothing but output (`{{ ... }}`, text) and `if/elif/else` are split: those
constructs bind no variables, so each piece depends on the slots alone and the template's output is
the pieces' outputs in order. Each `{{ expression }}` is rendered by Jinja itself (same sandbox, same
finalize, same bounds); an `if` test is rendered as `{% if test %}1{% endif %}` (Jinja's truth), with
`and` / `or` / `not` split further and evaluated left to right with Jinja's short-circuit. Anything
else (`for`, `set`, macros, blocks, ...) leaves the template whole (`plan` returns None).
"""

from __future__ import annotations

from typing import Any, Callable

from jinja2 import nodes

#: a piece: `(compiled, memo, key)` as `Compiled.memo_view` gives (see datagen.render)
Piece = tuple[Callable[[dict], Any], dict, Callable[[dict], tuple]]
MakePiece = Callable[[nodes.Template], Piece]
_MISSING = object()


class _If:
    """`if/elif/else`: (test, ops) branches tried in order, then the else ops."""

    __slots__ = ("branches", "else_")

    def __init__(self, branches: list[tuple[Any, list]], else_: list) -> None:
        self.branches, self.else_ = branches, else_


class _Bool:
    """`and` / `or` / `not` of tests (op is 'and', 'or' or 'not'; `right` is None for 'not')."""

    __slots__ = ("op", "left", "right")

    def __init__(self, op: str, left: Any, right: Any = None) -> None:
        self.op, self.left, self.right = op, left, right


def _template(body: list[nodes.Node], like: nodes.Node) -> nodes.Template:
    tree = nodes.Template(body, lineno=like.lineno)
    tree.set_environment(like.environment)
    return tree


class _Planner:
    def __init__(self, make_piece: MakePiece, pieces: dict[str, Piece]) -> None:
        self.make_piece = make_piece
        self.pieces = pieces  # one piece per distinct expression (`{{ present }}` is often repeated)

    def piece(self, tree: nodes.Template) -> Piece:
        key = repr(tree)  # nodes print every field: equal text, equal node
        if key not in self.pieces:
            self.pieces[key] = self.make_piece(tree)
        return self.pieces[key]

    def body(self, body: list[nodes.Node]) -> list | None:
        ops: list = []
        for node in body:
            if type(node) is nodes.Output:
                for child in node.nodes:
                    if type(child) is nodes.TemplateData:
                        ops.append(child.data)  # literal text: Jinja writes it as it is (no finalize)
                    else:
                        ops.append(self.piece(_template([nodes.Output([child], lineno=child.lineno)], child)))
            elif type(node) is nodes.If:
                branches = []
                for branch in (node, *node.elif_):
                    inner = self.body(branch.body)
                    if inner is None:
                        return None
                    branches.append((self.test(branch.test), inner))
                else_ = self.body(node.else_)
                if else_ is None:
                    return None
                ops.append(_If(branches, else_))
            else:
                return None
        merged: list = []  # adjacent literals as one string
        for op in ops:
            if op.__class__ is str and merged and merged[-1].__class__ is str:
                merged[-1] += op
            else:
                merged.append(op)
        return merged

    def test(self, expr: nodes.Expr) -> Any:
        if type(expr) is nodes.And:
            return _Bool("and", self.test(expr.left), self.test(expr.right))
        if type(expr) is nodes.Or:
            return _Bool("or", self.test(expr.left), self.test(expr.right))
        if type(expr) is nodes.Not:
            return _Bool("not", self.test(expr.node))
        one = nodes.Output([nodes.TemplateData("1", lineno=expr.lineno)], lineno=expr.lineno)
        return self.piece(_template([nodes.If(expr, [one], [], [], lineno=expr.lineno)], expr))


def plan(tree: nodes.Template, make_piece: MakePiece, pieces: dict[str, Piece] | None = None) -> list | None:
    """The template's body as ops (literal str | piece | _If), or None when it cannot be split.

    `make_piece(template)` gives the piece for a one-node template (compiled when first rendered, ideally);
    `pieces` (by the piece's text) are reused, and new ones added: templates that share it share pieces.
    A template with nothing to split (one piece, or only text) also gives None: it gains nothing.
    """
    ops = _Planner(make_piece, {} if pieces is None else pieces).body(tree.body)
    if ops is None or sum(op.__class__ is not str for op in ops) < 2 and not any(op.__class__ is _If for op in ops):
        return None
    return ops


class _Writer:
    """Generates the render function of a plan: pieces, literals and memos are names in its namespace."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, Any] = {"_MISSING": _MISSING}

    def name(self, value: Any, stem: str) -> str:
        name = f"{stem}{len(self.names)}"
        self.names[name] = value
        return name

    def value(self, piece: Piece) -> str:
        """An expression for the piece's output: its memo, else a render (which fills the memo)."""
        compiled, memo, _ = piece
        key = compiled.key_source("values")
        m, c = self.name(memo, "M"), self.name(compiled, "C")
        return f"(_r if (_r := {m}.get({key}, _MISSING)) is not _MISSING else {c}(values))"

    def test(self, test: Any) -> str:
        if test.__class__ is _Bool:
            if test.op == "not":
                return f"(not {self.test(test.left)})"
            return f"({self.test(test.left)} {test.op} {self.test(test.right)})"
        return f"({self.value(test)} == '1')"  # the piece is `{% if test %}1{% endif %}`

    def ops(self, ops: list, depth: int) -> None:
        pad = "    " * depth
        if not ops:
            self.lines.append(pad + "pass")
        for op in ops:
            if op.__class__ is str:
                self.lines.append(f"{pad}out.append({self.name(op, 'L')})")
            elif op.__class__ is tuple:
                self.lines.append(f"{pad}out.append({self.value(op)})")
            else:
                for k, (test, body) in enumerate(op.branches):
                    self.lines.append(f"{pad}{'if' if k == 0 else 'elif'} {self.test(test)}:")
                    self.ops(body, depth + 1)
                if op.else_:
                    self.lines.append(f"{pad}else:")
                    self.ops(op.else_, depth + 1)


def compile_plan(ops: list) -> Callable[[dict], str]:
    """`render(values) -> str` for a plan: the template's output (every slot its pieces read must be in
    `values`; a missing one raises KeyError). One generated function, no interpretation per piece: the
    names and texts of the spec reach it only as values in its namespace (and slot names through repr)."""
    w = _Writer()
    w.ops(ops, 1)
    source = "def render(values):\n    out = []\n" + "\n".join(w.lines) + "\n    return ''.join(out)\n"
    namespace = dict(w.names)
    exec(compile(source, "<datagen.segments>", "exec"), namespace)  # noqa: S102 (text only via namespace)
    return namespace["render"]
