"""Template output that would differ from run to run, or cannot be written as UTF-8, is an error naming the
template (issue 21, class 4): an object's repr with a memory address, a lone surrogate."""

from __future__ import annotations

import pytest

from tasktune.cli import main
from tasktune.datagen.render import Compiled
from tasktune.errors import SpecError

WHERE = "spec.yaml:9: $.steps[0].summary"


@pytest.mark.parametrize("template", [
    "{{ joiner() }}", "{{ lipsum }}", "{{ [joiner()] }}", "{{ joiner()|string }}", "{{ (joiner()|string)[-6:-1] }}",
    "{{ '%s' % cycler(1) }}", "{{ '{}'.format(joiner()) }}", "{{ place ~ joiner() }}", "{{ joiner()|pprint }}",
    "{% set j = joiner() %}{{ j|string|length }}{{ j }}",
])
def test_an_object_address_in_the_output_is_an_error_naming_the_template(template):
    with pytest.raises(SpecError, match=r"^spec\.yaml:9: \$\.steps\[0\]\.summary: .*memory address"):
        Compiled(template, WHERE)({"place": "济南"})


@pytest.mark.parametrize("template", ["{{ '%c' % 55296 }}", "{{ '\\ud800' }}", "{{ place }}{{ '\\udfff' }}"])
def test_a_lone_surrogate_in_the_output_is_an_error_naming_the_template(template):
    with pytest.raises(SpecError, match=r"^spec\.yaml:9: \$\.steps\[0\]\.summary: .*lone surrogate"):
        Compiled(template, WHERE)({"place": "济南"})


def test_an_expression_giving_an_object_is_an_error():
    with pytest.raises(SpecError, match=r"Joiner object"):
        Compiled("[joiner()]", "spec.yaml:5: $.slots.j.expr", kind="expression")({})


@pytest.mark.parametrize("template, text", [("{{ place }}0x1234 at", "济南0x1234 at"), ("{{ 0x10 }}", "16"),
                                            ("{{ range(2) }}", "range(0, 2)"), ("{{ dict(a=1) }}", "{'a': 1}")])
def test_ordinary_output_still_renders(template, text):
    assert Compiled(template, WHERE)({"place": "济南"}) == text


def test_tasktune_data_refuses_and_writes_nothing(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t\nn: 4\nseed: 1\nsteps:\n  - name: s\n    pattern: '语音#{{ utterance }}'\n"
                    "    contents: [hi]\n    unique: false\n    summary: 'ok {{ joiner() }}'\n", encoding="utf-8")
    assert main(["data", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{spec}:9: $.steps[0].summary" in err and "memory address" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()
