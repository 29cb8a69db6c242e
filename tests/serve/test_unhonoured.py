"""OpenAI's parameters this server cannot honour (protocol.UNHONOURED, one table): a value that would change the
answer's shape is a 400 `unsupported_value` naming the parameter (audio output, the legacy functions, web search
were ignored with a 200); parameters it only does not apply are typed as OpenAI types them (`metadata: [1]` was
taken) and accepted."""

from __future__ import annotations

import openai
import pytest

from tests.serve.test_validation import post, refused

FUNCTION = {"name": "site_check", "parameters": {"type": "object", "properties": {"place": {"type": "string"}}}}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("fields, param", [
    ({"modalities": ["audio"]}, "modalities"), ({"modalities": ["text", "audio"]}, "modalities"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"functions": [FUNCTION]}, "functions"), ({"functions": [FUNCTION], "function_call": "auto"}, "functions"),
    ({"function_call": {"name": "site_check"}}, "function_call"),
    ({"web_search_options": {}}, "web_search_options"),
])
def test_a_parameter_that_would_change_the_answers_shape_is_refused(live_server, fields, param, stream):
    error = refused(live_server, param, stream=stream, **fields)
    assert error["code"] == "unsupported_value", error


@pytest.mark.parametrize("fields, param", [
    ({"metadata": [1]}, "metadata"), ({"metadata": {"a": 1}}, "metadata.a"),
    ({"metadata": {str(i): "v" for i in range(17)}}, "metadata"), ({"metadata": {"k" * 65: "v"}}, "metadata"),
    ({"modalities": ["video"]}, "modalities[0]"), ({"modalities": "text"}, "modalities"),
    ({"store": "yes"}, "store"), ({"functions": "x"}, "functions"), ({"function_call": 5}, "function_call"),
    ({"service_tier": 5}, "service_tier"), ({"reasoning_effort": 1}, "reasoning_effort"),
    ({"audio": "alloy"}, "audio"), ({"prediction": "x"}, "prediction"),
])
def test_a_known_parameter_of_the_wrong_type_is_refused(live_server, fields, param):
    refused(live_server, param, **fields)


def test_parameters_that_do_not_change_the_answer_are_taken(live_server):
    reply = post(live_server, modalities=["text"], metadata={"user": "u1", "run": "x" * 512}, store=False,
                 service_tier="auto", reasoning_effort="low", prompt_cache_key="k", safety_identifier="s",
                 prediction={"type": "content", "content": "x"}, functions=None, function_call=None, audio=None)
    assert reply.status_code == 200, reply.text


def test_the_openai_client_is_told_to_send_tools(live_server):
    client = live_server.client()
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="grid", messages=[{"role": "user", "content": "查查济南的人数"}],
                                       functions=[FUNCTION], function_call={"name": "site_check"})
    assert err.value.body["param"] == "functions" and "tools" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="grid", messages=[{"role": "user", "content": "你好"}],
                                       modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"})
    assert err.value.body["param"] == "modalities" and err.value.body["code"] == "unsupported_value"
