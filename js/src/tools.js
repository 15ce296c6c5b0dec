// Tool calls in the JS runtime: qwen_edge/runtimes/tools.py's checks and parsing. The model's own template
// renders the tools; its <tool_call> blocks (or a reply that is only a JSON call, bare or fenced) become
// OpenAI-style toolCalls. toolChoice "required" or a named function needs constrained decoding (llguidance),
// which has no build in npm: the JS package offers "auto" and "none" (the server offers all four).

import { QwenEdgeError } from "./errors.js";

const CALL = /<tool_call>\s*(\{[\s\S]*?\})\s*<\/tool_call>/g;
const FENCED = /^\s*```(?:json)?\s*([\s\S]*?)\s*```\s*$/;

export function checkTools(tools) {
  if (!Array.isArray(tools) || !tools.length) throw new QwenEdgeError("tools must be a non-empty array of {type: 'function', function: {...}}");
  const names = new Set();
  return tools.map((t, i) => {
    const f = t && t.type === "function" ? t.function : null;
    if (!f || typeof f.name !== "string" || !/^[A-Za-z0-9_.-]{1,64}$/.test(f.name)) {
      throw new QwenEdgeError(`tools[${i}] must be {type: 'function', function: {name (a-z, 0-9, _ . -, up to 64), description, parameters}}`);
    }
    if (names.has(f.name)) throw new QwenEdgeError(`two tools are named ${JSON.stringify(f.name)}`);
    names.add(f.name);
    return { type: "function", function: { ...f, parameters: f.parameters ?? { type: "object", properties: {} } } };
  });
}

function callId() {
  let s = "call_";
  for (let i = 0; i < 24; i++) s += "0123456789abcdef"[Math.floor(Math.random() * 16)];
  return s;
}

/** [text outside the calls or null, calls in OpenAI's format]. */
export function parseCalls(text, names = null) {
  let objs = [];
  for (const m of text.matchAll(CALL)) {
    try { objs.push(JSON.parse(m[1])); } catch { /* not JSON: left as text */ }
  }
  let rest = objs.length ? text.replace(CALL, "").trim() : text;
  if (!objs.length && names) {
    const f = FENCED.exec(text);
    let whole = null;
    try { whole = JSON.parse(f ? f[1] : text); } catch { whole = null; }
    const cands = Array.isArray(whole) ? whole : [whole];
    if (cands.length && cands.every((o) => o && typeof o === "object" && names.includes(o.name) && "arguments" in o)) {
      objs = cands;
      rest = null;
    }
  }
  const calls = objs.filter((o) => o && typeof o === "object" && typeof o.name === "string").map((o) => ({
    id: callId(), type: "function",
    function: { name: o.name, arguments: typeof o.arguments === "string" ? o.arguments : JSON.stringify(o.arguments ?? {}) },
  }));
  return calls.length ? [rest || null, calls] : [text, []];
}

/** OpenAI messages as Qwen's template reads them: an assistant's tool_calls with arguments as objects. */
export function forTemplate(messages) {
  return messages.map((m) => {
    if (m.role !== "assistant" || !m.tool_calls?.length) return m;
    const calls = m.tool_calls.map((c) => {
      const f = { ...(c.function ?? c) };
      if (typeof f.arguments === "string") {
        try { f.arguments = JSON.parse(f.arguments); } catch { throw new QwenEdgeError(`tool call arguments are not JSON: ${f.arguments.slice(0, 80)}`); }
      }
      return { type: "function", function: f };
    });
    return { ...m, content: m.content ?? "", tool_calls: calls };
  });
}
