// The Vercel AI SDK (ai + @ai-sdk/openai): createOpenAI({baseURL}).chat(model) for chat completions, as its docs
// show an OpenAI-compatible server: generateText, streamText, tools with execute (the SDK runs the loop), errors.
// provider(model) alone uses the Responses API (/v1/responses), which this server does not serve.
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, jsonSchema, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";
import { ACT_URL, ASK, FRAMED, HELLO, KEY, KEY_URL, LONG, PARAMETERS, RESULT, URL, run, versions } from "./common.mjs";

const provider = createOpenAI({ baseURL: `${URL}/v1`, apiKey: "none" });
const once = { maxRetries: 0 };

async function chat(extra) {
  const r = await generateText({ model: provider.chat("grid"), prompt: HELLO, ...once, ...extra });
  return { text: r.text, finish_reason: r.finishReason,
    usage: [r.usage.inputTokens, r.usage.outputTokens] };
}

async function stream() {
  let error = null;
  const r = streamText({ model: provider.chat("grid"), prompt: HELLO, maxOutputTokens: 6, ...once,
    onError: ({ error: e }) => { error = e; } });
  let text = "";
  for await (const part of r.textStream) text += part;
  if (error) throw error;
  const usage = await r.usage;
  return { text, finish_reason: await r.finishReason, usage: [usage.inputTokens, usage.outputTokens] };
}

const siteCheck = (schema) => tool({ description: "查询工地的工单与现场检测结果", inputSchema: schema,
  execute: async () => RESULT });

async function tools(content, schema = jsonSchema(PARAMETERS), streaming = false) {
  const args = { model: provider.chat("grid"), prompt: content, tools: { site_check: siteCheck(schema) },
    stopWhen: stepCountIs(3), ...once };
  let steps;
  if (streaming) {
    let error = null;
    const r = streamText({ ...args, onError: ({ error: e }) => { error = e; } });
    for await (const _ of r.textStream);
    if (error) throw error;
    steps = await r.steps;
  } else {
    steps = (await generateText(args)).steps;
  }
  const [call] = steps[0].toolCalls;
  return { finish_reason: steps[0].finishReason === "tool-calls" ? "tool_calls" : steps[0].finishReason,
    name: call.toolName, arguments: call.input, summary: steps.at(-1).text, steps: steps.length };
}

async function actions() {
  const acting = createOpenAI({ baseURL: `${ACT_URL}/v1`, apiKey: "none" });
  const reply = await generateText({ model: acting.chat("grid"), prompt: ASK, ...once });
  const r = streamText({ model: acting.chat("grid"), prompt: ASK, ...once });
  let streamed = "";
  for await (const part of r.textStream) streamed += part;
  return { text: reply.text, streamed,
    executed: reply.response.body.choices[0].message.executed_tool_calls.map(c => c.arguments) };
}

await run({
  versions: () => versions("ai", "@ai-sdk/openai", "zod"),
  chat: () => chat({ maxOutputTokens: 6 }),
  stream,
  sampled: async () => [(await chat({ maxOutputTokens: 6, temperature: 0.8, seed: 7, stopSequences: ["\n"] })).text,
    (await chat({ maxOutputTokens: 6, temperature: 0.8, seed: 7, stopSequences: ["\n"] })).text],
  tools: () => tools(ASK),
  tools_framed: () => tools(FRAMED, z.object({ place: z.string(), check: z.enum(["人数检测", "安全检查", "设备检查"]) })),
  stream_tools: () => tools(ASK, jsonSchema(PARAMETERS), true),
  actions,
  unknown_model: () => generateText({ model: provider.chat("nope"), prompt: HELLO, ...once }),
  bad_key: () => generateText({ model: createOpenAI({ baseURL: `${KEY_URL}/v1`, apiKey: "wrong" }).chat("grid"),
    prompt: HELLO, ...once }),
  good_key: async () => (await generateText({ model: createOpenAI({ baseURL: `${KEY_URL}/v1`, apiKey: KEY })
    .chat("grid"), prompt: HELLO, maxOutputTokens: 2, ...once })).finishReason,
  max_tokens_too_large: () => chat({ maxOutputTokens: 100000 }),
  overflow: () => generateText({ model: provider.chat("grid"), prompt: LONG, ...once }),
  responses_api: () => generateText({ model: provider("grid"), prompt: HELLO, ...once }),
});
