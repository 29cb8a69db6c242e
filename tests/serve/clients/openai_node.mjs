// openai-node (new OpenAI({baseURL})), as its README shows it: models, chat (plain, streamed, seeded), tool calls
// and their result (by hand and with runTools), the stream helper, errors.
import OpenAI from "openai";
import { ACT_URL, ASK, FRAMED, HELLO, KEY, KEY_URL, LONG, RESULT, TOOL, URL, run, versions } from "./common.mjs";

const client = new OpenAI({ baseURL: `${URL}/v1`, apiKey: "none", maxRetries: 0, timeout: 60000 });
const hello = [{ role: "user", content: HELLO }];

async function chat(extra) {
  const r = await client.chat.completions.create({ model: "grid", messages: hello, ...extra });
  return { text: r.choices[0].message.content, finish_reason: r.choices[0].finish_reason,
    usage: [r.usage.prompt_tokens, r.usage.completion_tokens] };
}

async function stream() {
  const chunks = [];
  for await (const c of await client.chat.completions.create({ model: "grid", messages: hello, max_tokens: 6,
    stream: true, stream_options: { include_usage: true } })) chunks.push(c);
  const last = chunks.at(-1);
  return { text: chunks.map(c => c.choices[0]?.delta?.content ?? "").join(""),
    finish_reason: chunks.filter(c => c.choices.length).at(-1).choices[0].finish_reason,
    usage: [last.usage.prompt_tokens, last.usage.completion_tokens] };
}

async function tools(content) {
  const asked = [{ role: "user", content }];
  const first = await client.chat.completions.create({ model: "grid", messages: asked, tools: [TOOL] });
  const message = first.choices[0].message;
  const [call] = message.tool_calls;
  const summary = await client.chat.completions.create({ model: "grid", tools: [TOOL], messages: [...asked, message,
    { role: "tool", tool_call_id: call.id, content: JSON.stringify(RESULT) }] });
  return { finish_reason: first.choices[0].finish_reason, name: call.function.name,
    arguments: JSON.parse(call.function.arguments), summary: summary.choices[0].message.content };
}

async function streamTools() {
  const final = await client.chat.completions.stream({ model: "grid", messages: [{ role: "user", content: ASK }],
    tools: [TOOL] }).finalChatCompletion();
  const [call] = final.choices[0].message.tool_calls;
  const runner = client.chat.completions.runTools({ model: "grid", messages: [{ role: "user", content: ASK }],
    tools: [{ type: "function", function: { name: "site_check", parameters: TOOL.function.parameters,
      function: async () => RESULT, parse: JSON.parse } }] });
  return { finish_reason: final.choices[0].finish_reason, name: call.function.name,
    arguments: JSON.parse(call.function.arguments), summary: await runner.finalContent() };
}

async function actions() {
  const acting = new OpenAI({ baseURL: `${ACT_URL}/v1`, apiKey: "none", maxRetries: 0 });
  const asked = { model: "grid", messages: [{ role: "user", content: ASK }] };
  const reply = await acting.chat.completions.create(asked);
  let streamed = "";
  for await (const c of await acting.chat.completions.create({ ...asked, stream: true }))
    streamed += c.choices[0]?.delta?.content ?? "";
  return { text: reply.choices[0].message.content, streamed,
    executed: reply.choices[0].message.executed_tool_calls.map(c => c.arguments) };
}

async function models(c) { const ids = []; for await (const m of c.models.list()) ids.push(m.id); return ids; }

await run({
  versions: () => versions("openai"),
  models: () => models(client),
  chat: () => chat({ max_tokens: 6 }),
  stream,
  sampled: async () => [(await chat({ max_tokens: 6, temperature: 0.8, seed: 7, stop: ["\n"] })).text,
    (await chat({ max_tokens: 6, temperature: 0.8, seed: 7, stop: ["\n"] })).text],
  tools: () => tools(ASK),
  tools_framed: () => tools(FRAMED),
  stream_tools: streamTools,
  actions,
  unknown_model: () => client.chat.completions.create({ model: "nope", messages: hello }),
  bad_key: () => models(new OpenAI({ baseURL: `${KEY_URL}/v1`, apiKey: "wrong", maxRetries: 0 })),
  good_key: () => models(new OpenAI({ baseURL: `${KEY_URL}/v1`, apiKey: KEY, maxRetries: 0 })),
  max_tokens_too_large: () => chat({ max_tokens: 100000 }),
  overflow: () => client.chat.completions.create({ model: "grid", messages: [{ role: "user", content: LONG }] }),
  responses_api: () => client.responses.create({ model: "grid", input: HELLO }),
});
