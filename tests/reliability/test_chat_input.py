"""`tasktune chat` and data files with careless input (issue 21, class 6): closed stdin, a line that is not UTF-8,
Ctrl-C; a train.json that is not UTF-8 or starts with a BOM.

The model is replaced by a stub that echoes (loading and generating are tested in tests/tuning/test_eval.py);
what is tested here is the reading loop and what the user sees."""

from __future__ import annotations

import io
import sys
from types import SimpleNamespace

import pytest

from tasktune.cli import main
from tasktune.tuning.evaluation import chat as chat_module


@pytest.fixture
def echo_model(monkeypatch):
    """load_for_chat stubbed: the Assistant's answer to a prompt is `echo:<prompt>`; `boom` raises Ctrl-C."""
    loads = []

    class EchoBot:
        # what chat prints of the run, and the window it checks --max-new-tokens against (1,024 positions, P = 4)
        run = SimpleNamespace(config=SimpleNamespace(model="stub"), adapter=SimpleNamespace(
            model=SimpleNamespace(config=SimpleNamespace(max_position_embeddings=1024)), reserved_positions=4))

        def answer(self, prompts, *, history=None, max_new_tokens=None, base=False):
            loads.append(prompts[0])
            if "boom" in prompts[0]:
                raise KeyboardInterrupt
            from tasktune.tuning.data import format_prompt

            format_prompt(None, prompts[0], template="chatglm")  # framed as the real one frames it
            return [f"echo:{prompts[0]}"]

    def load(run_dir, trust=None):
        loads.append(run_dir)
        return EchoBot()

    monkeypatch.setattr(chat_module, "load_for_chat", load)
    return loads


def test_closed_stdin_is_a_clear_error_before_loading_the_model(echo_model, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sys, "stdin", None)  # what Python sets when file descriptor 0 is closed (`<&-`)
    assert main(["chat", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "standard input is closed" in err and "Traceback" not in err, err
    assert echo_model == [], "the model was loaded for a chat that cannot read anything"


def test_a_line_that_is_not_utf8_gets_a_note_and_the_chat_goes_on(echo_model):
    stdin = io.TextIOWrapper(io.BytesIO(b"\xff\xfe bad\n\xe4\xbd\xa0\xe5\xa5\xbd\n\n"), encoding="utf-8")
    stdout = io.StringIO()
    turns = chat_module.chat("run", stdin=stdin, stdout=stdout)
    assert turns == [("你好", "echo:你好")]
    assert "that line is not UTF-8 text: byte 0 is 0xff" in stdout.getvalue()


def test_ctrl_c_ends_the_chat_like_ctrl_d(echo_model, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("你好\nboom\n再见\n".encode()), encoding="utf-8"))
    assert main(["chat", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert "tuned> echo:你好" in out.out and "再见" not in out.out
    assert "Traceback" not in out.err and "interrupted" not in out.err


def test_end_of_input_ends_the_chat(echo_model):
    assert chat_module.chat("run", stdin=io.StringIO("a\n"), stdout=io.StringIO()) == [("a", "echo:a")]


@pytest.mark.parametrize("name", ["train.json", "train.jsonl"])
def test_a_data_file_that_is_not_utf8_is_named(tmp_path, name):
    from tasktune.errors import DataError
    from tasktune.tuning.data import DataConfig, load_records

    (tmp_path / name).write_bytes(b'[{"content": "ok",\n "summary": "\xff\xfe"}]\n')
    with pytest.raises(DataError, match=rf"{name}:2: not UTF-8 text \(byte \d+"):
        load_records(tmp_path, "train", DataConfig())


def test_a_data_file_with_a_utf8_bom_loads(tmp_path):
    from tasktune.tuning.data import DataConfig, load_records

    (tmp_path / "train.json").write_bytes('\ufeff[{"content": "你好", "summary": "好"}]'.encode())
    assert load_records(tmp_path, "train", DataConfig())[0]["content"] == "你好"


def test_a_line_the_template_cannot_frame_gets_a_note_and_the_chat_goes_on(echo_model):
    """A 200,000-character line is over what the prompt template renders (render.MAX_TEXT): its DataError ended the
    whole session (rc 2) while a line that is not UTF-8 only asked for another."""
    stdin = io.StringIO("你" * 200_000 + "\n你好\n\n")
    stdout = io.StringIO()
    turns = chat_module.chat("run", stdin=stdin, stdout=stdout)
    assert turns == [("你好", "echo:你好")]
    said = stdout.getvalue()
    # (was: "that line cannot be framed: prompt template .../chatglm.jinja: cannot render (SecurityError: ...)")
    assert "(the prompt of that line is 200,000 characters long (the line 200,000): over the 100,000 characters" in said
    assert said.count("type a shorter one") == 1 and "or `clear`" not in said and "chatglm.jinja" not in said


def test_a_line_too_long_with_the_history_says_so_and_offers_clear(echo_model):
    stdin = io.StringIO("你" * 60_000 + "\n" + "好" * 60_000 + "\nclear\n" + "好" * 60_000 + "\n\n")
    stdout = io.StringIO()
    turns = chat_module.chat("run", stdin=stdin, stdout=stdout)
    assert [len(q) for q, _ in turns] == [60_000, 60_000]  # the third line fits once the history is cleared
    said = stdout.getvalue()
    assert "(the prompt of that line is 180,005 characters long (the line 60,000, the history before it 120,005)" \
           in said and "type a shorter one, or `clear` the history)" in said


@pytest.mark.parametrize("flags, room", [([], 1019), (["--base"], 1023)])
def test_an_answer_cap_the_window_cannot_hold_is_refused_before_the_first_line(echo_model, monkeypatch, capsys,
                                                                               tmp_path, flags, room):
    """`chat --max-new-tokens 5000` loaded the model, read the first line, and only then said the cap leaves no
    room for a prompt; now it is said once the model is loaded (as eval says it before generating)."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("你好\n".encode())))
    assert main(["chat", str(tmp_path), "--max-new-tokens", "5000", *flags]) == 2
    err = capsys.readouterr().err
    assert f"--max-new-tokens 5000 leaves no room for a prompt in the model's 1024-position context (at most {room})" \
        in err, err
    assert echo_model == [str(tmp_path)], "a line was answered"
