// LangChain.js' ChatOpenAI (@langchain/openai) with configuration.baseURL: invoke, stream, bindTools and a tool
// round trip (streamed too), and the errors it classifies.
import { HumanMessage } from "@langchain/core/messages";
import { tool } from "@langchain/core/tools";
import { ChatOpenAI } from "@langchain/openai";
import { z } from "zod";
import { ASK, FRAMED, HELLO, KEY, KEY_URL, LONG, RESULT, URL, run, versions } from "./common.mjs";

const model = (options = {}, url = URL) => new ChatOpenAI({ model: "grid", apiKey: "none", maxRetries: 0,
  configuration: { baseURL: `${url}/v1` }, ...options });
const siteCheck = tool(async () => JSON.stringify(RESULT), { name: "site_check", description: "查询工地的工单与现场检测结果",
  schema: z.object({ place: z.string(), check: z.enum(["人数检测", "安全检查", "设备检查"]) }) });

async function invoke() {
  const m = await model({ maxTokens: 6 }).invoke(HELLO);
  return { text: m.content, finish_reason: m.response_metadata.finish_reason,
    usage: [m.usage_metadata.input_tokens, m.usage_metadata.output_tokens] };
}

async function stream() {
  let total = null;
  for await (const c of await model({ maxTokens: 6 }).stream(HELLO)) total = total ? total.concat(c) : c;
  return { text: total.content, finish_reason: total.response_metadata.finish_reason,
    usage: [total.usage_metadata.input_tokens, total.usage_metadata.output_tokens] };
}

async function tools(content, streaming = false) {
  const bound = model({ streaming }).bindTools([siteCheck]);
  const asked = [new HumanMessage(content)];
  let first = null;
  if (streaming) { for await (const c of await bound.stream(asked)) first = first ? first.concat(c) : c; }
  else first = await bound.invoke(asked);
  const [call] = first.tool_calls;
  const result = await siteCheck.invoke(call);
  let summary = "";
  if (streaming) { for await (const c of await bound.stream([...asked, first, result])) summary += c.content; }
  else summary = (await bound.invoke([...asked, first, result])).content;
  return { finish_reason: first.response_metadata.finish_reason, name: call.name, arguments: call.args, summary };
}

await run({
  versions: () => versions("@langchain/openai", "@langchain/core", "openai"),
  chat: invoke,
  stream,
  sampled: async () => { // seed is a call option in LangChain.js (the constructor drops it)
    const sampled = model({ maxTokens: 6, temperature: 0.8 });
    const options = { stop: ["\n"], seed: 7 };
    return [(await sampled.invoke(HELLO, options)).content, (await sampled.invoke(HELLO, options)).content];
  },
  tools: () => tools(ASK),
  tools_framed: () => tools(FRAMED),
  stream_tools: () => tools(ASK, true),
  unknown_model: () => model({ model: "nope" }).invoke(HELLO),
  bad_key: () => model({ apiKey: "wrong" }, KEY_URL).invoke(HELLO),
  good_key: async () => (await model({ apiKey: KEY, maxTokens: 2 }, KEY_URL).invoke(HELLO)).response_metadata
    .finish_reason,
  max_tokens_too_large: () => model({ maxTokens: 100000 }).invoke(HELLO),
  overflow: () => model().invoke(LONG),
});
