// The JavaScript runtime against the Python runtime's golden outputs (tests/js_fixtures.py), on tiny Qwen2
// and Qwen3 artifacts (fp32 and int4), and the real int4 0.5B when QWEN_EDGE_REAL_INT4 names it.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";

import * as ort from "onnxruntime-node";

import { InPlaceCache, OwnedCache } from "../src/cache.js";
import { checkFolder, loadModel, QwenEdgeError } from "../src/node.js";
import { smallOutputGraph } from "../src/small_outputs.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const FIX = process.env.QWEN_EDGE_JS_FIXTURES || path.join(here, ".fixtures");
const golden = JSON.parse(fs.readFileSync(path.join(FIX, "golden.json"), "utf8"));
const models = {};
async function model(name) {
  models[name] ??= await loadModel(path.join(FIX, name), { threads: 1 });
  return models[name];
}

for (const name of Object.keys(golden)) {
  test(`${name}: greedy tokens and streamed pieces equal Python's`, async () => {
    const m = await model(name);
    for (const g of golden[name].generate) {
      assert.deepEqual(m.promptIds(g.prompt), g.prompt_ids, `prompt ids of ${JSON.stringify(g.prompt)}`);
      const s = m.stream(g.prompt, { maxNewTokens: g.max_new_tokens, temperature: 0 });
      const pieces = [];
      for await (const p of s) pieces.push(p);
      assert.deepEqual(s.result.tokens, g.tokens, `tokens of ${JSON.stringify(g.prompt)}`);
      assert.deepEqual(pieces, g.pieces);
      assert.equal(s.result.text, g.text);
      assert.equal(s.result.finishReason, g.finish_reason);
    }
  });

  test(`${name}: the chat template renders byte for byte as Python's`, async () => {
    const m = await model(name);
    for (const r of golden[name].renders) assert.equal(m.render(r.messages), r.text);
  });

  test(`${name}: a chat reuses its cache across turns and answers as Python's`, async () => {
    const m = await model(name);
    const chat = m.chat({ system: "Be brief.", maxNewTokens: 12, temperature: 0 });
    for (const turn of golden[name].chat) {
      const reply = await chat.say(turn.user);
      assert.equal(reply, turn.reply);
      assert.deepEqual(chat.last.tokens, turn.tokens);
      assert.equal(chat.last.timings.cachedTokens, turn.cached_tokens);
    }
    assert.ok(chat.last.timings.cachedTokens > 0);
  });
}

test("the Node session runs the small-output graph: same tokens as the exported graph's in-place cache, past the cache's growth step", async () => {
  for (const name of Object.keys(golden)) {
    const dir = path.join(FIX, name);
    const m = await model(name);
    const bytes = fs.readFileSync(path.join(dir, "model.onnx"));
    const small = smallOutputGraph(bytes, m.manifest.dtype === "fp16" ? "float16" : "float32");
    assert.ok(small, `${name}: the graph is rewritten`);
    assert.equal(smallOutputGraph(small, "float32"), null, "a rewritten graph is not rewritten twice");
    const owned = m.backend.newCache(400);
    assert.ok(owned instanceof OwnedCache, `${name}: the model uses the small-output cache`);
    // the exported graph, its whole cache bound as outputs, in chunks of 64 (every position's logits)
    const plain = await ort.InferenceSession.create(path.join(dir, "model.onnx"), { intraOpNumThreads: 1 });
    const dtype = m.manifest.dtype === "fp16" ? "float16" : "float32";
    const inplace = new InPlaceCache(plain, ort, m.manifest.model, 400, 64, dtype);
    const V = m.manifest.model.vocab_size;
    const prompt = Array.from({ length: 300 }, (_, i) => (i * 7919) % V); // crosses the 256-position step
    const greedy = async (cache) => {
      cache.append(prompt);
      const out = [];
      let logits = await cache.forward();
      for (let i = 0; i < 12; i++) {
        let best = 0;
        for (let v = 1; v < logits.length; v++) if (logits[v] > logits[best]) best = v;
        out.push(best);
        cache.push(best);
        if (i === 5) { // a rewind: the last three positions run again, as one chunk
          const last = cache.ids.slice(-3);
          cache.truncate(cache.ids.length - 3);
          cache.append(last);
        }
        logits = await cache.forward();
      }
      return out;
    };
    assert.deepEqual(await greedy(owned), await greedy(inplace), `${name}: greedy tokens`);
    await plain.release();
  }
});

test("lookup (prompt-lookup speculative decoding): the same greedy tokens as plain decoding, several a pass", async () => {
  for (const name of Object.keys(golden)) {
    const plain = await model(name);
    const spec = await loadModel(path.join(FIX, name), { threads: 1, lookup: 6 });
    for (const g of golden[name].generate) {
      const r = await spec.complete(g.prompt, { maxNewTokens: g.max_new_tokens, temperature: 0 });
      assert.deepEqual(r.tokens, g.tokens, `tokens of ${JSON.stringify(g.prompt)} (Python's)`);
      assert.equal(r.text, g.text);
      assert.equal(r.finishReason, g.finish_reason);
    }
    // a prompt that repeats: proposals are made and kept, and the tokens still equal plain decoding
    const ids = [];
    for (let r = 0; r < 4; r++) for (let t = 5; t < 40; t++) ids.push(t);
    for (const n of [1, 2, 5, 90]) {
      const want = await plain.complete(ids, { maxNewTokens: n, temperature: 0, ignoreEos: true });
      const got = await spec.complete(ids, { maxNewTokens: n, temperature: 0, ignoreEos: true });
      assert.deepEqual(got.tokens, want.tokens);
      assert.equal(got.finishReason, want.finishReason);
      if (n === 90) {
        const sp = got.timings.speculative;
        assert.ok(sp.proposed > 0 && sp.accepted > 0 && sp.tokensPerPass > 1, JSON.stringify(sp));
      }
    }
    await spec.close();
  }
  await assert.rejects(loadModel(path.join(FIX, Object.keys(golden)[0]), { lookup: 0 }),
    (e) => e instanceof QwenEdgeError && /lookup/.test(e.message));
});

test("logprobs: each token's log-probability and its alternatives, the greedy tokens unchanged", async () => {
  const name = Object.keys(golden)[0];
  const m = await model(name);
  const g = golden[name].generate[0];
  const r = await m.complete(g.prompt, { maxNewTokens: g.max_new_tokens, temperature: 0, logprobs: 3 });
  assert.deepEqual(r.tokens, g.tokens);
  assert.equal(r.logprobs.length, r.tokens.length);
  for (const [i, e] of r.logprobs.entries()) {
    assert.equal(e.id, r.tokens[i]);
    assert.equal(e.top[0][0], e.id); // greedy: the most likely
    assert.ok(e.top.every((t, j) => j === 0 || t[1] <= e.top[j - 1][1]));
    assert.ok(e.top.reduce((a, t) => a + Math.exp(t[1]), 0) <= 1 + 1e-9 && e.logprob <= 0);
  }
  const s = await m.complete(g.prompt, { maxNewTokens: 5, temperature: 0.7, seed: 1, logprobs: 0 });
  assert.ok(s.logprobs.every((e) => e.top.length === 0 && e.logprob <= 0));
  await assert.rejects(m.complete(g.prompt, { logprobs: 21 }), (e) => e instanceof QwenEdgeError && /logprobs/.test(e.message));
});

test("tools: rendered by the template, calls parsed (a <tool_call> block or a bare JSON call)", async () => {
  const { parseCalls, checkTools } = await import("../src/tools.js");
  const tools = [{ type: "function", function: { name: "get_weather", parameters: { type: "object", properties: { city: { type: "string" } } } } }];
  const [rest, calls] = parseCalls('Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', ["get_weather"]);
  assert.equal(rest, "Sure.");
  assert.equal(calls[0].function.name, "get_weather");
  assert.deepEqual(JSON.parse(calls[0].function.arguments), { city: "Paris" });
  assert.ok(calls[0].id.startsWith("call_"));
  const [r2, c2] = parseCalls('```json\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n```', ["get_weather"]);
  assert.equal(r2, null);
  assert.equal(c2.length, 1);
  assert.deepEqual(parseCalls("no call here", ["get_weather"]), ["no call here", []]);
  assert.throws(() => checkTools([{ type: "function", function: { description: "no name" } }]), QwenEdgeError);
  const name = Object.keys(golden)[0];
  const m = await model(name);
  const msgs = [{ role: "user", content: "weather?" }];
  const text = m.render(msgs, { tools: checkTools(tools) });
  if (/tools/.test(m.templateText)) assert.ok(text.includes("get_weather"));
  const r = await m.complete(msgs, { maxNewTokens: 4, temperature: 0, tools });
  assert.ok(Array.isArray(r.toolCalls));
  await assert.rejects(m.complete(msgs, { tools, toolChoice: "required" }), (e) => e instanceof QwenEdgeError && /server/.test(e.message));
});

test("sampling with a seed is reproducible (and seeds differ)", async () => {
  const m = await model("qwen2-fp32");
  const opts = { maxNewTokens: 20, temperature: 1.0, topK: 50, topP: 0.95, minP: 0.01, repetitionPenalty: 1.1,
    frequencyPenalty: 0.2, presencePenalty: 0.1 };
  const a = await m.complete("The quick", { ...opts, seed: 7 });
  const b = await m.complete("The quick", { ...opts, seed: 7 });
  const c = await m.complete("The quick", { ...opts, seed: 8 });
  assert.deepEqual(a.tokens, b.tokens);
  assert.notDeepEqual(a.tokens, c.tokens);
});

test("stop strings end the text and are never shown", async () => {
  const m = await model("qwen3-fp32");
  const full = await m.generate("def main():\n", { maxNewTokens: 30, temperature: 0 });
  const stop = full.slice(4, 7);
  const r = await m.complete("def main():\n", { maxNewTokens: 30, temperature: 0, stop: [stop] });
  assert.equal(r.text, full.slice(0, full.indexOf(stop)));
  assert.equal(r.finishReason, "stop");
});

test("bad input: clear QwenEdgeErrors", async () => {
  const m = await model("qwen2-fp32");
  const cases = [
    [() => loadModel(path.join(FIX, "nope")), /no such model folder/],
    [() => loadModel(FIX), /not a qwen-edge model folder/],
    [() => m.generate("x".repeat(0)), /prompt is empty/],
    [() => m.generate("The quick brown fox ".repeat(300)), /but the context holds 512/],
    [() => m.generate("hi", { temperature: -1 }), /temperature must be/],
    [() => m.generate("hi", { topP: 0 }), /topP must be in/],
    [() => m.generate("hi", { maxNewTokens: 0 }), /maxNewTokens must be/],
    [() => m.generate("hi", { bogus: 1 }), /unknown option 'bogus'/],
    [() => m.generate("hi", { stop: [""] }), /must not be empty/],
    [() => m.generate(42), /a prompt is a string/],
    [() => m.generate([99999]), /outside the vocabulary/],
    [() => m.generate("a\ud800b"), /lone surrogate/],
    [() => m.generate([{ role: "wizard", content: "x" }]), /unknown chat role/],
    [() => loadModel(path.join(FIX, "qwen2-fp32"), { maxLength: 100000 }), /maxLength must be/],
    // an option the package cannot honour is refused, never silently ignored
    [() => loadModel(path.join(FIX, "qwen2-fp32"), { draft: path.join(FIX, "qwen2-fp32") }),
      /a draft model .* is not supported by the JavaScript package: use \{ lookup: N \}/],
    [() => loadModel(path.join(FIX, "qwen2-fp32"), { thread: 2 }), /unknown loadModel option 'thread'/],
  ];
  for (const [fn, re] of cases) {
    await assert.rejects(async () => fn(), (e) => e instanceof QwenEdgeError && re.test(e.message), String(re));
  }
});

test("a damaged folder is refused before loading (size always, sha256 by default)", () => {
  const src = path.join(FIX, "qwen2-int4");
  const bad = fs.mkdtempSync(path.join(FIX, "damaged-"));
  try {
    for (const f of fs.readdirSync(src)) fs.copyFileSync(path.join(src, f), path.join(bad, f));
    const data = path.join(bad, "model.onnx.data");
    const bytes = fs.readFileSync(data);
    bytes[5000] ^= 0xff;
    fs.writeFileSync(data, bytes);
    assert.throws(() => checkFolder(bad), /model.onnx.data does not match its manifest/);
    checkFolder(bad, { verify: false }); // same size: only the hash can tell
    fs.truncateSync(data, 100);
    assert.throws(() => checkFolder(bad, { verify: false }), /model.onnx.data has 100 bytes/);
  } finally {
    fs.rmSync(bad, { recursive: true, force: true });
  }
});

test("a hand-edited manifest is refused at load: each model field off by one, and absurd values", async () => {
  const src = path.join(FIX, "qwen2-int4");
  const bad = fs.mkdtempSync(path.join(FIX, "manifest-"));
  const { loadModelFromUrl } = await import("../src/web.js");
  const fileFetch = async (url) => {
    const f = fileURLToPath(url);
    return fs.existsSync(f) ? new Response(fs.readFileSync(f)) : new Response(null, { status: 404 });
  };
  const deps = { ort: { env: { wasm: {} } }, Tokenizer: class {}, Template: class {} }; // never reached
  try {
    for (const f of fs.readdirSync(src)) fs.copyFileSync(path.join(src, f), path.join(bad, f));
    const good = JSON.parse(fs.readFileSync(path.join(bad, "qwen_edge.json"), "utf8"));
    const edits = [];
    for (const k of ["vocab_size", "num_layers", "num_heads", "num_kv_heads", "head_dim"]) {
      edits.push([k, (m) => { m.model[k] += 1; }], [k, (m) => { m.model[k] -= 1; }]);
      for (const v of [1e12, -1, 0, "2", true, null, 2.5]) edits.push([k, (m) => { m.model[k] = v; }]);
    }
    edits.push(["max_length", (m) => { m.max_length += 1; }], ["max_length", (m) => { m.max_length = 1e12; }]);
    for (const [field, edit] of edits) {
      const m = structuredClone(good);
      edit(m);
      fs.writeFileSync(path.join(bad, "qwen_edge.json"), JSON.stringify(m));
      const re = new RegExp(`is damaged: .*${field}`);
      assert.throws(() => checkFolder(bad, { verify: false }), (e) => e instanceof QwenEdgeError && re.test(e.message), field);
      await assert.rejects(loadModel(bad), (e) => e instanceof QwenEdgeError && re.test(e.message), field);
      await assert.rejects(loadModelFromUrl(pathToFileURL(bad).href, deps, { fetch: fileFetch, verify: false }),
        (e) => e instanceof QwenEdgeError && re.test(e.message), `web ${field}`);
    }
    fs.writeFileSync(path.join(bad, "qwen_edge.json"), JSON.stringify(good));
    await (await loadModel(bad)).close(); // the untouched manifest loads
  } finally {
    fs.rmSync(bad, { recursive: true, force: true });
  }
});

test("close() mid-generation ends the stream; a closed model is a QwenEdgeError; a file is not a folder", async () => {
  const m = await loadModel(path.join(FIX, "qwen2-fp32"), { threads: 1 });
  const s = m.stream("The quick", { maxNewTokens: 400, ignoreEos: true, temperature: 0 });
  let n = 0;
  let closing = null;
  for await (const _ of s) { // eslint-disable-line no-unused-vars
    if (++n === 3) closing = m.close(); // not awaited: the app quits while the reply streams
  }
  await closing;
  assert.equal(s.result.finishReason, "cancelled");
  assert.ok(s.result.tokens.length < 400);
  await assert.rejects(m.generate("hi"), (e) => e instanceof QwenEdgeError && /model is closed/.test(e.message));
  assert.throws(() => m.chat(), (e) => e instanceof QwenEdgeError && /model is closed/.test(e.message));
  await m.close(); // twice is fine
  await assert.rejects(loadModel(path.join(FIX, "golden.json")), (e) => e instanceof QwenEdgeError &&
    /is a file, not a model folder/.test(e.message));
});

test("the real int4 0.5B: 32 greedy tokens equal Python's", { skip: !process.env.QWEN_EDGE_REAL_INT4 && !process.env.QWEN_EDGE_REQUIRE_REAL }, async () => {
  assert.ok(process.env.QWEN_EDGE_REAL_INT4, "QWEN_EDGE_REQUIRE_REAL is set but QWEN_EDGE_REAL_INT4 is not");
  const g = JSON.parse(fs.readFileSync(process.env.QWEN_EDGE_REAL_GOLDEN, "utf8"));
  const m = await loadModel(process.env.QWEN_EDGE_REAL_INT4, { threads: 2, maxLength: 1024 });
  const r = await m.complete(g.messages, { maxNewTokens: 32, temperature: 0, ignoreEos: true });
  assert.deepEqual(r.tokens, g.tokens);
  assert.equal(r.text, g.text);
  await m.close();
  const spec = await loadModel(process.env.QWEN_EDGE_REAL_INT4, { threads: 2, maxLength: 1024, lookup: 8 });
  const s = await spec.complete(g.messages, { maxNewTokens: 32, temperature: 0, ignoreEos: true });
  assert.deepEqual(s.tokens, g.tokens, "with lookup");
  await spec.close();
});
