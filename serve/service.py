"""From an OpenAI chat request to engine requests and back: which run answers, which step, tools, the answer.

The HTTP layer (serve/app.py) only translates; everything the assistant decides happens here:
- model: a run's name, the base model's name, or "auto" (the run whose spec frames the content; else the base);
- step: framed content as in the data is used as is; plain text goes to a step by the router run (a
  classification run trained on the spec's intents, `--router`) or by the spec's route rules, and is framed;
- tools: an answer of a step with an action becomes `tool_calls`; a `tool` message with the function's result
  is rendered into the result step's frame; with server-side actions (`--actions`) the loop runs here.

Longer than 300 lines because it is the one place where a chat request becomes engine requests: model choice, step
routing, tool calls and the server-side action loop share the request's state.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import uuid
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Mapping

from tasktune.errors import ConfigError, DataError

from tasktune.tuning.inference.engine import Engine, Event, Request, SamplingParams
from tasktune.tuning.templating import FrameTooLong, PromptTooLong, RenderError
from .protocol import ChatRequest, Message, shown
from .admission import Admission
from .actions.loading import BUILTIN_ACTIONS, load_actions  # noqa: F401 (were defined here)
from .actions.runner import ActionFailed, ActionRunner, ActionsClosed, ActionTimedOut
from .client_tools import arguments_error
from .reading import json_value
from .window import overflow_message

if TYPE_CHECKING:
    from .tools import ToolCall

AUTO = "auto"


RETRYABLE = frozenset({503})
"""The 5xx statuses of the service that a retry can cure (503: the server is shutting down; another replica or the
restarted server answers). Every other 5xx it raises is a deterministic failure of this request."""


MAX_PROMPT_CHARS = 80_000
"""Most characters a request's messages may hold together: the prompt templates render at most render.MAX_TEXT
(100,000) characters, frames and round markers included; a 100,001-character message was a 500 (the sandbox's
refusal escaped as a ToolError). Far above any prompt the default token limit (4,096) admits."""


class RequestError(ValueError):
    """A request the client must fix: HTTP 400 (or `status`), OpenAI's error shape.

    A 5xx outside RETRYABLE (and not marked `retry`) carries `x-should-retry: false`: the openai clients (Python,
    Node) retry a 5xx twice by default and obey that header. The same request fails the same way again (a forced
    tool call the answer does not parse as, a failed action, which would also run again: a side effect), so three
    tries only triple the wait."""

    def __init__(self, message: str, *, status: int = 400, code: str | None = None, param: str | None = None,
                 type_: str = "invalid_request_error", headers: dict[str, str] | None = None, retry: bool = False):
        super().__init__(message)
        self.status, self.code, self.param, self.type = status, code, param, type_
        self.headers = headers
        if status >= 500 and status not in RETRYABLE and not retry:
            self.headers = {"x-should-retry": "false", **(headers or {})}


def generation_failed(error: str | None) -> RequestError:
    """The 500 of a request whose generation failed in the engine (its prefill, its sampling: the same request
    fails the same way again, so clients are told not to retry), except where memory ran out: the batch beside it
    changes, and a retry may fit (no x-should-retry header, so the openai clients retry)."""
    message = f"generation failed: {error or 'unknown error'}"
    if error and error.startswith("OutOfMemoryError"):
        return RequestError(message, status=500, type_="server_error", code="out_of_memory", retry=True)
    return RequestError(message, status=500, type_="server_error", code="generation_failed")


@dataclass(frozen=True)
class Limits:
    max_prompt_tokens: int = 4096
    max_tokens: int = 1024
    max_body_bytes: int = 1 << 20
    max_queue: int = 256  # requests that may wait for a batch slot; more get 429
    read_timeout: float = 30.0  # seconds a client has for a request's head, and again for its body
    max_head_bytes: int = 32 * 1024  # a request line and headers over this: 431 (serve/connections.py)


@dataclass
class Turn:
    """One model call: the run (None = base), the prompt text as the model sees it, and the step it is for; `then`:
    the model calls whose answers follow this one's, a line each (the other results of parallel tool calls)."""

    run: str | None
    query: str
    history: list[list[str]]
    step: str | None = None
    ids: list[int] | None = field(default=None, compare=False, repr=False)  # the prompt's tokens (`Service.encode`)
    then: list[Turn] = field(default_factory=list, compare=False, repr=False)

    def calls(self) -> list[Turn]:
        """This model call and those that follow it."""
        return [self, *self.then]


@dataclass
class Answer:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    executed: list[dict[str, Any]] = field(default_factory=list)
    model: str = ""
    """The served name that answered: a run's, or the base's (what `auto` resolved to)."""


class Service:
    """Everything between the HTTP layer and the engine (one per server)."""

    def __init__(self, engine: Engine, *, base_name: str, tools: dict[str, Any] | None = None,
                 router: Callable[[str], tuple[str, str] | None] | None = None,
                 actions: Mapping[str, Callable[..., Any]] | None = None, limits: Limits = Limits()):
        self.engine, self.bank = engine, engine.bank
        self.tokenizer = self.bank.tokenizer
        self.base_name = base_name
        self.tools = tools or {}  # run name -> TaskTools of its spec
        self.router = router
        self.actions = actions or {}  # an ActionRunner (a plain REGISTRY dict is wrapped in one)
        self.limits = limits
        self.active = 0  # model calls (queued or decoding) and server-side actions in flight
        self.admitted = 0  # chat requests admitted and not yet answered (what --max-queue counts)
        self.shutting_down = False
        self.shutdown_outcomes = {"drained": 0, "cancelled": 0}  # how the calls ended after shutdown began
        self._mail: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> its _Mailbox

    @property
    def actions(self) -> ActionRunner:
        """The server-side actions (--actions): tool name -> function, and how they run."""
        return self._actions

    @actions.setter
    def actions(self, registry: Mapping[str, Callable[..., Any]]) -> None:
        self._actions = registry if isinstance(registry, ActionRunner) else ActionRunner(registry)

    def cut(self, reason: str) -> None:
        """The shutdown timeout (or a second signal): cancel every model call and end every action still waited
        for; their requests get 503 `shutting_down` (a stream, its error event)."""
        self.engine.close(reason)
        self.actions.close(reason)

    def begin_shutdown(self) -> int:
        """Count from now how model calls end (drained or cancelled); returns how many are in flight."""
        self.shutting_down = True
        return self.active

    def admit(self) -> Admission:
        """Refuse a new chat request with 429 (OpenAI's rate-limit shape, Retry-After: 1) while the batch is
        full and `max_queue` requests already wait for a slot: a burst beyond what the server can hold is
        told to come back, instead of queueing without bound (memory, and latencies no client waits for).
        The openai client retries a 429 by itself, after Retry-After.

        The request is counted here, in the same step as the check (a burst's requests all passed the check
        while the count was made later, at their first model call), until the returned Admission is released:
        when its answer or stream has ended, whichever way."""
        waiting = self.admitted - self.engine.max_batch_size
        if waiting >= self.limits.max_queue:
            raise RequestError(f"the server is busy: {self.engine.max_batch_size} requests decoding and "
                               f"{max(waiting, 0)} waiting (--max-queue {self.limits.max_queue}); retry shortly",
                               status=429, code="rate_limit_exceeded", type_="requests",
                               headers={"Retry-After": "1"})
        self.admitted += 1
        return Admission(self)

    def _ended(self, cancelled: bool) -> None:
        self.active -= 1
        if self.shutting_down:
            self.shutdown_outcomes["cancelled" if cancelled else "drained"] += 1

    # -- models -------------------------------------------------------------------------------------------
    def model_names(self) -> list[str]:
        return [*self.bank.runs, self.base_name, AUTO]

    def served_name(self, turn: Turn) -> str:
        """The model name a response reports: the run that answered, or the base (as OpenAI reports the snapshot
        that answered an alias, `auto` resolves to the one that answered)."""
        return turn.run or self.base_name

    def _run_of(self, model: str) -> str | None:
        if model in self.bank.runs:
            return model
        if model == self.base_name:
            return None
        raise RequestError(f"The model `{shown(model)}` does not exist; served: {', '.join(self.model_names())}",
                           status=404, code="model_not_found", param="model")

    # -- turning messages into a model call -----------------------------------------------------------------
    def plan(self, request: ChatRequest) -> Turn:
        """The run, prompt and step for the request's last message (a user message or a tool result). Text the
        frames cannot take (a template refuses output over render.MAX_TEXT characters) is the client's 400."""
        chars = sum(map(_characters, request.messages))
        if chars > MAX_PROMPT_CHARS:
            raise RequestError(overflow_message(f"{MAX_PROMPT_CHARS} characters of messages (this server's limit)",
                                                f"the messages hold {chars} characters"),
                               param="messages", code="context_length_exceeded")
        try:
            return self._plan(request)
        except DataError as exc:  # ToolError too: the request's text or result does not fit a frame
            raise RequestError(f"messages: {exc}", param="messages") from None

    def _plan(self, request: ChatRequest) -> Turn:
        messages = [m for m in request.messages if m.role not in ("system", "developer")]
        if not messages:
            raise RequestError("messages: at least one user message is needed", param="messages")
        last = messages[-1]
        if last.role == "tool":
            turn = self._tool_turn(request, messages)
            if forced_tool(request) is not None:  # the result's step answers in text: no call can be promised
                raise RequestError(f"tool_choice asks for a tool call, but a tool result is answered by step "
                                   f"{turn.step!r}, which calls no tool; send tool_choice auto", param="tool_choice")
            return turn
        if last.role != "user":
            at = f"messages[{_index(request, last)}]"
            raise RequestError(f"{at}: the last message must be from the user or a tool, not {last.role!r}",
                               param=f"{at}.role")
        text = _text(last)
        run, step, query = self._route(request.model, text)
        forced = forced_tool(request)
        if forced is not None:
            offered = _offered(request) if request.tools else None
            run, step, query = self._force_tool_step(request.model, run, step, text, forced, offered)
        return Turn(run, query, self._history(messages[:-1], run), step)

    def _force_tool_step(self, model: str, run: str | None, step: str | None, text: str, forced: str,
                         offered: set[str] | None = None) -> tuple[str, str, str]:
        """tool_choice "required" (forced == "*") or naming a function: the turn goes to a step whose answer is that
        tool's call (plain text is framed for it whatever the router said); 400 where no served step can call it.
        "required" with the request's own `tools` means one of those (`offered`): a client that offers only tools
        of its own (pydantic-ai's and llama-index's structured output offer their schema) is told before any
        generation that the model cannot call them, as a named tool is."""
        wanted = "any tool" if forced == "*" else f"the tool {forced!r}"
        if forced == "*" and offered is not None:
            wanted = f"a call of one of the request's tools ({', '.join(sorted(offered))})"

        def calls(action) -> bool:
            return forced in ("*", action.name) and (offered is None or action.name in offered)

        if run is None:
            owners = sorted(n for n, t in self.tools.items() if any(calls(a) for a in t.spec.actions))
            if model != AUTO or len(owners) != 1:
                why = f"model {model} has no such tool" if model != AUTO else (
                    f"with model auto, {len(owners)} served runs can ({', '.join(owners)}); name one as the model"
                    if owners else "with model auto, no served run can call it")
                raise RequestError(f"tool_choice asks for {wanted}, but {why}", param="tool_choice")
            run, step = owners[0], None
        tools = self.tools.get(run)
        steps = sorted({a.step for a in tools.spec.actions if calls(a)}) if tools else []
        if not steps:
            raise RequestError(f"tool_choice asks for {wanted}, but model {run} has no such tool "
                               f"(its spec's actions: {', '.join(a.name for a in tools.spec.actions) if tools else 'none'})",
                               param="tool_choice")
        framed = tools.match(text)
        if framed is not None:  # content framed as in the data: its step is what the client asked for
            if framed.step not in steps:
                raise RequestError(f"tool_choice asks for {wanted}, but the content is framed for step "
                                   f"{framed.step!r}, whose answer calls no such tool", param="tool_choice")
            return run, framed.step, text
        if step not in steps:
            if len(steps) > 1:
                raise RequestError(f"tool_choice: several steps of model {run} call {wanted} ({', '.join(steps)}); "
                                   f"name the function", param="tool_choice")
            step = steps[0]
        return run, step, tools.frame(step, utterance=text)

    def _route(self, model: str, text: str) -> tuple[str | None, str | None, str]:
        if model == AUTO:
            claims = [(name, m) for name, tools in self.tools.items() if (m := tools.match(text)) is not None]
            if len(claims) > 1:
                raise RequestError(f"model auto: the request matches the frames of several runs "
                                   f"({', '.join(n for n, _ in claims)}); name one of them as the model",
                                   param="model", code="ambiguous_model")
            if claims:
                return claims[0][0], claims[0][1].step, text
            return None, None, text  # no frame matches: the base model, without a prefix
        run = self._run_of(model)
        tools = self.tools.get(run) if run else None
        if tools is None:
            return run, None, text
        matched = tools.match(text)
        if matched is not None:
            return run, matched.step, text
        step = None
        if self.router is not None:  # a label that is no step of this run's spec means "no step" (router.py)
            routed = self.router(text)
            step = routed[1] if routed and routed[0] in (run, None) and tools.has_step(routed[1]) else None
        if step is None:
            step = tools.route(text)
        if step is None:
            return run, None, text
        return run, step, tools.frame(step, utterance=text)

    def _history(self, earlier: list[Message], run: str | None) -> list[list[str]]:
        """[query, answer] pairs of the earlier user/assistant turns (tool round trips included as framed)."""
        pairs, pending = [], None
        for message in earlier:
            if message.role == "user":
                pending = _text(message)
            elif message.role == "assistant" and pending is not None:
                pairs.append([pending, _text(message)])
                pending = None
        return pairs

    def _tool_turn(self, request: ChatRequest, messages: list[Message]) -> Turn:
        """The tool results that end the messages (ChatRequest checked that they answer every call of the assistant
        message before them): each framed in its result step, answered in the order of the calls, whatever the
        order of the results, a line each (the answer of the first, `then` the others'). Only the last result was
        answered: of two parallel calls' results, the first was dropped without a word, and swapping them changed
        the answer."""
        trailing = []
        for message in reversed(messages):
            if message.role != "tool":
                break
            trailing.append(message)
        turns = sorted((self._result_turn(request, messages, m) for m in trailing), key=lambda found: found[0])
        first = turns[0][1]
        first.then = [turn for _, turn in turns[1:]]
        return first

    def _result_turn(self, request: ChatRequest, messages: list[Message],
                     result_msg: Message) -> tuple[tuple[int, int], Turn]:
        """One tool result's turn, with where its call is (the assistant message's index, the call's)."""
        # the call it answers: ChatRequest refused a tool message that answers no open call of the assistant
        # message before it (_a_conversation_openai_would_take), so there is one
        asked, k, call = next((m, k, tc) for m in reversed(messages[:-1]) for k, tc in enumerate(m.tool_calls or ())
                              if tc.id == result_msg.tool_call_id)
        at = _index(request, result_msg)
        function = f"messages[{_index(request, asked)}].tool_calls[{k}].function"
        try:
            arguments = json_value(call.function.arguments)
        except ValueError as exc:  # not JSON, nested too deeply, an integer of thousands of digits
            raise RequestError(f"{function}.arguments of tool call {call.id!r} ({call.function.name}) are not usable "
                               f"JSON: {exc}", param=f"{function}.arguments") from None
        result = tool_result(_text(result_msg), f"messages[{at}].content", call.function.name)
        run = self._tool_owner(request.model, call.function.name, f"{function}.name")
        prompt, step = self._result_prompt(run, call.function.name, arguments, result, f"messages[{at}].content",
                                           f"{function}.arguments")
        return (_index(request, asked), k), Turn(run, prompt, [], step)

    def _result_prompt(self, run: str, name: str, arguments: Any, result: Any, where: str = "",
                       called: str = "") -> tuple[str, str]:
        """The result step's prompt for a function's result, and that step; arguments outside the tool's parameter
        schema (`called`: where they are) or a bad result (`where`) are the client's 400. The arguments are framed
        into the summary's prompt as they are: `check: "{{7*7}}"`, outside the check's enum, reached the frame."""
        from .tools import ToolCall

        tools = self.tools[run]
        if not isinstance(arguments, dict):
            raise RequestError(f"{called or 'tool ' + name}: the call's arguments must be a JSON object",
                               param=called or "messages")
        wrong = tools.argument_error(name, arguments)
        if wrong is not None:
            raise RequestError(f"{called or 'tool ' + name}: the arguments of tool {name} do not fit its "
                               f"parameters: {wrong}", param=called or "messages")
        try:
            return tools.result_prompt(ToolCall(name, arguments), result), tools.action(name).result_step
        except (ValueError, KeyError, TypeError) as exc:
            raise RequestError(f"{where}: {exc}" if where else str(exc), param=where or "messages") from None

    def _tool_owner(self, model: str, tool: str, where: str = "messages") -> str:
        owners = [n for n, t in self.tools.items() if any(a.name == tool for a in t.spec.actions)]
        if model != AUTO:
            run = self._run_of(model)
            if run in owners:
                return run
            raise RequestError(f"{where}: model {model} has no tool named {tool!r}", param=where)
        if len(owners) != 1:
            raise RequestError(f"tool {tool!r} belongs to {len(owners)} served runs; name the model",
                               param="model")
        return owners[0]

    # -- running it -----------------------------------------------------------------------------------------
    def encode(self, turn: Turn) -> list[int]:
        """The turn's prompt tokens, as training cut them; encoded once a turn (`sampling` checks the length, before
        a stream starts, and the model call submits the same ids)."""
        from tasktune.tuning.data import encode_prompts, format_prompt

        if turn.ids is not None:
            return turn.ids
        spec = self.bank.runs[turn.run] if turn.run else next(iter(self.bank.runs.values()))
        template = spec.prompt_template
        try:
            prompt = format_prompt(self.tokenizer, turn.query, turn.history, template=template)
        except (FrameTooLong, PromptTooLong):  # the template's output bound (render.MAX_TEXT), over many messages
            raise RequestError(_frame_too_long(turn), param="messages", code="context_length_exceeded") from None
        except RenderError as exc:  # its message names the template's path (the server's own): the reason alone
            raise RequestError(f"the prompt template cannot frame these messages ({exc.reason})",
                               param="messages") from None
        (ids,) = encode_prompts(self.tokenizer, [prompt], template)
        if len(ids) > self.limits.max_prompt_tokens:
            limit = f"{self.limits.max_prompt_tokens} prompt tokens (this server's --max-prompt-tokens)"
            raise RequestError(overflow_message(limit, f"your messages resulted in {len(ids)} tokens"),
                               param="messages", code="context_length_exceeded")
        # cut as training cut (eval does the same, for the base pass too: the longest of the runs' cuts), and
        # never past the window less one answer token (serve/window.py warned at startup where that cuts more)
        keep = self.bank.runs[turn.run].max_source_length if turn.run else \
            max(r.max_source_length for r in self.bank.runs.values())
        room = self.room(turn.run)
        turn.ids = ids[-(keep if room is None else min(keep, room - 1)):]
        return turn.ids

    def room(self, run: str | None) -> int | None:
        """Positions for the prompt and the answer of a model call of `run` (None: the base model): the base's
        context window less the run's prefix, whose keys/values take positions 0..P-1 (its text starts at P, as in
        training); None where the base's config names no window."""
        context = self.bank.context
        return None if context is None else context - (self.bank.runs[run].pre_seq_len if run else 0)

    def sampling(self, request: ChatRequest, turn: Turn) -> SamplingParams:
        """The engine's parameters; a limit over the server's, or one that the prompt (encoded here: its 400s come
        before any stream starts) leaves no room for in the context window, is refused under the field the client
        sent (vLLM's check and message). Without a limit, the default is cut to what the window leaves."""
        field = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
        limit = getattr(request, field)
        if limit is not None and limit > self.limits.max_tokens:
            raise RequestError(f"{field}={limit} is over this server's limit of {self.limits.max_tokens}",
                               param=field, code="integer_above_max_value")
        default = self.bank.runs[turn.run].max_target_length if turn.run else 128
        _refuse_unsupported(request)
        for call in turn.calls():  # (each result of parallel tool calls is a model call of its own)
            self._fits(call, limit, field)
        params = SamplingParams(max_new_tokens=min(limit or default, self.limits.max_tokens),
                                temperature=float(request.temperature or 0.0),
                                top_p=1.0 if request.top_p is None else float(request.top_p),  # 0: top token only
                                seed=request.seed, stop=request.stops(), ignore_eos=request.ignore_eos is True)
        return self._fitted(turn, params)  # a default answer longer than the window leaves

    def _fits(self, turn: Turn, limit: int | None, field: str) -> None:
        """400 `context_length_exceeded` when the turn's prompt and `limit` new tokens do not fit the window."""
        prompt, room = len(self.encode(turn)), self.room(turn.run)
        if limit is not None and room is not None and prompt + limit > room:
            prefix = self.bank.context - room
            window = f"{room} tokens" + (f" (the base model's {self.bank.context} positions less the {prefix} of "
                                         f"its prefix)" if prefix else "")
            asked = f"you requested {prompt + limit} tokens ({prompt} in the messages, {limit} in the completion)"
            raise RequestError(overflow_message(window, asked, f"the messages or {field}",
                                                "the prompt is too long for that completion"),
                               param=field, code="context_length_exceeded")

    def _fitted(self, turn: Turn, params: SamplingParams) -> SamplingParams:
        """`params` with max_new_tokens cut to what the window leaves after the turn's prompt: a default answer,
        and the result step's call of the server-side action loop, which reuses the request's params (checked by
        `sampling` against the first call's prompt only)."""
        room = self.room(turn.run)
        left = None if room is None else room - len(self.encode(turn))
        return params if left is None or params.max_new_tokens <= left else \
            replace(params, max_new_tokens=left)

    async def stream(self, turn: Turn, params: SamplingParams) -> AsyncIterator[Event]:
        """Events of one model call; cancelling the iteration (client gone) frees the engine slot."""
        pending: collections.deque[Event] = collections.deque()
        ready = asyncio.Event()

        def push(event: Event) -> None:  # on the event loop
            pending.append(event)
            ready.set()

        loop = asyncio.get_running_loop()
        emit = self._mail.setdefault(loop, _Mailbox(loop)).sender(push)
        request = Request(self.encode(turn), turn.run, self._fitted(turn, params), emit=emit)
        self.active += 1
        ended = False
        try:
            self.engine.submit(request)
            while True:
                while not pending:
                    ready.clear()
                    await ready.wait()
                event = _coalesce(pending)
                if event.finish_reason:  # counted before the last yield: the consumer may stop iterating here
                    ended = True
                    self._ended(cancelled=event.finish_reason == "cancelled")
                yield event
                if event.finish_reason:
                    return
        finally:
            request.cancel()
            if not ended:  # the client went away (or the task was cancelled)
                self._ended(cancelled=self.engine.closed)

    async def complete(self, turn: Turn, params: SamplingParams) -> Answer:
        parts, last = [], Event()
        async for event in self.stream(turn, params):
            parts.append(event.text)
            last = event
        if last.finish_reason == "error":  # this request's own failure: the stream's error event, as a 500
            raise generation_failed(last.error)
        if last.finish_reason == "cancelled":  # only the server's shutdown cancels a call someone still awaits
            raise RequestError(last.error or "the server is shutting down", status=503, type_="server_error",
                               code="shutting_down")
        # the text as the stream sends it: exactly up to a stop string, a trailing space included (OpenAI's and
        # vLLM's answers are not stripped; eval strips its own, tuning/evaluation/metrics.py)
        text = last.full_text if last.full_text is not None else "".join(parts)
        return Answer(text, last.finish_reason or "stop", last.prompt_tokens, last.completion_tokens)

    async def complete_all(self, turn: Turn, params: SamplingParams) -> Answer:
        """The answers of the turn's model calls (`Turn.then`: parallel tool calls' results), a line each."""
        answer = await self.complete(turn, params)
        for more in turn.then:
            nxt = await self.complete(more, params)
            finish = "length" if "length" in (answer.finish_reason, nxt.finish_reason) else nxt.finish_reason
            answer = Answer(f"{answer.text}\n{nxt.text}", finish, answer.prompt_tokens + nxt.prompt_tokens,
                            answer.completion_tokens + nxt.completion_tokens)
        return answer

    def tool_calls(self, turn: Turn, text: str, request: ChatRequest | None = None,
                   finish_reason: str | None = None) -> list[dict[str, Any]]:
        """OpenAI tool calls parsed from an answer of a step that has an action (none otherwise). When the request
        declares tools, only calls of tools it declared: OpenAI never calls a tool the client did not offer, and a
        client that offered its own (LangChain's `with_structured_output(method="function_calling")` offers one,
        its schema) fails on a call it cannot dispatch; the answer is then plain text. No call either on an argument
        the request never says (serve/tools.py `said`), unless tool_choice forces one: the client asked for a call
        whatever the text. A forced call the answer does not parse as is a 500, unless max_tokens cut the answer
        (`finish_reason` "length"): then, as OpenAI does, the cut text with finish_reason "length"."""
        tools = self.tools.get(turn.run) if turn.run else None
        if tools is None or turn.step is None:
            return []
        forced = forced_tool(request) if request is not None else None
        calls = tools.tool_calls(turn.step, text, turn.query if forced is None else None)
        if request is not None and request.tools:
            offered = _offered(request)
            calls = [call for call in calls if call.name in offered]
        if forced not in (None, "*"):
            calls = [call for call in calls if call.name == forced]
        if forced is not None and not calls and finish_reason != "length":
            # OpenAI guarantees a call under tool_choice required/named; this model's answer did not parse as one.
            # A 500, not a 200 without the call the client was promised (the answer is in the message)
            raise RequestError(f"tool_choice asks for {'a tool call' if forced == '*' else f'a call of {forced!r}'}, "
                               f"but the model's answer does not parse as one: {text[:200]!r}", status=500,
                               type_="server_error", code="tool_call_failed")
        if request is not None and request.tools:
            _hold_strict_tools(request, calls)
        return [call.openai(f"call_{uuid.uuid4().hex[:24]}") for call in calls]

    async def answer(self, request: ChatRequest) -> Answer:
        """A whole non-streamed answer; runs server-side actions when registered and the client sent no tools."""
        turn = self.plan(request)
        params = self.sampling(request, turn)
        answer = await self.complete_all(turn, params)
        answer.model = self.served_name(turn)
        if request.tool_choice == "none":
            return answer
        answer.tool_calls = self.tool_calls(turn, answer.text, request, answer.finish_reason)
        if answer.tool_calls and self.actions and not request.tools:
            return await self._run_actions(turn, answer, params)
        if answer.tool_calls:
            answer.finish_reason = "tool_calls"
        return answer

    def runs_actions(self, request: ChatRequest, turn: Turn) -> bool:
        """Whether the server itself runs the tools of this turn's step (--actions, and the client sent none)."""
        tools = self.tools.get(turn.run) if turn.run else None
        return bool(self.actions and tools is not None and not request.tools and request.tool_choice != "none"
                    and any(a.step == turn.step and a.name in self.actions for a in tools.spec.actions))

    async def execute(self, turn: Turn, calls: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Turn | None]:
        """Run the calls with the registered actions: what was run (with results) and the result step's turn
        (None when a call has no registered action: the client then gets the calls). A failure of the action,
        or a result the spec cannot take, is the server's (502), never the client's 400."""
        if not all(call["function"]["name"] in self.actions for call in calls):
            return [], None  # (checked before any runs: an action ran, then its call went to the client to run again)
        executed, turns = [], []
        for call in calls:
            name = call["function"]["name"]
            arguments = json.loads(call["function"]["arguments"])
            result = await self._act(name, arguments)
            prompt, step = self._action_result_prompt(turn.run, name, arguments, result)
            executed.append({"id": call["id"], "name": name, "arguments": arguments, "result": result})
            turns.append(Turn(turn.run, prompt, [], step))
            self._encode_result(turns[-1], name)
        if not turns:
            return executed, None
        turns[0].then = turns[1:]  # several calls: each result's answer, a line each (the last one's alone before)
        return executed, turns[0]

    def _encode_result(self, turn: Turn, name: str) -> None:
        """The result step's prompt encoded now: one over --max-prompt-tokens (a result of long values) is the
        action's 502, not the client's 400 `context_length_exceeded`, and not in its words (window.overflow_message:
        LiteLLM would raise its ContextWindowExceededError for the server's own failure)."""
        try:
            self.encode(turn)
        except RequestError:
            raise RequestError(f"action {name} returned a result too long to answer: the prompt of step {turn.step!r} "
                               f"built from it is over this server's --max-prompt-tokens "
                               f"({self.limits.max_prompt_tokens}) or what its template can build", status=502,
                               type_="server_error", code="action_failed") from None

    async def _act(self, name: str, arguments: dict[str, Any]) -> Any:
        """One action's result (serve/actions/runner.py), counted in flight as a model call is (the shutdown's
        summary counts it). 502 `action_failed` when it raised (whatever it raised: SystemExit too) or returned
        what JSON cannot hold; 504 `action_timeout` past --action-timeout; 503 `shutting_down` when the shutdown
        timeout cut it. All but the 503 carry x-should-retry: false: a retry would run the action again."""
        self.active += 1
        cut = False
        try:
            return await self.actions.run(name, arguments)
        except ActionsClosed as exc:
            cut = True
            raise RequestError(str(exc), status=503, type_="server_error", code="shutting_down") from None
        except ActionTimedOut as exc:
            raise RequestError(str(exc), status=504, type_="server_error", code="action_timeout") from None
        except ActionFailed as exc:
            raise RequestError(str(exc), status=502, type_="server_error", code="action_failed") from None
        finally:
            self._ended(cancelled=cut)

    def _action_result_prompt(self, run: str, name: str, arguments: dict[str, Any], result: Any) -> tuple[str, str]:
        """The result step's prompt for a server-side action's result; a result the spec cannot take (not an
        object, a field missing or of the wrong type) is the action's fault: 502 naming the action and the field."""
        from .tools import ToolCall

        tools = self.tools[run]
        try:
            return tools.result_prompt(ToolCall(name, arguments), result), tools.action(name).result_step
        except (ValueError, KeyError, TypeError) as exc:  # ToolError: a field missing or mistyped; a frame's refusal
            raise RequestError(f"action {name} returned a result its tool cannot take: {exc}", status=502,
                               type_="server_error", code="action_failed") from None

    async def _run_actions(self, turn: Turn, answer: Answer, params: SamplingParams) -> Answer:
        executed, next_turn = await self.execute(turn, answer.tool_calls)
        if next_turn is None:
            answer.finish_reason = "tool_calls"  # not ours to run: the client gets the calls
            return answer
        summary = await self.complete_all(next_turn, params)
        return Answer(summary.text, summary.finish_reason, answer.prompt_tokens + summary.prompt_tokens,
                      answer.completion_tokens + summary.completion_tokens, [], executed, answer.model)


def tool_result(text: str, where: str, tool: str) -> dict[str, Any]:
    """A tool message's content as the result's fields: a JSON object, or the same written as a Python dict
    literal (llama-index's FunctionAgent sends `str(result)`: single quotes, True/None), read with
    ast.literal_eval (literals only, nothing runs) and then held to the JSON checks. Anything else is the
    client's 400, naming the message."""
    import ast

    try:
        result = json_value(text)
    except ValueError as exc:
        result, error = None, exc
        if text.lstrip().startswith("{"):
            try:
                literal = ast.literal_eval(text)
                result = json_value(json.dumps(literal, allow_nan=False)) if isinstance(literal, dict) else None
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                pass
        if result is None:
            raise RequestError(f"{where}: the result of tool {tool} must be a JSON object of its fields; "
                               f"this is not JSON ({error})", param=where) from None
    if not isinstance(result, dict):
        raise RequestError(f"{where}: the result of tool {tool} must be a JSON object of its fields, not "
                           f"{type(result).__name__ if result is not None else 'null'}", param=where)
    return result


def forced_tool(request: ChatRequest) -> str | None:
    """What tool_choice forces: None ("auto", "none" or unset), "*" ("required") or a function's name
    ({"type": "function", "function": {"name": ...}}, which must be among the request's tools when it sends some).
    Other values are refused when the request is read (ChatRequest._tool_choice_shape)."""
    choice = request.tool_choice
    if choice is None or choice in ("auto", "none"):
        return None
    if choice == "required":
        return "*"
    name = choice["function"]["name"]
    if request.tools is not None:
        if name not in _offered(request):
            raise RequestError(f"tool_choice names {name!r}, which is not among the request's tools",
                               param="tool_choice", code="invalid_value")
    return name


def _offered(request: ChatRequest) -> set[str]:
    """The names of the functions a request declares in `tools` (their shape checked when the request was read:
    ChatRequest._tools_are_functions)."""
    return {t["function"]["name"] for t in request.tools or ()}


def _hold_strict_tools(request: ChatRequest, calls: list[ToolCall]) -> None:
    """A call of a tool the client declared with `"strict": true` whose arguments do not fit its `parameters` is a
    500 naming the mismatch: OpenAI guarantees such arguments match, and this server cannot constrain its answers
    (the model says what the spec's action takes), so a 200 would hand the client arguments it was promised could
    not happen. Refusing `strict` up front instead would fail every call of the clients that always send it (the
    openai SDK's pydantic_function_tool, the Agents SDK) even where the arguments do fit. Without strict, as
    OpenAI's own non-strict calls, the arguments come as the model gave them (docs/serve.md)."""
    declared = {t["function"]["name"]: t["function"] for t in request.tools or ()}
    for call in calls:
        function = declared.get(call.name, {})
        wrong = arguments_error(function.get("parameters"), call.arguments) if function.get("strict") else None
        if wrong is not None:
            raise RequestError(f"tool {call.name} is declared strict, but the model's arguments "
                               f"{json.dumps(call.arguments, ensure_ascii=False)[:200]} do not fit its parameters: "
                               f"{wrong} (this server cannot constrain answers to a schema; without strict the "
                               f"arguments come as the model gives them)", status=500, type_="server_error",
                               code="tool_arguments_invalid")


def _refuse_unsupported(request: ChatRequest) -> None:
    """400 `unsupported_value` (OpenAI's code for a value a model does not take) for the first parameter whose
    value this server cannot honour (protocol.UNHONOURED: which ones, and why)."""
    found = request.unhonoured()
    if found is not None:
        raise RequestError(found[1], param=found[0], code="unsupported_value")


def _index(request: ChatRequest, message: Message) -> int:
    """The index of `message` (the object itself) in the request's messages, for the `param` an error names."""
    return next(i for i, m in enumerate(request.messages) if m is message)


def _frame_too_long(turn: Turn) -> str:
    """Why a turn's messages, under the limit on their text (MAX_PROMPT_CHARS), still frame into more text than a
    prompt template may build: the template's own text around each turn (a few characters a turn, thousands of
    turns). The template's error named its file on this server."""
    from tasktune.datagen.render import MAX_TEXT

    chars = len(turn.query) + sum(len(q) + len(a) for q, a in turn.history)
    return overflow_message(f"the {MAX_TEXT:,} characters a prompt template may build",
                            f"the messages' {chars:,} characters of text, with the template's own text around each "
                            f"of their {len(turn.history) + 1:,} turns, frame into more",
                            reduce="the messages: send fewer or shorter messages")


def _characters(message: Message) -> int:
    """The characters a message brings to the prompt: its text (or text parts) and its tool calls' arguments."""
    content = message.content or ""
    text = len(content) if isinstance(content, str) else \
        sum(len(part["text"]) for part in content if isinstance(part.get("text"), str))
    return text + sum(len(call.function.arguments) for call in message.tool_calls or ())


def _text(message: Message) -> str:
    return message.text()  # its parts were checked when the request was read (ChatRequest: 400 naming the message)


def load_tools(runs: dict[str, Any], specs: dict[str, str],
               warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)) -> dict[str, Any]:
    """TaskTools of every run: its spec from `specs[name]` (path or built-in name), else the built-in spec its
    data was generated from (stats.json's `spec`), else none: the run then answers plain text only, which `warn`
    says at startup (a moved data folder turned tools off silently; a forced call then said "actions: none")."""
    from tasktune.datagen.spec import builtin_specs, load_spec

    from .tools import TaskTools

    out = {}
    builtin = builtin_specs()
    for name, run in runs.items():
        source = specs.get(name)
        if source is None:
            stats = Path(run.data) / "stats.json"
            try:
                spec_name = json.loads(stats.read_text(encoding="utf-8")).get("spec")
            except (OSError, ValueError, AttributeError):
                spec_name = None
            source = spec_name if spec_name in builtin else None
            if source is None:
                why = (f"its data's {stats} names no built-in spec" if stats.is_file()
                       else f"its data folder's {stats} is missing")
                warn(f"tasktune serve: run {name}: its spec is unknown ({why}); it answers plain text only, with "
                     f"no frames, routing or tools: give it with --spec {name}=SPEC")
        if source is not None:
            out[name] = TaskTools.from_spec(load_spec(source))
    unknown = sorted(set(specs) - set(runs))
    if unknown:
        raise ConfigError(f"--spec {unknown[0]}=...: no served run of that name ({', '.join(runs)})")
    return out


__all__ = ["Service", "RequestError", "Limits", "Turn", "Answer", "load_tools", "load_actions", "DataError"]


def _coalesce(pending: "collections.deque[Event]") -> Event:
    """The first waiting event merged with the text events behind it: when the event loop falls behind the engine
    (many streams on few cores), a stream then sends one chunk for the tokens of several steps instead of one chunk
    a token, as vLLM's stream interval does. A finishing event is merged too (its reason and counts win); an error
    or a cancellation is never merged, so the text before it is not lost."""
    event = pending.popleft()
    while event.finish_reason is None and pending and pending[0].finish_reason not in ("error", "cancelled"):
        nxt = pending.popleft()
        event = Event(text=event.text + nxt.text, finish_reason=nxt.finish_reason, prompt_tokens=nxt.prompt_tokens,
                      completion_tokens=nxt.completion_tokens, error=nxt.error, full_text=nxt.full_text)
    return event


class _Mailbox:
    """Engine events to the event loop with one wake-up per batch of events, not one per token: the engine thread
    appends (deque appends are atomic) and schedules a flush only when none is pending, so a decode step of N rows
    costs the loop one wake-up (a self-pipe write and a loop turn) instead of N."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._box: collections.deque = collections.deque()
        self._scheduled = False

    def sender(self, push: Callable[[Event], None]) -> Callable[[Event], None]:
        def emit(event: Event) -> None:  # on the engine thread
            self._box.append((push, event))
            if not self._scheduled:
                self._scheduled = True
                try:
                    self._loop.call_soon_threadsafe(self._flush)
                except RuntimeError:  # the event loop is gone (the server stopped): nobody is listening
                    self._scheduled = False
        return emit

    def _flush(self) -> None:  # on the event loop
        self._scheduled = False  # before draining: an event appended after this schedules the next flush
        while self._box:
            push, event = self._box.popleft()
            push(event)
