"""Issue 21, class 2: `--prompt-template` files and a model folder's chat template render in the spec sandbox
(bounded: nothing longer than render.MAX_TEXT, no Python internals), errors are DataErrors naming the template,
and for ordinary chat templates the text equals `tokenizer.apply_chat_template`'s, byte for byte."""

from __future__ import annotations

import copy
import time

import pytest

from tasktune.errors import DataError
from tasktune.tuning import templating
from tasktune.tuning.data import format_prompt
from tests.tuning.conftest import build_tiny_tokenizer

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
          " + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
          "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}"
          "{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
          "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
          "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
          "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
          "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
          "{% endfor %}")
BLOCKS = """{%- set ns = namespace(n=0) -%}
{% for m in messages %}
  {% if m.role == 'assistant' %}{% generation %}{{ m.content | trim }}{% endgeneration %}
  {% else %}{{ m | tojson }}
  {% endif %}
  {% set ns.n = ns.n + 1 %}
  {% if loop.index > 6 %}{% break %}{% endif %}
{% endfor %}
{{ dict(turns=ns.n) | tojson }}{% if add_generation_prompt %}<bot> "héllo" & <b>{% endif %}
"""
ORDINARY = {"chatml": CHATML, "llama-2": LLAMA2, "blocks, namespace, tojson, loop controls": BLOCKS,
            "bos and roles": "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                             "{% if add_generation_prompt %}<assistant>{% endif %}"}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def with_template(tokenizer, source):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = source
    return tok


HISTORIES = [[], [["你好", "您好！"]], [["a & <b>", " spaced answer  "], ["q2", "a2\nline"]]]


@pytest.mark.parametrize("name", list(ORDINARY))
@pytest.mark.parametrize("history", HISTORIES, ids=["one turn", "history", "two turns"])
def test_ordinary_chat_templates_give_apply_chat_templates_bytes(tokenizer, name, history):
    tok = with_template(tokenizer, ORDINARY[name])
    messages = []
    for q, a in history:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": "查询 <x> & 'y'"})
    expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert templating.render_chat(tok, messages).encode() == expected.encode()
    assert format_prompt(tok, "查询 <x> & 'y'", history, "auto").encode() == expected.encode()


HOSTILE = {
    "huge string": "{{ 'x' * 20000000 }}",
    "huge number": "{{ 9 ** 9999999 }}",
    "python internals": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "mutating the messages": "{% set _ = messages.append(messages[0]) %}{{ messages | length }}",
    "raise_exception": "{{ raise_exception('no system role here') }}",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_chat_template_is_a_data_error_naming_it(tokenizer, name):
    tok = with_template(tokenizer, HOSTILE[name])
    start = time.monotonic()
    with pytest.raises(DataError, match="chat template"):
        format_prompt(tok, "q", [], "auto")
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("source", ["{{ 'x' * 20000000 }}{{ query }}", "{{ query.__class__.__mro__ }}",
                                    "{% for i in range(99999) %}{{ 'y' * 1000 }}{% endfor %}"])
def test_a_hostile_prompt_template_file_is_a_data_error_naming_it(tokenizer, tmp_path, source):
    path = tmp_path / "frame.jinja"
    path.write_text(source, encoding="utf-8")
    with pytest.raises(DataError, match=str(path)):
        format_prompt(tokenizer, "q", [], str(path))


def test_a_broken_prompt_template_file_is_a_data_error(tokenizer, tmp_path):
    path = tmp_path / "broken.jinja"
    path.write_text("{% if query %}", encoding="utf-8")
    with pytest.raises(DataError, match="broken Jinja"):
        format_prompt(tokenizer, "q", [], str(path))


def test_builtin_prompt_frames_render_as_before(tokenizer):
    assert format_prompt(tokenizer, "q", [["a", "b"]], "chatglm")
    assert format_prompt(tokenizer, "q", [], "human_assistant")
