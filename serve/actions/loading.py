"""`tasktune serve --actions MODULE`: import the action library, read its REGISTRY, and hold it to the served
specs' tools before the server starts. Every problem is a ConfigError naming `--actions MODULE` (exit 2, one
line): a file that fails to import (the exception, and the line of the file it came from), a REGISTRY that is
missing or not `{tool name: plain function}`, one with a function for none of the served specs' tools (the
names), a function whose parameters cannot take the tool's arguments. A REGISTRY that missed every tool started
anyway, and every request then got `tool_calls` back with nothing run. A REGISTRY that covers some tools only
(`tasktune serve grid=... home=... --actions grid`) serves: the startup warns that the others' calls go to the
client, as they do without --actions."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasktune.errors import ConfigError

from .runner import ActionRunner

#: `--actions NAME` for the simulated action libraries that ship with tasktune
BUILTIN_ACTIONS = {"grid": "tasktune.serve.actions.grid_sim", "smarthome": "tasktune.serve.actions.smarthome_sim"}


def server_actions(args: argparse.Namespace, tools: dict[str, Any]) -> ActionRunner:
    """--actions loaded and checked against `tools` (run name -> TaskTools), run under --action-timeout on
    --action-workers threads (default: --max-batch-size, as many as requests can decode at once)."""
    registry = load_actions(args.actions)
    check_actions(args.actions, registry, tools, lambda line: print(f"tasktune serve: warning: {line}",
                                                                    file=sys.stderr, flush=True))
    return ActionRunner(registry, timeout=args.action_timeout, workers=args.action_workers or args.max_batch_size)


def load_actions(path: str) -> dict[str, Callable[..., Any]]:
    """`--actions`: a Python file or module name whose REGISTRY maps tool names to callables, or the name of a
    simulated library that ships with tasktune (BUILTIN_ACTIONS: grid, smarthome)."""
    module = _import_file(path) if path.endswith(".py") else _import_module(path, BUILTIN_ACTIONS.get(path, path))
    return _registry(path, module)


def _import_file(path: str) -> Any:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--actions {path}: no such file")
    name = f"tasktune_actions_{file.stem}"
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # (as `import` does: a @dataclass in the file looks its module up there)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        del sys.modules[name]
        raise ConfigError(f"--actions {path}: importing it failed: {_failure(exc, file)}") from None
    return module


def _import_module(path: str, name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(f"--actions {path}: cannot import it ({exc}); give a .py file, a module, or one of "
                          f"the built-in simulations: {', '.join(BUILTIN_ACTIONS)}") from None
    except (Exception, SystemExit) as exc:
        raise ConfigError(f"--actions {path}: importing it failed: {_failure(exc)}") from None


def _failure(exc: BaseException, file: Path | None = None) -> str:
    """The exception and where it was raised: the last line of `file` it passed through (else the last line
    outside importlib); a SyntaxError names its own file and line."""
    said = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, SyntaxError):
        return f"{type(exc).__name__}: {exc.msg} ({exc.filename}, line {exc.lineno})"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen")]
    own = [f for f in frames if file is not None and Path(f.filename).resolve() == file.resolve()]
    frame = (own or frames or [None])[-1]
    return f"{said} ({frame.filename}, line {frame.lineno})" if frame is not None else said


def _registry(path: str, module: Any) -> dict[str, Callable[..., Any]]:
    registry = getattr(module, "REGISTRY", None)
    need = "it needs REGISTRY = {tool name: function}"
    if registry is None:
        raise ConfigError(f"--actions {path}: the module defines no REGISTRY; {need}")
    if not isinstance(registry, dict):
        raise ConfigError(f"--actions {path}: REGISTRY is not a dict ({type(registry).__name__}); {need}")
    for name, function in registry.items():
        if not isinstance(name, str):
            raise ConfigError(f"--actions {path}: REGISTRY key {name!r} is not a tool name (a string); {need}")
        if not callable(function):
            raise ConfigError(f"--actions {path}: REGISTRY[{name!r}] is not a function "
                              f"({type(function).__name__}); {need}")
        if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
            raise ConfigError(f"--actions {path}: REGISTRY[{name!r}] is an async function; actions run on "
                              f"threads of their own: give a plain function")
    return dict(registry)


def check_actions(path: str, registry: dict[str, Callable[..., Any]], tools: dict[str, Any],
                  warn: Callable[[str], Any] = lambda line: None) -> None:
    """Some tool of the served specs (`tools`: run name -> TaskTools) has a function in `registry`, and each
    function of a tool takes the tool's arguments (those its step's answer names, passed as keywords); `warn` is
    told of each tool without one (its calls go to the client)."""
    if not any(t.spec.actions for t in tools.values()):
        raise ConfigError(f"--actions {path}: no served run's spec has tools (actions), so its functions "
                          f"({', '.join(registry) or 'none'}) would never run; give the runs' specs with "
                          f"--spec NAME=SPEC")
    missing = [f"{a.name} (run {run})" for run, t in tools.items() for a in t.spec.actions if a.name not in registry]
    if len(missing) == sum(len(t.spec.actions) for t in tools.values()):
        raise ConfigError(f"--actions {path}: REGISTRY has no function for tool {', '.join(missing)}; it has "
                          f"{', '.join(registry) or 'none'}")
    for t in tools.values():
        for action in t.spec.actions:
            if action.name in registry:
                _takes(path, action.name, registry[action.name], t.spec.step(action.step).arguments)
    tool_names = {a.name for t in tools.values() for a in t.spec.actions}
    unused = [name for name in registry if name not in tool_names]
    if unused:  # a misspelt name (site_chek) beside the right ones said nothing, and never ran
        warn(f"--actions {path}: REGISTRY has {', '.join(map(repr, unused))}, which no served spec has as a tool "
             f"(tools: {', '.join(sorted(tool_names))}): {'it never runs' if len(unused) == 1 else 'they never run'}")
    if missing:
        warn(f"--actions {path}: REGISTRY has no function for tool {', '.join(missing)}: the server runs the "
             f"others ({', '.join(sorted(set(registry) & {a.name for t in tools.values() for a in t.spec.actions}))})"
             "; these calls go back to the client as tool_calls")


def _takes(path: str, name: str, function: Callable[..., Any], arguments: tuple[str, ...]) -> None:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # a builtin without one: nothing to check
        return
    try:
        signature.bind(**dict.fromkeys(arguments))
    except TypeError as exc:
        raise ConfigError(f"--actions {path}: REGISTRY[{name!r}]{signature} cannot take the tool's arguments "
                          f"({', '.join(arguments)}, as keywords): {exc}") from None
