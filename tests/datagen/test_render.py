"""tasktune.datagen.render: sandboxed, strict, compiled once, memoised renders; errors name the template."""

import pytest

from tasktune.datagen.render import Compiled
from tasktune.errors import SpecError


def test_template_renders_and_lists_its_variables():
    t = Compiled("因为出现地名为{{ place }}, 所以函数一参数为{{ place }}; {{ check }}", "spec.yaml:3: $.x")
    assert t.refs == ("check", "place")
    assert t({"place": "济南", "check": "人数检测", "unused": 1}) == "因为出现地名为济南, 所以函数一参数为济南; 人数检测"


def test_render_is_memoised_on_the_values_it_reads(monkeypatch):
    t = Compiled("{{ a }}-{{ b }}", "w")
    assert t({"a": 1, "b": 2}) == "1-2"
    monkeypatch.setattr(Compiled, "_render", lambda *args: pytest.fail("rendered twice"))  # the memo must answer
    assert t({"a": 1, "b": 2, "c": 3}) == "1-2"


def test_broken_jinja_names_file_line_and_template_line():
    with pytest.raises(SpecError) as err:
        Compiled("first line\n{{ place ", "grid/spec.yaml:12: $.steps[1].contents[0]")
    message = str(err.value)
    assert "grid/spec.yaml:12: $.steps[1].contents[0]" in message
    assert "broken Jinja (template line 2)" in message


def test_undefined_variable_is_reported_with_template_and_name():
    t = Compiled("查{{ place }}的{{ nmae }}", "spec.yaml:7: $.steps[0].contents[1]")
    with pytest.raises(SpecError, match=r"spec.yaml:7: \$\.steps\[0\]\.contents\[1\]: undefined variable 'nmae'"):
        t.check_refs({"place", "name"})


def test_strict_undefined_attribute_fails_cleanly():
    t = Compiled("{{ place.missing }}", "w")
    with pytest.raises(SpecError, match="undefined variable"):
        t({"place": "济南"})


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ place.__class__ }}",
    "{{ cycler.__init__.__globals__ }}",
])
def test_sandbox_blocks_introspection(source):
    t = Compiled(source, "spec.yaml:9: $.steps[0].summary")
    with pytest.raises(SpecError, match=r"spec.yaml:9: .*cannot render"):
        t({"place": "济南"})


def test_expression_returns_python_values_and_tuples_for_lists():
    e = Compiled("[expected] if ok else range(0, expected)", "w", "expr")
    assert e({"expected": 3, "ok": True}) == (3,)
    assert e({"expected": 3, "ok": False}) == (0, 1, 2)
    assert Compiled("expected * 2", "w", "expr")({"expected": 4}) == 8


def test_expression_errors_are_spec_errors():
    with pytest.raises(SpecError, match="cannot render"):
        Compiled("1 // zero", "w", "expr")({"zero": 0})
    with pytest.raises(SpecError, match="broken Jinja"):
        Compiled("a +* b", "w", "expr")
