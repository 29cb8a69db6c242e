"""tasktune.serve.tools on the built-in specs' own data: frames recognised, arguments read back from reference
answers, result frames rebuilt byte for byte; spec `actions`/`route` checks; the simulated action libraries."""

from __future__ import annotations

import json
from functools import cache

import pytest

from tasktune.datagen import generate
from tasktune.datagen.spec import load_spec
from tasktune.errors import DataError, SpecError
from tasktune.serve.actions import grid_sim, smarthome_sim
from tasktune.serve.tools import TaskTools, ToolCall, ToolError

SPECS = ("grid", "smarthome")


@cache
def _data(name: str):
    """(tools, every record of a generated data set, train and dev)."""
    spec = load_spec(name)
    splits = generate(spec, seed=5, n=1500 if name == "grid" else 600)
    return TaskTools.from_spec(spec), splits.train + splits.dev


@pytest.mark.parametrize("name", SPECS)
def test_match_recognises_every_record_with_its_step(name):
    tools, records = _data(name)
    assert not tools.unmatched
    assert any(r["meta"]["noise"] for r in records)  # noised utterances are matched too
    for record in records:
        found = tools.match(record["content"])
        assert found is not None, record["content"]
        assert found.step == record["meta"]["step"], record["content"]
        slots = record["meta"]["slots"]
        for variable, value in found.variables.items():
            if variable != "utterance":
                assert slots[variable] == value, (record["content"], variable)
        for turn, _ in record.get("history", ()):
            assert tools.match(turn) is not None


def test_match_variables_and_refusals():
    tools, _ = _data("grid")
    found = tools.match("步骤#基于函数调用结果进行总结*工单查询#应到47人*目标检测#实到34人*安全帽检测#30人佩戴*任务类型#安全检查")
    assert found.step == "summary"
    assert found.variables == {"check": "安全检查", "expected": 47, "present": 34, "ok": 30, "utterance": "安全检查"}
    assert tools.match("步骤#理解并基于输入拆分函数参数*语音#尝试查[MASK]南的人数").variables == {"utterance": "尝试查[MASK]南的人数"}
    assert tools.match("尝试查济南的人数") is None  # plain text is not a frame
    assert tools.match("步骤#问候*语音#你好 ") is not None and tools.match(" 步骤#问候*语音#你好") is None
    # a frame the pattern cannot render: the 安全帽 part belongs to 安全检查 frames only, which it lacks here
    assert tools.match("步骤#基于函数调用结果进行总结*工单查询#应到4人*目标检测#实到3人*安全帽检测#2人佩戴*设备检测#1人未携带*任务类型#x") is None
    home, _ = _data("smarthome")
    # a finite slot printed by the frame must be one of its values
    frame = "step#summarize the function result*device#{}*room#kitchen*command#on*result#done*power#40W"
    assert home.match(frame.format("light")).variables["device"] == "light"
    assert home.match(frame.format("toaster")) is None


@pytest.mark.parametrize("name", SPECS)
def test_tool_calls_read_back_every_reference_answer(name):
    tools, records = _data(name)
    action = load_spec(name).actions[0]
    arguments = [r for r in records if r["meta"]["step"] == action.step]
    assert arguments
    for record in arguments:
        calls = tools.tool_calls(action.step, record["summary"])
        assert calls == [ToolCall(action.name, record["meta"]["arguments"])], record["summary"]
        json.dumps(calls[0].arguments)  # JSON-serialisable
        # the request the answer was for (speech noise included) says what the user speaks: the call stands
        assert tools.tool_calls(action.step, record["summary"], record["content"]) == calls, record["content"]


@pytest.mark.parametrize("name, request_text", [
    ("grid", "步骤#理解并基于输入拆分函数参数*语音#您好,请简单自我介绍一下"),
    ("smarthome", "step#split the request into function arguments*speech#hello, who are you?"),
])
def test_no_call_on_an_argument_the_request_never_says(name, request_text):
    """The headline greeting "您好,请简单自我介绍一下" does not match the grid's greeting route (one phrase only), so
    `tasktune serve` sent it to the arguments step, whose answer invented a place (龙口), and --actions ran the site
    check there. An argument every request of the step speaks must now be said in the request, as speech
    recognition may have written it (masked, misheard); one a request may imply (the check type) need not."""
    tools, records = _data(name)
    action = load_spec(name).actions[0]
    answers = {r["summary"] for r in records if r["meta"]["step"] == action.step}
    passed = [tools.tool_calls(action.step, answer, request_text) for answer in answers]
    places = {c[0].arguments.get("place") for c in passed if c}
    # what still passes: a 2-character place with one of its characters said exactly (a deletion is speech noise),
    # here 单县 for the 单 of 简单; 龙口, 临清 (请 only sounds like 清) and every other place do not
    utterance = request_text.split("#")[-1]
    assert all(any(ch in utterance for ch in place) for place in places) and "龙口" not in places, places
    assert len(places) <= 1 if name == "grid" else not places
    if name == "grid":
        good = "因为出现地名为济南, 所以函数一参数为济南; 因为出现人数要求, 所以函数二参数为人数检测"
        call = [ToolCall("site_check", {"place": "济南", "check": "人数检测"})]
        for heard in ("济南有多少人", "查询济[MASK]的人数", "查一下[MASK]南", "看看挤难", "南工地"):  # noised
            assert tools.tool_calls("arguments", good, heard) == call, heard
        for other in ("查询青岛的人数", "查询东营的人数", "查一下潍[MASK]的人数"):
            assert tools.tool_calls("arguments", good, other) == [], other


def test_tool_calls_refuse_what_does_not_parse_or_validate():
    tools, _ = _data("grid")
    good = "因为出现地名为济南, 所以函数一参数为济南; 因为出现人数要求, 所以函数二参数为人数检测"
    assert tools.tool_calls("arguments", "  " + good + "\n") == [ToolCall("site_check", {"place": "济南", "check": "人数检测"})]
    assert tools.tool_calls("arguments", "您好,我是电网大模型的语言核心") == []
    assert tools.tool_calls("arguments", good.replace("函数一参数为济南", "函数一参数为青岛")) == []  # place twice, differing
    assert tools.tool_calls("arguments", good.replace("函数二参数为人数检测", "函数二参数为天气")) == []  # not in the enum
    assert tools.tool_calls("greet", good) == []  # no action on that step
    call = tools.tool_calls("arguments", good)[0].openai("call_1")
    assert call == {"id": "call_1", "type": "function",
                    "function": {"name": "site_check", "arguments": '{"place": "济南", "check": "人数检测"}'}}
    home, _ = _data("smarthome")
    assert home.tool_calls("command", "Function one argument: fan; function two argument: attic; "
                                      "function three argument: on") == [
        ToolCall("set_device", {"device": "fan", "room": "attic", "action": "on"})]


@pytest.mark.parametrize("name", SPECS)
def test_result_prompt_reproduces_the_result_step_records(name):
    tools, records = _data(name)
    action = load_spec(name).actions[0]
    results = [r for r in records if r["meta"]["step"] == action.result_step]
    assert results
    for record in results:
        slots = record["meta"]["slots"]
        # (a result step's record keeps only the slots it reads: the place of a grid summary is not among them)
        call = ToolCall(action.name, {a: slots[a] for a in action.frame_arguments.values()})
        result = {f: slots[f] for f in action.result_fields}
        assert tools.result_prompt(call, result) == record["content"]


def test_bad_results_are_tool_errors_naming_the_field():
    tools, _ = _data("grid")
    call = ToolCall("site_check", {"place": "济南", "check": "人数检测"})
    with pytest.raises(ToolError, match="lacks field 'ok'"):
        tools.result_prompt(call, {"expected": 3, "present": 3})
    with pytest.raises(ToolError, match="result field 'present'.*integer"):
        tools.result_prompt(call, {"expected": 3, "present": "three", "ok": 3})
    with pytest.raises(ToolError, match="result field 'expected'.*minimum"):
        tools.result_prompt(call, {"expected": -1, "present": 3, "ok": 3})
    with pytest.raises(ToolError, match="must be an object"):
        tools.result_prompt(call, [1, 2, 3])
    with pytest.raises(ToolError, match="unknown tool 'nope'"):
        tools.result_prompt(ToolCall("nope", {}), {})
    assert issubclass(ToolError, DataError) and issubclass(ToolError, ValueError)
    # 47.0 is a JSON Schema integer: framed as the data writes it
    assert "应到47人" in tools.result_prompt(call, {"expected": 47.0, "present": 3, "ok": 3})


def test_frame_route_and_tools_entries():
    tools, _ = _data("grid")
    assert tools.frame("arguments", utterance="查查济南") == "步骤#理解并基于输入拆分函数参数*语音#查查济南"
    text = "{{ 7 * 7 }} 查查济南"  # user text is a value, never a template
    assert tools.match(tools.frame("arguments", utterance=text)).variables == {"utterance": text}
    with pytest.raises(ToolError, match="needs 'utterance'"):
        tools.frame("greet")
    with pytest.raises(ToolError, match="unknown step 'nope'"):
        tools.frame("nope", utterance="x")
    assert tools.route("你好") == "greet" and tools.route("您好！") == "greet"
    assert tools.route("你好, 查查济南的人数") == "arguments" and tools.route("查查济南的人数") == "arguments"
    assert [t["function"]["name"] for t in tools.tools()] == ["site_check"]
    entry = tools.tools()[0]
    assert entry["type"] == "function" and entry["function"]["parameters"]["required"] == ["place", "check"]
    entry["function"]["parameters"]["required"].clear()  # a copy: the spec is untouched
    assert tools.tools()[0]["function"]["parameters"]["required"] == ["place", "check"]
    home, _ = _data("smarthome")
    assert home.route("Hi there!") == "greet" and home.route("this is dark, light on") == "command"
    # a greeting of several phrases is still a greeting; a greeting that asks for something is a command
    assert home.route("hello, who are you?") == home.route("Hi there! Please introduce yourself.") == "greet"
    assert home.route("hello, turn on the lamp") == "command"


def test_spec_without_route_or_actions(tmp_path):
    (tmp_path / "spec.yaml").write_text(
        "name: mini\nsteps:\n  - {name: a, pattern: 'A#{{ utterance }}', contents: [x], summary: y}\n", encoding="utf-8")
    tools = TaskTools.from_spec(str(tmp_path / "spec.yaml"))
    assert tools.route("anything") is None and tools.tools() == [] and tools.tool_calls("a", "y") == []
    assert tools.match("A#x").step == "a"


def test_frames_that_cannot_be_inverted_are_reported(tmp_path):
    (tmp_path / "spec.yaml").write_text(
        "name: mini\nslots: {n: {range: [1, 3]}, m: {expr: 'n * 2'}}\nsteps:\n"
        "  - {name: a, pattern: '{% for i in range(n) %}x{% endfor %}{{ utterance }}', contents: [x], summary: y}\n"
        "  - {name: b, pattern: '{% if m > 2 %}big{% endif %}{{ utterance }}', contents: [x], summary: y}\n",
        encoding="utf-8")
    tools = TaskTools.from_spec(str(tmp_path / "spec.yaml"))
    assert "for" in tools.unmatched["a"] and "'m'" in tools.unmatched["b"]
    assert tools.frame("b", m=4, utterance="u") == "bigu"


GRID_ACTION = """
actions:
  - name: site_check
    description: d
    step: arguments
    parameters:
      type: object
      properties: {place: {type: string}, check: {type: string}}
    result_step: summary
    result_fields: {expected: {type: integer}, present: {type: integer}, ok: {type: integer}}
    frame_arguments: {utterance: check, check: check}
"""


def _grid_with(tmp_path, actions: str, *, edit=("", "")) -> str:
    from tasktune import TEMPLATES

    text = (TEMPLATES / "grid" / "spec.yaml").read_text(encoding="utf-8")
    text = text[:text.index("actions:")] + text[text.index("chains:"):]  # the spec without its own actions
    (tmp_path / "places.txt").write_text((TEMPLATES / "grid" / "places.txt").read_text(encoding="utf-8"),
                                         encoding="utf-8")
    path = tmp_path / "spec.yaml"
    path.write_text(text.replace(*edit) + actions.replace(*edit), encoding="utf-8")
    return str(path)


def test_a_valid_action_section_loads(tmp_path):
    spec = load_spec(_grid_with(tmp_path, GRID_ACTION))
    assert [a.name for a in spec.actions] == ["site_check"] and spec.actions[0].frame_arguments["utterance"] == "check"


@pytest.mark.parametrize("edit, where, message", [
    (("step: arguments", "step: nope"), "$.actions[0].step", "unknown step 'nope'"),
    (("result_step: summary", "result_step: nope"), "$.actions[0].result_step", "unknown step 'nope'"),
    (("step: arguments", "step: greet"), "$.actions[0].step", "declares no `arguments`"),
    (("check: {type: string}}", "check: {type: string}, when: {type: string}}"),
     "$.actions[0].parameters.properties.when", "not an argument of step 'arguments'"),
    (("place: {type: string}, ", ""), "$.actions[0].parameters.properties", "no parameter for argument 'place'"),
    (("place: {type: string}", "place: {type: strung}"), "$.actions[0].parameters.properties.place.type",
     "not a JSON Schema"),
    (("frame_arguments: {utterance: check, check: check}", "frame_arguments: {utterance: check, check: plcae}"),
     "$.actions[0].frame_arguments.check", "'plcae' is not an argument"),
    (("frame_arguments: {utterance: check, check: check}", "frame_arguments: {utterance: check}"),
     "$.actions[0]", "reads 'check', which is neither a result field nor a frame argument"),
    (("    description: d\n", ""), "$.actions[0]", "'description' is a required property"),
    (("name: site_check", "name: site check"), "$.actions[0].name", "does not match"),
    (("    frame_arguments", "    extra: 1\n    frame_arguments"), "$.actions[0]", "'extra' was unexpected"),
    (("route: {default: true}", "route: {default: true, regex: ['(']}"), "$.steps[1].route.regex[0]",
     "not a regular expression"),
    (("route: {default: true}", "route: {defualt: true}"), "$.steps[1].route", "'defualt' was unexpected"),
    (("      regex: ['^", "      default: true\n      regex: ['^"), "$.steps[1].route.default",
     "already the default route"),
])
def test_bad_action_and_route_sections_name_the_json_path(tmp_path, edit, where, message):
    with pytest.raises(SpecError) as err:
        load_spec(_grid_with(tmp_path, GRID_ACTION, edit=edit))
    text = str(err.value)
    assert "spec.yaml:" in text and f"{where}:" in text and message in text, text


def test_duplicate_action_names(tmp_path):
    twice = GRID_ACTION + GRID_ACTION[len("\nactions:\n"):]
    with pytest.raises(SpecError, match=r"\$\.actions\[1\]\.name: duplicate action name 'site_check'"):
        load_spec(_grid_with(tmp_path, twice))


def test_actions_do_not_change_the_data(tmp_path):
    with_actions = generate(load_spec(_grid_with(tmp_path, GRID_ACTION)), seed=3, n=1200)
    bare = generate(load_spec(_grid_with(tmp_path, "")), seed=3, n=1200)
    assert with_actions.train == bare.train and with_actions.dev == bare.dev


def test_grid_sim_is_deterministic_and_feeds_the_frame():
    tools, _ = _data("grid")
    register = grid_sim.sites()
    assert set(register) == set(map(str, load_spec("grid").slots["place"].values))
    assert grid_sim.make_site("济南") == grid_sim.make_site("济南") == register["济南"]
    # fixed numbers: the same on every machine (SHA-256, not Python's salted hash)
    assert register["济南"] == grid_sim.Site("济南", 26, 26, 26, 26)
    sites = register.values()
    assert any(s.expected == 0 for s in sites) and any(0 < s.present < s.expected for s in sites)
    assert any(s.present > s.expected > 0 for s in sites) and any(s.helmets < s.present for s in sites)
    for place in list(register)[:10]:
        for check in grid_sim.CHECKS:
            call = ToolCall("site_check", {"place": place, "check": check})
            prompt = tools.result_prompt(call, grid_sim.REGISTRY["site_check"](**call.arguments))
            assert tools.match(prompt).step == "summary"
    with pytest.raises(ValueError, match="no site '火星'"):
        grid_sim.site_check("火星", "人数检测")


def test_smarthome_sim_is_deterministic_and_feeds_the_frame():
    tools, _ = _data("smarthome")
    first = smarthome_sim.set_device("heater", "kitchen", "on")
    assert first == smarthome_sim.set_device("heater", "kitchen", "on") == {"result": "done", "power": 900}
    assert smarthome_sim.set_device("heater", "kitchen", "off")["power"] == 0
    call = ToolCall("set_device", {"device": "heater", "room": "kitchen", "action": "on"})
    assert tools.result_prompt(call, smarthome_sim.REGISTRY["set_device"](**call.arguments)) == (
        "step#summarize the function result*device#heater*room#kitchen*command#on*result#done*power#900W")
    with pytest.raises(ValueError, match="unknown device 'toaster'"):
        smarthome_sim.set_device("toaster", "kitchen", "on")


def test_built_in_action_libraries_by_name_and_a_run_without_a_known_spec_is_warned_about(tmp_path):
    """`--actions grid` is the shipped simulation (it was "cannot import it (No module named 'grid')"); a run
    whose data folder moved is served without tools, and the startup says so and how to give the spec (it
    turned tools off silently)."""
    from types import SimpleNamespace

    from tasktune.errors import ConfigError
    from tasktune.serve.actions import grid_sim, smarthome_sim
    from tasktune.serve.service import load_actions, load_tools

    assert load_actions("grid") == grid_sim.REGISTRY and load_actions("smarthome") == smarthome_sim.REGISTRY
    with pytest.raises(ConfigError, match="built-in simulations: grid, smarthome"):
        load_actions("no_such_actions")
    said: list[str] = []
    runs = {"moved": SimpleNamespace(data=str(tmp_path / "gone"))}
    assert load_tools(runs, {}, warn=said.append) == {}
    assert len(said) == 1 and "run moved" in said[0] and "--spec moved=SPEC" in said[0]
    said.clear()
    assert set(load_tools(runs, {"moved": "grid"}, warn=said.append)) == {"moved"} and not said
