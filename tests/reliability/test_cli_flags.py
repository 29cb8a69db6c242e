"""Every flag of every subcommand, given any value: accepted, or refused with exit code 2 naming the flag; never
a traceback (issue 21, classes 3 and 7).

The work each command does (generate, fit, evaluate, chat, compare, build a tiny model) is replaced by a stub
that raises `WorkStarted`, so what runs is the argument parsing and the validation before the work; reaching
the stub means "accepted". A command added later without a stub here is still parsed with every flag value.
"""

from __future__ import annotations

import argparse
import importlib
import math
import traceback

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasktune.cli import build_parser, main
from tasktune.flags import Range

FAST = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
LONG = settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))

#: (module, function) each command's handler calls to start its work.
WORK = {
    "data": [("tasktune.datagen", "generate")],
    "train": [("tasktune.tuning.training.train", "fit")],
    "eval": [("tasktune.tuning.evaluation.eval", "evaluate")],
    "chat": [("tasktune.tuning.evaluation.chat", "chat")],
    "compare": [("tasktune.tuning.evaluation.compare", "compare")],
    "tiny-model": [("tasktune.tuning.tiny.cli", "build_tiny_model")],
}
#: The arguments a command needs before a flag can be tried (kept valid).
BASE_ARGV = {
    "data": ["grid", "--out", "{tmp}/data"],
    "train": ["--out", "{tmp}/run"],
    "eval": ["{tmp}/run"],
    "chat": ["{tmp}/run"],
    "compare": ["--model", "m", "--data", "d", "--out", "{tmp}/compare"],
    "tiny-model": ["--out", "{tmp}/tiny"],
}
#: Flags whose values name things, not numbers; their own tests cover them (a random path is a random path).
FREE_TEXT = {"--out", "--model", "--data", "--spec", "--split", "--prompt-init-text", "--lora-target-modules",
             "--prompt-column", "--response-column", "--history-column", "--prompt-template", "--resume", "--methods"}


class WorkStarted(Exception):
    """Raised by a stubbed work function: the command got past parsing and validation."""


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _flags(sub: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in sub._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


COMMANDS = _subparsers()
CASES = [(name, action.option_strings[-1]) for name, sub in COMMANDS.items() for action in _flags(sub)]

numbers = st.one_of(st.integers(), st.integers(-3, 3), st.integers(2**31, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.floats(-2, 2))
values = st.one_of(
    numbers.map(str),
    st.sampled_from(["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e309", "-0", "0", "0.0", "1e-320", "1_000",
                     "0x10", " 5 ", "5.", ".5", "1e3", "", " ", "-", "--", "true", "none", "auto", "\x00", "٣",
                     "１２", "9" * 5000, "1" + "0" * 400, "\udcff", "../../etc/passwd", "/dev/null"]),
    st.text(max_size=20),
)


@pytest.fixture
def stubs(monkeypatch):
    def started(*args, **kwargs):
        raise WorkStarted(args, kwargs)

    import tasktune.cli

    parser = build_parser()  # built once (main builds one per call; parsing does not change it)
    monkeypatch.setattr(tasktune.cli, "build_parser", lambda: parser)

    for targets in WORK.values():
        for module, name in targets:
            monkeypatch.setattr(importlib.import_module(module), name, started)


def _run(argv: list[str], capsys) -> tuple[int | str, str]:
    """Exit code (or "work" when the work stub was reached) and stderr; any other exception fails the test."""
    try:
        code = main(argv)
    except WorkStarted:
        code = "work"
    except SystemExit as exc:
        code = exc.code
    except BaseException:  # noqa: BLE001 - any escaping exception is the failure this test looks for
        pytest.fail(f"tasktune {' '.join(map(repr, argv))} raised:\n{traceback.format_exc()}")
    return code, capsys.readouterr().err


def _check_one(command: str, flag: str, value: str | None, tmp: str, capsys) -> None:
    base = [part.format(tmp=tmp) for part in BASE_ARGV.get(command, [])]
    argv = [command, *base, flag] + ([] if value is None else [value])
    if command not in WORK and command in COMMANDS:  # no stub known: the parser alone
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            assert exc.code in (0, 2)
        capsys.readouterr()
        return
    code, err = _run(argv, capsys)
    assert "Traceback" not in err, err
    assert code in ("work", 0, 2), (argv, code, err)
    if code == 2:  # the flag named; or, for a value that looks like an option, that value named as not understood
        named = flag in err or flag.lstrip("-").replace("-", "_") in err
        stray = value is not None and value.startswith("-") and f"unrecognized arguments: {value}" in err
        assert named or stray, (argv, err)


def _takes_value(command: str, flag: str) -> bool:
    action = next(a for a in _flags(COMMANDS[command]) if flag in a.option_strings)
    return action.nargs != 0


@pytest.mark.parametrize("command, flag", CASES, ids=[f"{c} {f}" for c, f in CASES])
def test_any_flag_value_is_accepted_or_refused_naming_the_flag(command, flag, stubs, tmp_path, capsys):
    if flag in FREE_TEXT:
        pytest.skip("a path or name, not a number")
    if not _takes_value(command, flag):
        _check_one(command, flag, None, str(tmp_path), capsys)
        return
    FAST(given(values)(lambda value: _check_one(command, flag, value, str(tmp_path), capsys)))()


@pytest.mark.slow
@pytest.mark.parametrize("command, flag", CASES, ids=[f"{c} {f}" for c, f in CASES])
def test_any_flag_value_long(command, flag, stubs, tmp_path, capsys):
    if flag in FREE_TEXT or not _takes_value(command, flag):
        pytest.skip("covered by the fast variant")
    LONG(given(values)(lambda value: _check_one(command, flag, value, str(tmp_path), capsys)))()


def test_every_number_flag_declares_its_range():
    """Each `type=int/float` flag has a Range with bounds (the safety net's unbounded one does not count)."""
    unbounded = []
    for name, sub in COMMANDS.items():
        for action in _flags(sub):
            if action.type in (int, float) or isinstance(action.type, Range) and (
                    action.type.lo is None or action.type.hi is None or abs(action.type.hi) >= 2**62):
                unbounded.append(f"{name} {action.option_strings[-1]}")
    assert not unbounded, f"number flags without a declared range: {unbounded}"


@pytest.mark.parametrize("argv, flag", [
    (["train", "--learning-rate", "nan"], "--learning-rate"),
    (["train", "--learning-rate", "inf"], "--learning-rate"),
    (["train", "--max-steps", "1.5"], "--max-steps"),
    (["train", "--pre-seq-len", "100000000"], "--pre-seq-len"),
    (["train", "--per-device-train-batch-size", "0"], "--per-device-train-batch-size"),
    (["train", "--num-threads", "-1"], "--num-threads"),
    (["train", "--seed", "-5"], "--seed"),
    (["train", "--prefix-dropout", "nan"], "--prefix-dropout"),
    (["data", "grid", "--out", "{tmp}/d", "--n", "0"], "--n"),
    (["data", "grid", "--out", "{tmp}/d", "--n", "-3"], "--n"),
    (["eval", "{tmp}/run", "--limit", "0"], "--limit"),
    (["eval", "{tmp}/run", "--limit", "-1"], "--limit"),
    (["eval", "{tmp}/run", "--batch-size", "0"], "--batch-size"),
    (["eval", "{tmp}/run", "--max-new-tokens", "-1"], "--max-new-tokens"),
    (["chat", "{tmp}/run", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["compare", "--model", "m", "--data", "d", "--limit", "-1"], "--limit"),
    (["compare", "--model", "m", "--data", "d", "--lr", "lora=nan"], "--lr"),
    (["compare", "--model", "m", "--data", "d", "--lr", "nosuch=0.1"], "--lr"),
    (["tiny-model", "--lr", "inf"], "--lr"),
    (["tiny-model", "--device", "gpu0"], "--device"),
])
def test_bad_numbers_are_refused_before_any_work(argv, flag, stubs, tmp_path, capsys):
    argv = [part.format(tmp=tmp_path) for part in argv]
    code, err = _run(argv, capsys)
    assert code == 2, (code, err)
    assert flag in err and "Traceback" not in err, err


def test_a_config_file_with_nan_or_a_rounded_number_is_refused(tmp_path, stubs, capsys):
    config = tmp_path / "run.yaml"
    for text, key in [("learning_rate: .nan\n", "learning_rate"), ("max_steps: 2.5\n", "max_steps"),
                      ("max_steps: true\n", "max_steps"), ("seed: -1\n", "seed"), ("model: {a: 1}\n", "model")]:
        config.write_text(text)
        code, err = _run(["train", "--config", str(config), "--out", str(tmp_path / "run")], capsys)
        assert code == 2 and f"{config}: {key}:" in err, (text, err)
    config.write_bytes(b"max_steps: 3\n# \xff\xfe\n")
    code, err = _run(["train", "--config", str(config)], capsys)
    assert code == 2 and "not UTF-8" in err and str(config) in err, err


@pytest.mark.parametrize("argv", [["train", "--out", "{file}"], ["data", "grid", "--out", "{file}/sub"],
                                  ["tiny-model", "--out", "{file}"],
                                  ["compare", "--model", "m", "--data", "d", "--out", "{file}"]])
def test_out_pointing_at_a_file_is_refused_naming_it(argv, tmp_path, stubs, capsys):
    file = tmp_path / "a-file"
    file.write_text("mine\n")
    code, err = _run([part.format(file=file) for part in argv], capsys)
    assert code == 2 and "--out" in err and f"{file}" in err and "is a file, not a folder" in err, err
    assert file.read_text() == "mine\n"


def test_ranges_describe_themselves():
    assert Range(int, 1, 10).describe() == "int >= 1 and <= 10"
    assert Range(float, 0.0, 1.0, hi_open=True).problem(math.nan)
    assert Range(float, 0.0, 1.0, hi_open=True).problem(1.0)
    assert Range(float, 0.0, 1.0, hi_open=True).problem(0.5) is None
    assert Range(int, 0, 5).problem(True)
