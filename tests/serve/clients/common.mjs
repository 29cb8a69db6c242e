// What the JavaScript client scripts share (run with node from build/clients, where `make test-clients` installs
// package.json's packages; tests/serve/test_real_clients.py reads the one JSON line each prints: check name ->
// {ok: value} or {error: the exception described}).
export const URL = process.env.TT_URL, KEY_URL = process.env.TT_KEY_URL, ACT_URL = process.env.TT_ACT_URL;
export const KEY = process.env.TT_KEY;
export const ASK = "查查济南的人数", FRAMED = "步骤#理解并基于输入拆分函数参数*语音#查查济南的人数", HELLO = "你好";
export const LONG = ASK.repeat(300); // over the test server's --max-prompt-tokens (256)
export const RESULT = { expected: 47, present: 34, ok: 34 };
export const PARAMETERS = { // templates/grid/spec.yaml, actions[0].parameters
  type: "object",
  properties: { place: { type: "string", description: "工地名称, 如 济南" },
    check: { type: "string", enum: ["人数检测", "安全检查", "设备检查"], description: "检查类型" } },
  required: ["place", "check"], additionalProperties: false };
export const TOOL = { type: "function", function: { name: "site_check", description: "查询工地的工单与现场检测结果",
  parameters: PARAMETERS } };

export function described(e) {
  const classes = [];
  for (let p = Object.getPrototypeOf(e); p && p.constructor && p.constructor !== Object; p = Object.getPrototypeOf(p))
    classes.push(p.constructor.name);
  return { class: e?.constructor?.name, classes, name: e?.name, status: e?.status ?? e?.statusCode ?? null,
    code: e?.code ?? e?.error?.code ?? null, message: String(e?.message ?? e).slice(0, 600),
    body: e?.responseBody ?? null };
}

export async function run(checks) {
  const out = {};
  for (const [name, check] of Object.entries(checks)) {
    try { out[name] = { ok: await check() }; } catch (e) { out[name] = { error: described(e) }; }
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

export async function versions(...names) {
  const { readFileSync } = await import("node:fs");
  return Object.fromEntries(names.map(n => [n, JSON.parse(readFileSync(new globalThis.URL(
    `./node_modules/${n}/package.json`, import.meta.url))).version]));
}
