// The chat page of `tasktune serve`: talks to the server's OpenAI-compatible API (/v1/models,
// /v1/chat/completions with stream: true). No build step, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const els = {
  form: $("chat"), model: $("model"), message: $("message"), send: $("send"), stop: $("stop"),
  settings: $("settings"), reload: $("reload"), reset: $("reset"), transcript: $("transcript"), status: $("status"),
  apiKey: $("api-key"), temperature: $("temperature"), maxTokens: $("max-tokens"),
};

// The conversation sent with every request: [{role, content}].
let history = [];
let controller = null; // AbortController of the request in flight
let epoch = 0; // bumped by "New conversation": a turn still in flight then belongs to no conversation

function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const key = els.apiKey.value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

// The API's error shape {"error": {"message", "type", "code"}} -> one line of text.
async function errorText(response) {
  if (response.status === 401) els.settings.open = true; // where the API key goes
  let detail = response.statusText || "request failed";
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) detail = body.error.message;
    else if (body && typeof body.detail === "string") detail = body.detail;
  } catch (_) { /* not JSON: keep the status text */ }
  return `HTTP ${response.status}: ${detail}`;
}

function bubble(cls, text) {
  const div = document.createElement("div");
  div.className = "message " + cls;
  div.textContent = text || "";
  els.transcript.appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function showError(text) {
  const div = bubble("error", text);
  div.setAttribute("role", "alert");
  return div;
}

function pretty(value) {
  if (typeof value === "string") {
    try { return JSON.stringify(JSON.parse(value), null, 2); } catch (_) { return value; }
  }
  return JSON.stringify(value, null, 2);
}

// A tool call's box: name, arguments, and its result when the server ran it.
function renderToolCall(box, call) {
  box.replaceChildren();
  const title = document.createElement("div");
  title.className = "tool-name";
  title.textContent = "Tool call: " + (call.name || "?");
  box.appendChild(title);
  const args = document.createElement("pre");
  args.className = "tool-arguments";
  args.textContent = pretty(call.arguments === undefined ? {} : call.arguments);
  box.appendChild(args);
  if (call.result !== undefined) {
    const label = document.createElement("div");
    label.className = "tool-result-label";
    label.textContent = "Result";
    const result = document.createElement("pre");
    result.className = "tool-result";
    result.textContent = pretty(call.result);
    box.append(label, result);
  }
}

async function loadModels() {
  els.status.textContent = "Loading tasks…";
  let response;
  try {
    response = await fetch("v1/models", { headers: headers(false) });
  } catch (err) {
    showError("Cannot reach the server: " + err.message);
    els.status.textContent = "";
    return;
  }
  if (!response.ok) {
    showError(await errorText(response));
    els.status.textContent = "";
    return;
  }
  const body = await response.json();
  const previous = els.model.value;
  els.model.replaceChildren();
  for (const m of body.data || []) {
    const option = document.createElement("option");
    option.value = m.id;
    option.textContent = m.id;
    els.model.appendChild(option);
  }
  if ([...els.model.options].some((o) => o.value === previous)) els.model.value = previous;
  els.status.textContent = `${els.model.options.length} tasks`;
}

// Reads an SSE body: calls onData(jsonText) for each event's data (without "[DONE]").
async function readEvents(body, onData) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    const lines = buffer.split(/\r\n|\r|\n/);
    buffer = done ? "" : lines.pop(); // keep a partial last line for the next read
    for (const line of lines) {
      if (line === "") { // an empty line ends an event
        if (data.length) { const text = data.join("\n"); data = []; if (text === "[DONE]") return; onData(text); }
      } else if (line.startsWith("data:")) {
        data.push(line.slice(5).replace(/^ /, ""));
      } // comments (":") and other fields are ignored
    }
    if (done) {
      if (data.length && data.join("\n") !== "[DONE]") onData(data.join("\n"));
      return;
    }
  }
}

function setBusy(busy) {
  els.send.disabled = busy;
  els.stop.hidden = !busy;
  els.status.textContent = busy ? "Answering…" : "";
  els.transcript.setAttribute("aria-busy", busy ? "true" : "false");
}

// Whether a turn can start now (none in flight, a task chosen); says why not in the transcript.
function ready() {
  if (controller) return false;
  if (!els.model.value) {
    showError("No task selected: the task list is empty (reload it, or set the API key).");
    return false;
  }
  return true;
}

function send() {
  const text = els.message.value.trim();
  if (!text || !ready()) return;
  els.message.value = "";
  // A new message instead of a tool result: the calls left unanswered leave the history (OpenAI refuses an
  // assistant message whose tool_calls no tool message answers)
  history = history.map((m) => {
    if (!m.tool_calls) return m;
    const answered = new Set(history.filter((t) => t.role === "tool").map((t) => t.tool_call_id));
    const kept = m.tool_calls.filter((c) => answered.has(c.id));
    const { tool_calls, ...rest } = m;
    return kept.length ? { ...rest, tool_calls: kept } : rest;
  });
  converse({ role: "user", content: text }, bubble("user", text)).then((kept) => {
    if (!kept && !els.message.value) els.message.value = text; // to send again
    els.message.focus();
  });
}

// A form under a tool call the client is to run: its result (JSON) goes back as a `tool` message.
function offerResult(call) {
  const form = document.createElement("form");
  form.className = "tool-result-form";
  const label = document.createElement("label");
  const input = document.createElement("textarea");
  input.id = "result-" + call.id;
  input.rows = 2;
  input.placeholder = '{"field": "value"}';
  label.htmlFor = input.id;
  label.textContent = `Result of ${call.name} (JSON)`;
  const button = document.createElement("button");
  button.type = "submit";
  button.textContent = "Send result";
  form.append(label, input, button);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (!text || !ready()) return;
    const shown = bubble("tool-message", `Result of ${call.name}: ${text}`);
    await converse({ role: "tool", tool_call_id: call.id, content: text }, shown);
  });
  call.box.appendChild(form);
}

// One turn: send the conversation plus `message` and stream the answer in. True when the turn was kept in the
// conversation (an answer came, maybe cut short by an error); false when it failed before any answer.
async function converse(message, shown) {
  const messages = history.concat([message]);
  const request = { model: els.model.value, messages, stream: true };
  const temperature = parseFloat(els.temperature.value);
  if (!Number.isNaN(temperature)) request.temperature = temperature;
  const maxTokens = parseInt(els.maxTokens.value, 10);
  if (!Number.isNaN(maxTokens)) request.max_tokens = maxTokens;

  const started = epoch;
  controller = new AbortController();
  setBusy(true);
  let answer = null; // the .assistant bubble, made at the first content
  let content = "";
  const calls = []; // by index: {id, name, arguments, result?, executed?, box}
  let failed = false;
  const toolBox = (i) => {
    if (!calls[i]) calls[i] = { id: "", name: "", arguments: "", box: bubble("tool-call", "") };
    return calls[i];
  };
  try {
    const response = await fetch("v1/chat/completions", {
      method: "POST", headers: headers(true), body: JSON.stringify(request), signal: controller.signal,
    });
    if (!response.ok) throw new Error(await errorText(response));
    await readEvents(response.body, (json) => {
      const chunk = JSON.parse(json);
      if (chunk.error) throw new Error(chunk.error.message || JSON.stringify(chunk.error));
      for (const choice of chunk.choices || []) {
        const delta = choice.delta || {};
        if (delta.content) {
          if (!answer) answer = bubble("assistant", "");
          content += delta.content;
          answer.textContent = content;
        }
        for (const tc of delta.tool_calls || []) { // OpenAI streams a call's fields in pieces
          const call = toolBox(tc.index === undefined ? calls.length : tc.index);
          if (tc.id) call.id = tc.id;
          if (tc.function && tc.function.name) call.name += tc.function.name;
          if (tc.function && tc.function.arguments) call.arguments += tc.function.arguments;
          renderToolCall(call.box, call);
        }
        for (const ex of delta.executed_tool_calls || []) { // calls the server ran itself, with results
          const call = toolBox(calls.length);
          Object.assign(call, { id: ex.id, name: ex.name, arguments: ex.arguments, result: ex.result, executed: true });
          renderToolCall(call.box, call);
        }
      }
    });
  } catch (err) {
    failed = true;
    controller.abort(); // let go of the response stream
    showError(err.name === "AbortError" ? "Stopped." : err.message);
  } finally {
    controller = null;
    setBusy(false);
  }
  if (started !== epoch) return false;
  if (failed && !content && !calls.length) {
    shown.classList.add("failed"); // not kept in the conversation
    return false;
  }
  // Kept as a non-streaming client gets it: the whole answer, trimmed, with the calls the client is to run.
  content = content.trim();
  if (answer) answer.textContent = content;
  else if (!calls.length) bubble("assistant", "(empty answer)").classList.add("empty");
  const reply = { role: "assistant", content };
  const pending = calls.filter((c) => c && !c.executed && c.name);
  pending.forEach((c, i) => { if (!c.id) c.id = `call_${i}`; });
  if (pending.length) {
    reply.tool_calls = pending.map((c) => ({ id: c.id, type: "function",
                                             function: { name: c.name, arguments: c.arguments } }));
  }
  history = messages.concat([reply]);
  els.transcript.querySelectorAll(".tool-result-form").forEach((f) => f.remove()); // earlier calls: too late
  pending.forEach(offerResult);
  return true;
}

els.form.addEventListener("submit", (e) => { e.preventDefault(); send(); });
els.message.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); els.form.requestSubmit(); }
});
els.stop.addEventListener("click", () => { if (controller) controller.abort(); });
els.reload.addEventListener("click", loadModels);
els.apiKey.addEventListener("change", loadModels);
els.reset.addEventListener("click", () => {
  epoch += 1;
  if (controller) controller.abort();
  history = [];
  els.transcript.replaceChildren();
  els.message.focus();
});

loadModels();
