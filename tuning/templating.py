"""Prompt frames and chat templates, rendered in the spec sandbox (`tasktune.datagen.render.BoundedSandbox`).

A `--prompt-template` file and the chat template a model folder brings are text tasktune did not write: both render
in the same bounded sandbox as specs (no Python internals; nothing longer than `render.MAX_TEXT`; no huge numbers),
and any failure is a DataError naming the template (issue 21, class 2).

`render_chat(tokenizer, messages)` is `tokenizer.apply_chat_template(messages, tokenize=False,
add_generation_prompt=True)` with that sandbox: the environment is set up as transformers sets up its own
(immutable sandbox, trim_blocks, lstrip_blocks, loop controls, `{% generation %}`, `raise_exception`,
`strftime_now`, `dict`, `namespace`, a `tojson` that does not escape HTML, the tokenizer's special tokens as
variables), so an ordinary template gives the same bytes (tests/reliability/test_templates.py).
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from tasktune.errors import DataError
from tasktune.files import read_text_file


class RenderError(DataError):
    """A template could not render; `reason` says why without naming the template (`what`: its path, or the base
    model's folder), for messages that a server's client reads."""

    def __init__(self, what: str, reason: str):
        super().__init__(f"{what}: cannot render ({reason})")
        self.reason = reason


class FrameTooLong(RenderError):
    """A prompt template's output went over the sandbox's bound on text (render.TextTooLong)."""


class PromptTooLong(DataError):
    """A prompt's text (query and history) is longer than any prompt template may build (render.MAX_TEXT)."""


def text_lengths(query: str, history: list) -> tuple[int, int]:
    """Characters of a prompt's query and of its history ([query, answer] pairs)."""
    return len(query), sum(len(q) + len(a) for q, a in history)


def too_long(what: str, lengths: tuple[int, int], names: tuple[str, str], framed: str = "",
             fix: str = "shorten it") -> PromptTooLong:
    """The error for `what` (its query and history `lengths`, their `names`), too long to frame (`framed`: with
    what the frame took it over the bound)."""
    from tasktune.datagen.render import MAX_TEXT

    parts = f"{names[0]} {lengths[0]:,}" + (f", {names[1]} {lengths[1]:,}" if lengths[1] else "")
    over = f"with {framed} it is over" if framed else "over"
    return PromptTooLong(f"{what} is {sum(lengths):,} characters long ({parts}): {over} the {MAX_TEXT:,} characters "
                         "a prompt template may build, so it cannot be framed (a long prompt is cut to "
                         f"max_source_length tokens only once framed); {fix}")


def check_prompt_text(query: str, history: list, what: str = "the prompt",
                      names: tuple[str, str] = ("query", "history"), fix: str = "shorten it") -> None:
    """PromptTooLong when `query` after `history` holds more text than any prompt template may build: the
    template's refusal named the template, not the text (`what`, with its parts called `names`)."""
    from tasktune.datagen.render import MAX_TEXT

    lengths = text_lengths(query, history)
    if sum(lengths) > MAX_TEXT:
        raise too_long(what, lengths, names, fix=fix)


def _environment(**options: Any):
    from jinja2.sandbox import modifies_known_mutable

    from tasktune.datagen.render import BoundedSandbox

    class Sandbox(BoundedSandbox):
        """BoundedSandbox that also refuses to change lists/dicts in place (as transformers' immutable one)."""

        def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
            return super().is_safe_attribute(obj, attr, value) and not modifies_known_mutable(obj, attr)

    return Sandbox(**options)


@lru_cache(maxsize=16)
def prompt_frame(path: str):
    """The compiled `--prompt-template` (or built-in) frame at `path` (variables: query, history)."""
    from jinja2 import StrictUndefined, TemplateSyntaxError

    try:
        source = read_text_file(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read prompt template ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: prompt template is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    env = _environment(undefined=StrictUndefined, keep_trailing_newline=False)
    try:
        return env.from_string(source)
    except TemplateSyntaxError as exc:
        raise DataError(f"{path}: broken Jinja in the prompt template (line {exc.lineno}): {exc.message}") from None


def render_frame(path: str, **context: Any) -> str:
    return _render(prompt_frame(path), f"prompt template {path}", context)


def _render(template, what: str, context: dict) -> str:
    try:
        return template.render(**context)
    except Exception as exc:  # the sandbox's SecurityError, raise_exception, a template's own errors
        from tasktune.datagen.render import TextTooLong

        kind = "SecurityError" if isinstance(exc, TextTooLong) else type(exc).__name__
        error = FrameTooLong if isinstance(exc, TextTooLong) else RenderError
        raise error(what, f"{kind}: {exc}") from None


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message):
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


class _TemplateDict:
    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


@lru_cache(maxsize=8)
def chat_template(source: str):
    """A model's chat template compiled in the sandbox, set up as transformers does."""
    import jinja2.ext
    from jinja2 import TemplateSyntaxError, nodes
    from jinja2.ext import Extension

    class Generation(Extension):
        """`{% generation %}…{% endgeneration %}` (assistant-token masks in transformers): the body, unchanged."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    env = _environment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_TemplateDict())
    try:
        return env.from_string(source)
    except TemplateSyntaxError as exc:
        raise DataError(f"the model's chat template: broken Jinja (line {exc.lineno}): {exc.message}") from None


def template_source(tokenizer) -> str:
    """The tokenizer's chat template text (a named set: its "default")."""
    source = getattr(tokenizer, "chat_template", None)
    if isinstance(source, dict):
        source = source.get("default") or next(iter(source.values()), None)
    if not isinstance(source, str) or not source:
        raise DataError("prompt template 'chat': the tokenizer has no chat template")
    return source


def render_chat(tokenizer, messages: list[dict[str, Any]]) -> str:
    """`apply_chat_template(messages, tokenize=False, add_generation_prompt=True)`, in the bounded sandbox."""
    name = getattr(tokenizer, "name_or_path", "") or "the model"
    context = {**tokenizer.special_tokens_map, "messages": messages, "tools": None, "documents": None,
               "add_generation_prompt": True}
    return _render(chat_template(template_source(tokenizer)), f"the chat template of {name}", context)
