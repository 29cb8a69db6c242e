"""Untrusted input stays contained: spec templates, pool files, YAML, model folders with code or pickles."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from tasktune.datagen import load_spec
from tasktune.datagen.render import Compiled
from reliability_util import run_cli, train_argv
from tasktune.errors import ConfigError, SpecError

SPEC = """\
name: probe
n: 3
slots:
  place: {FILE}
steps:
  - name: ask
    pattern: "语音#{{ utterance }}"
    contents: ["查查{{ place }}"]
    summary: {SUMMARY}
"""


def _spec(folder: Path, summary: str = '"好的"', file: str = "{values: [济南, 青岛, 烟台]}") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.yaml"
    path.write_text(SPEC.replace("{FILE}", file).replace("{SUMMARY}", json.dumps(summary, ensure_ascii=False)),
                    encoding="utf-8")
    return path


def _data(tmp_path: Path, spec: Path, capsys) -> tuple[int, str]:
    code = run_cli(["data", str(spec), "--out", str(tmp_path / "out"), "--seed", "1", "--quiet"])
    return code, capsys.readouterr().err


ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__.os }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__dict__ }}",
    "{{ range.__self__ }}",
    "{{ place.__class__.__base__ }}",
    "{{ ''|attr('__class__') }}",
    "{{ '{0.__class__}'.format(place) }}",
    "{{ '%s'|format(place.__init__) }}",
    "{{ dict.mro() }}",
    "{% include '/etc/passwd' %}",
    "{% import 'os' as os %}",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_templates_cannot_reach_python_internals(tmp_path, capsys, template):
    code, err = _data(tmp_path, _spec(tmp_path, template), capsys)
    assert code == 2
    assert "$.steps[0].summary" in err and "cannot render" in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


BOMBS = [
    "{{ 'x' * 10**10 }}",             # 10 GB string
    "{{ 10 ** 100000000 }}",          # CPU-bound bignum
    "{{ lipsum(n=10**6) }}",
    "{% for i in range(10**9) %}{% endfor %}",
    "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    "{{ place|truncate(-1) }}",       # a filter's AssertionError
]


@pytest.mark.parametrize("template", BOMBS)
def test_resource_bombs_and_filter_crashes_fail_cleanly(tmp_path, capsys, template):
    code, err = _data(tmp_path, _spec(tmp_path, template), capsys)
    assert code == 2 and "cannot render" in err and "Traceback" not in err, err


# width/count arguments that ask for gigabytes: refused before anything is built
WIDTH_BOMBS = [
    "{{ 'x'|center(10**9) }}",
    "{{ place|indent(10**9) }}",
    "{{ ('a\n' * 50000)|indent(1000) }}",  # 50,000 lines x 1,000 spaces
    "{{ place|truncate(10**9) }}",
    "{{ ('a ' * 40000)|wordwrap(1, wrapstring='x' * 90000) }}",
    "{{ '%0999999999d'|format(1) }}",
    "{{ '%0999999999d' % 1 }}",
    "{{ '%*d' % (10**9, 1) }}",
    "{{ '%.999999999f' % 1.0 }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ '{:{}}'.format(1, 10**9) }}",
    "{{ 'x'.ljust(10**9) }}",
    "{{ 'x'.zfill(10**9) }}",
    "{{ ('x' * 90000).replace('', 'y' * 90000) }}",
    "{{ ('y' * 90000).join(range(90000)|map('string')) }}",
    "{{ [1]|batch(10**9, 'x')|list }}",
    "{{ [1]|slice(10**9)|list }}",
    "{{ {'a': 1}|tojson(indent=10**9) }}",
]
# text that doubles, repeats or is shared until writing it out would take gigabytes
GROWTH_BOMBS = [
    "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
    "{% set l = ['x' * 1000] %}{% for i in range(40) %}{{ l.extend(l) or '' }}{% endfor %}",
    "{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% else %}{{ s|length }}{% endif %}{% endmacro %}{{ d('x', 40) }}",
    "{% for i in range(100000) %}{{ 'x' * 50000 }}{% endfor %}",
    "{% set b %}{% for i in range(100000) %}{{ 'x' * 50000 }}{% endfor %}{% endset %}{{ b|length }}",
    "{% set a = ['x' * 90000] %}{% set b = [a, a, a, a, a, a, a, a, a, a] %}"
    "{% set c = [b, b, b, b, b, b, b, b, b, b] %}{{ c }}",  # 9 GB once written out, 100 references in memory
    "{% set ns = namespace(n=10) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}{% endfor %}{{ ns.n > 0 }}",
    "{{ (10 ** 1000) ** 1000 }}",
]


@pytest.mark.parametrize("template", WIDTH_BOMBS + GROWTH_BOMBS)
def test_width_arguments_and_growing_text_are_bounded(tmp_path, capsys, template):
    """Each would allocate gigabytes (or hang) without the bounds in datagen/render.py; now a clean SpecError."""
    code, err = _data(tmp_path, _spec(tmp_path, template), capsys)
    assert code == 2 and "$.steps[0].summary" in err and "blocked by the sandbox" in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


LEGITIMATE = {
    "{{ place|center(6) }}|{{ 'a\nb'|indent(2, true) }}|{{ 'hello world'|truncate(8, leeway=0) }}": "  济南  |  a\n  b|hello...",
    "{{ 'aaa bbb ccc'|wordwrap(4) }}": "aaa\nbbb\nccc",
    "{{ '%s-%s'|format(place, 1) }}|{{ '%05.1f' % 3.14159 }}|{{ '%*d' % (4, 42) }}|{{ '100%%' % () }}":
        "济南-1|003.1|  42|100%",
    "{{ '{:.2f}'.format(3.14159) }}|{{ '{:>{w}}'.format(place, w=4) }}": "3.14|  济南",
    "{{ 'x'.ljust(3) }}|{{ '5'.zfill(3) }}|{{ 'aXb'.replace('X', '--') }}|{{ '-'.join(['a', 'b']) }}":
        "x  |005|a--b|a-b",
    "{{ [1, 2, 3, 4, 5]|batch(2)|list }}|{{ [1, 2, 3]|slice(2)|list }}|{{ range(4)|join(',') }}":
        "[[1, 2], [3, 4], [5]]|[[1, 2], [3]]|0,1,2,3",
    "{{ {'a': [1]}|tojson(indent=1) }}": '{\n "a": [\n  1\n ]\n}',
    "{% set ns = namespace(s='') %}{% for i in range(3) %}{% set ns.s = ns.s ~ i %}{% endfor %}{{ ns.s }}"
    "{% macro m(x) %}[{{ x }}]{% endmacro %}{{ m(place) }}": "012[济南]",
    "{{ ('x' * 100000)|length }}|{{ 2 ** 10 }}|{{ [0] * 3 }}|{{ 'ab' + 'c' }}": "100000|1024|[0, 0, 0]|abc",
}


@pytest.mark.parametrize("template", LEGITIMATE)
def test_ordinary_widths_and_formats_still_render(template):
    assert Compiled(template, "w")({"place": "济南"}) == LEGITIMATE[template]


def test_the_bound_is_one_hundred_thousand_characters():
    with pytest.raises(SpecError, match="at most 100,000"):
        Compiled("{{ 'x' * 100001 }}", "w")({})
    with pytest.raises(SpecError, match="longer than 100,000"):
        Compiled("{% for i in range(3) %}{{ 'x' * 50000 }}{% endfor %}", "w")({})


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "../outside.txt", "inside/../../outside.txt"])
def test_pool_files_outside_the_spec_folder_are_refused(tmp_path, capsys, name):
    (tmp_path / "outside.txt").write_text("秘密\n", encoding="utf-8")
    code, err = _data(tmp_path, _spec(tmp_path / "spec", file=json.dumps({"file": name})), capsys)
    assert code == 2 and "outside the spec's folder" in err, err


def test_a_symlink_pointing_outside_is_refused_one_inside_is_followed(tmp_path, capsys):
    (tmp_path / "secret.txt").write_text("秘密\n", encoding="utf-8")
    folder = tmp_path / "spec"
    folder.mkdir()
    (folder / "link.txt").symlink_to(tmp_path / "secret.txt")
    (folder / "places.txt").write_text("济南\n青岛\n", encoding="utf-8")
    (folder / "alias.txt").symlink_to(folder / "places.txt")
    code, err = _data(tmp_path, _spec(folder, file="{file: link.txt}"), capsys)
    assert code == 2 and "outside the spec's folder" in err, err
    assert load_spec(_spec(folder, file="{file: alias.txt}")).slots["place"].values == ("济南", "青岛")


def test_undecodable_pool_file_names_it(tmp_path, capsys):
    folder = tmp_path / "spec"
    folder.mkdir()
    (folder / "bin.txt").write_bytes(b"\xff\xfe\x00\x01binary")
    code, err = _data(tmp_path, _spec(folder, file="{file: bin.txt}"), capsys)
    assert code == 2 and "bin.txt is not UTF-8 text" in err, err


BAD_YAML = {
    "python tag": ("name: x\nsteps: !!python/object/apply:os.system ['touch PWNED']\n", "invalid YAML"),
    "alias bomb": ("a: &a [x, x, x, x, x, x, x, x, x, x]\n"
                   + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefg", "bcdefgh"))
                   + "name: x\n", "more than 1,000,000 YAML nodes"),
    "recursive alias": ("name: x\nsteps: &s [*s]\n", "refers to the node that contains it"),
    "deep nesting": ("name: x\nsteps: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    "not UTF-8": (b"name: x\nsteps: [\xff\xfe]\n", "not UTF-8"),
    "binary": (os.urandom(64).replace(b"\n", b" ") + b"\xff", ""),
}


@pytest.mark.parametrize("case", BAD_YAML)
def test_hostile_yaml_fails_cleanly(tmp_path, capsys, monkeypatch, case):
    text, message = BAD_YAML[case]
    path = tmp_path / "spec.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    monkeypatch.chdir(tmp_path)
    code, err = _data(tmp_path, path, capsys)
    assert code == 2 and message in err and str(path) in err, err
    assert not (tmp_path / "PWNED").exists()


# -- model folders ---------------------------------------------------------------------------------

MARKER_CODE = """
from pathlib import Path
Path({marker!r}).write_text("remote code ran")
from transformers import LlamaConfig
class EvilConfig(LlamaConfig):
    model_type = "evil"
"""


def _model_with_code(src: Path, dst: Path, *, known_type: bool) -> Path:
    shutil.copytree(src, dst)
    (dst / "configuration_evil.py").write_text(MARKER_CODE.format(marker=str(dst / "RAN")))
    config = json.loads((dst / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                          "AutoModelForCausalLM": "configuration_evil.EvilConfig"}
    if not known_type:
        config["model_type"] = "evil"
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_custom_code_is_refused_without_trust_remote_code(tiny_glm, train_data, tmp_path, capsys):
    model = _model_with_code(tiny_glm, tmp_path / "evil", known_type=False)
    code = run_cli(train_argv(model, train_data, tmp_path / "run", max_steps=1))
    err = capsys.readouterr().err
    assert code == 2 and "trust" in err.lower() and "Traceback" not in err, err
    assert not (model / "RAN").exists()


def test_auto_map_on_a_known_architecture_does_not_run_its_code(tiny_glm, tmp_path):
    from tasktune.tuning.model.load import load_model

    model_dir = _model_with_code(tiny_glm, tmp_path / "evil", known_type=True)
    model = load_model(model_dir)
    assert type(model).__module__.startswith("transformers.")
    assert not (model_dir / "RAN").exists()


def test_pickle_weights_are_refused_unless_allowed(tiny_glm, train_data, tmp_path, capsys):
    from safetensors.torch import load_file

    from tasktune.tuning.model.load import load_model

    model_dir = tmp_path / "pickled"
    shutil.copytree(tiny_glm, model_dir)
    torch.save(load_file(str(model_dir / "model.safetensors")), model_dir / "pytorch_model.bin")
    (model_dir / "model.safetensors").unlink()
    code = run_cli(train_argv(model_dir, train_data, tmp_path / "run", max_steps=1))
    err = capsys.readouterr().err
    assert code == 2 and "pytorch_model.bin" in err and "--allow-pickle" in err, err
    with pytest.raises(ConfigError, match="pickle"):
        load_model(model_dir)
    assert load_model(model_dir, allow_pickle=True) is not None


def test_trust_remote_code_and_allow_pickle_default_off():
    from tasktune.tuning.config import TrainConfig

    cfg = TrainConfig()
    assert cfg.trust_remote_code is False and cfg.allow_pickle is False


@pytest.fixture
def planted_run(tiny_glm, train_data, tmp_path):
    """A finished run whose base folder has since been given its own code, and whose record claims it was trained
    with `trust_remote_code` and `allow_pickle` (an edited or downloaded run folder)."""
    base = tmp_path / "base"
    shutil.copytree(tiny_glm, base)
    run = tmp_path / "run"
    assert run_cli(train_argv(base, train_data, run, max_steps=1, save_steps=1)) == 0
    shutil.rmtree(base)
    _model_with_code(tiny_glm, base, known_type=False)
    record_path = run / "tasktune_run.json"
    record = json.loads(record_path.read_text(encoding="utf-8"))
    record["config"].update(trust_remote_code=True, allow_pickle=True)
    record_path.write_text(json.dumps(record), encoding="utf-8")
    return run, base


@pytest.mark.parametrize("command", [["eval", "--limit", "1"], ["chat"]])
def test_a_run_folder_cannot_turn_on_remote_code(planted_run, capsys, monkeypatch, command):
    """Only the user's own --trust-remote-code lets a base's code run; a run record that says so does not (an
    edited record ran a planted modeling file through `tasktune eval`, exit 0)."""
    import io

    run, base = planted_run
    monkeypatch.setattr("sys.stdin", io.StringIO("你好\n"))
    code = run_cli([command[0], str(run), *command[1:]])
    err = capsys.readouterr().err
    assert code == 2 and "--trust-remote-code" in err and "Traceback" not in err, err
    assert not (base / "RAN").exists()
    with contextlib.suppress(Exception):  # the user's grant reaches the loader (this planted "model" then fails)
        run_cli([command[0], str(run), *command[1:], "--trust-remote-code"])
    capsys.readouterr()
    assert (base / "RAN").exists()


def test_a_served_run_cannot_turn_on_remote_code(planted_run):
    """`tasktune serve` (and its --router) read runs through the same record: the record's grant is dropped."""
    from tasktune.tuning.inference.bank import load_bank
    from tasktune.tuning.run import RunFolder, Trust

    run, base = planted_run
    record = RunFolder(run).record()
    assert (record.config.trust_remote_code, record.config.allow_pickle) == (False, False)
    granted = RunFolder(run).record(trust=Trust(remote_code=True, pickle=True)).config
    assert (granted.trust_remote_code, granted.allow_pickle) == (True, True)
    with pytest.raises(ConfigError, match="--trust-remote-code"):
        load_bank([(None, str(run))])
    assert not (base / "RAN").exists()


@pytest.mark.parametrize("targets", ["nosuchmodule", "q_proj,nosuchmodule", "", " , ", "*"])
def test_lora_targets_the_base_lacks_are_refused_naming_the_flag(tiny_glm, train_data, tmp_path, capsys, targets):
    """PEFT's NoMatchingPeftModuleError was a traceback; now exit 2 naming the flag and the base's linear layers,
    before any folder is written. Names PEFT matches (a module's last name, or the end of its path) still work."""
    code = run_cli(train_argv(tiny_glm, train_data, tmp_path / "run", max_steps=1, method="lora",
                              lora_target_modules=targets))
    err = capsys.readouterr().err
    assert code == 2 and "--lora-target-modules" in err and "q_proj" in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_lora_targets_by_last_name_or_path_end_are_taken(tiny_glm):
    from tasktune.tuning.model.load import load_model
    from tasktune.tuning.model.methods.peft import lora_targets

    model = load_model(tiny_glm)
    assert lora_targets(model, "q_proj, self_attn.v_proj") == ["q_proj", "self_attn.v_proj"]


def test_a_prompt_init_text_that_method_prompt_would_ignore_is_refused(tiny_glm, train_data, tmp_path, capsys):
    code = run_cli(train_argv(tiny_glm, train_data, tmp_path / "run", max_steps=1, method="prompt",
                              prompt_init_text="你好你好"))
    err = capsys.readouterr().err
    assert code == 2 and "--prompt-init-text" in err and "prompt-text" in err and "Traceback" not in err, err


@pytest.mark.parametrize("flags", [dict(max_source_length=900, max_target_length=200),
                                   dict(method="prompt-text", prompt_init_text="你好" * 600, max_source_length=160)])
def test_records_longer_than_the_bases_context_are_refused(tiny_glm, train_data, tmp_path, capsys, flags):
    """A record of source + target + the adapter's positions beyond them is
    refused naming the flags (a 5,600-token init text ran minutes a step), before any step."""
    code = run_cli(train_argv(tiny_glm, train_data, tmp_path / "run", max_steps=1, **flags))
    err = capsys.readouterr().err
    assert code == 2 and "--max-source-length" in err and "more than the base's" in err and "Traceback" not in err, err
    assert not (tmp_path / "run" / "tasktune_run.json").exists()


def test_a_gpt2_style_window_is_checked_too():
    """check_context read max_position_embeddings / seq_length only: a GPT-2-style config (n_positions, a learned
    position table that fails past its end) was never checked."""
    from types import SimpleNamespace

    from tasktune.errors import ConfigError
    from tasktune.tuning.training.setup import check_context

    cfg = SimpleNamespace(task="causal-lm", max_source_length=48, max_target_length=16, method="ptuning-v2",
                          model="gpt2-like")
    check_context(cfg, SimpleNamespace(n_positions=128), reserved=64)  # 128 = 64 + 48 + 16: fits
    with pytest.raises(ConfigError, match="more than the base's 100"):
        check_context(cfg, SimpleNamespace(n_positions=100), reserved=64)
