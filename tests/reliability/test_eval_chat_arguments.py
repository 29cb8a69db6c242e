"""A seventh probe: eval's and chat's own arguments, empty or path-like where a name belongs. Each is exit 2 naming
the argument before any run is read."""

from __future__ import annotations

import pytest

from reliability_util import run_cli


@pytest.mark.parametrize("argv, said", [
    (["eval", ""], "argument run_dir: empty; give the run folder"),  # looked for a run in the current folder
    (["chat", ""], "argument run_dir: empty; give the run folder"),  # named the Python API's `run_dirs`
    (["eval", "RUN", "--data", ""], "--data: empty path"),  # fell back to the run's own data without a word
    (["eval", "RUN", "--split", ""], "--split '': expected a split's name"),
    (["eval", "RUN", "--split", "../../etc/passwd"], "--split '../../etc/passwd': expected a split's name"),
])
def test_empty_or_path_like_arguments_are_refused_naming_them(argv, said, tmp_path, capsys):
    argv = [str(tmp_path / "missing-run") if a == "RUN" else a for a in argv]
    try:
        code = run_cli(argv)
    except SystemExit as exc:  # argparse's own refusal (a flag's type)
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and said in err and "Traceback" not in err, err
    assert not (tmp_path / "missing-run").exists()


def test_the_api_refuses_them_too():
    import tasktune
    from tasktune.errors import ConfigError

    for options, said in (({"data": " "}, "--data: empty path"), ({"split": "a/b"}, "--split 'a/b'")):
        with pytest.raises(ConfigError, match=said):
            tasktune.evaluate("run", **options)
