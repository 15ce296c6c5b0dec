// The manifest's model fields checked against model.onnx before anything is allocated: the same reader and
// the same checks as qwen_edge/graph_facts.py and artifact.check_model (KV caches are sized from layers, KV
// heads, head dim and context, the logits from the vocabulary; a hand-edited manifest must not size them).
// Reads only the protobuf's structure: inputs/outputs with shapes, GroupQueryAttention head counts and the
// rotary cache's dims. Field numbers are onnx.proto's (see the Python module).

import { QwenEdgeError } from "./errors.js";

const LIMITS = { vocab_size: 1 << 20, num_layers: 512, num_heads: 1024, num_kv_heads: 1024, head_dim: 1024,
  hidden_size: 1 << 16, intermediate_size: 1 << 18 };
const MAX_LENGTH_LIMIT = 1 << 20;
const utf8 = new TextDecoder();

function varint(b, i) {
  let v = 0n;
  let shift = 0n;
  for (;;) {
    if (i >= b.length || shift > 63n) throw new Error("truncated varint");
    const c = b[i++];
    v |= BigInt(c & 0x7f) << shift;
    if (!(c & 0x80)) return [v, i];
    shift += 7n;
  }
}

function* fields(b) {
  let i = 0;
  while (i < b.length) {
    let key;
    [key, i] = varint(b, i);
    const num = Number(key >> 3n);
    const wire = Number(key & 7n);
    if (wire === 0) {
      let v;
      [v, i] = varint(b, i);
      yield [num, wire, BigInt.asIntN(64, v)];
    } else if (wire === 2) {
      let size;
      [size, i] = varint(b, i);
      const end = i + Number(size);
      if (end > b.length) throw new Error("a field runs past the end");
      yield [num, wire, b.subarray(i, end)];
      i = end;
    } else if (wire === 1) {
      i += 8;
    } else if (wire === 5) {
      i += 4;
    } else {
      throw new Error(`unsupported wire type ${wire}`);
    }
  }
}

function sub(b, want) {
  const out = [];
  for (const [num, wire, v] of fields(b)) if (num === want && wire === 2) out.push(v);
  return out;
}

function valueInfo(b) {
  let name = "";
  const dims = [];
  for (const [num, wire, v] of fields(b)) {
    if (num === 1 && wire === 2) name = utf8.decode(v);
    if (num !== 2 || wire !== 2) continue;
    for (const tensor of sub(v, 1)) {
      for (const shape of sub(tensor, 2)) {
        for (const dim of sub(shape, 1)) {
          let d = null;
          for (const [dn, dw, dv] of fields(dim)) {
            if (dn === 1 && dw === 0) d = Number(dv);
            else if (dn === 2 && dw === 2) d = utf8.decode(dv);
          }
          dims.push(d);
        }
      }
    }
  }
  return [name, dims];
}

/** { inputs, outputs: {name: dims}, attention: [{num_heads, kv_num_heads}], cosCache: dims | null }. */
export function graphFacts(bytes) {
  const data = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const graph = sub(data, 7)[0];
  if (!graph) throw new Error("no graph");
  const facts = { inputs: {}, outputs: {}, attention: [], cosCache: null };
  for (const [num, wire, v] of fields(graph)) {
    if (wire !== 2) continue;
    if (num === 1) {
      let op = "";
      const attrs = {};
      for (const [n, w, x] of fields(v)) {
        if (n === 4 && w === 2) op = utf8.decode(x);
        if (n !== 5 || w !== 2) continue;
        let aname = "";
        let ai = null;
        for (const [an, aw, av] of fields(x)) {
          if (an === 1 && aw === 2) aname = utf8.decode(av);
          if (an === 3 && aw === 0) ai = Number(av);
        }
        if (ai !== null) attrs[aname] = ai;
      }
      if (op === "GroupQueryAttention") facts.attention.push(attrs);
    } else if (num === 5) {
      let name = "";
      const dims = [];
      for (const [n, w, x] of fields(v)) {
        if (n === 8 && w === 2) name = utf8.decode(x);
        else if (n === 1 && w === 0) dims.push(Number(x));
        else if (n === 1 && w === 2) for (let j = 0; j < x.length;) { let d; [d, j] = varint(x, j); dims.push(Number(BigInt.asIntN(64, d))); }
      }
      if (name === "cos_cache") facts.cosCache = dims;
    } else if (num === 11 || num === 12) {
      const [name, dims] = valueInfo(v);
      (num === 11 ? facts.inputs : facts.outputs)[name] = dims;
    }
  }
  return facts;
}

/** Throw the one-line "damaged" QwenEdgeError when the manifest's model fields disagree with model.onnx. */
export function checkModelFields(where, manifest, graphBytes) {
  const damaged = (what) => new QwenEdgeError(`${where} is damaged: ${what}; re-export the model`);
  const spec = manifest.model || {};
  const want = {};
  for (const [name, top] of [...Object.entries(LIMITS), ["max_length", MAX_LENGTH_LIMIT]]) {
    const v = name === "max_length" ? manifest.max_length : spec[name];
    if (v === undefined && (name === "hidden_size" || name === "intermediate_size")) continue;
    if (!Number.isInteger(v) || v < 1 || v > top) throw damaged(`its manifest's ${name} is ${JSON.stringify(v)}, not an integer in 1..${top}`);
    want[name] = v;
  }
  let g;
  try {
    g = graphFacts(graphBytes);
  } catch (e) {
    throw damaged(`model.onnx cannot be read as an ONNX model (${e.message})`);
  }
  const mismatch = (name, got, what) => {
    if (got !== want[name]) throw damaged(`its manifest says ${name} ${want[name]} but model.onnx has ${got} (${what})`);
  };
  const keys = Object.keys(g.inputs).filter((k) => /^past_key_values\.\d+\.key$/.test(k)).map((k) => Number(k.split(".")[1])).sort((a, b) => a - b);
  if (!keys.length || keys.some((k, i) => k !== i) || !g.outputs.logits) throw damaged("model.onnx does not have the graph's inputs and outputs (docs/artifact.md)");
  mismatch("num_layers", keys.length, "past_key_values inputs");
  const key0 = g.inputs["past_key_values.0.key"];
  if (key0.length !== 4) throw damaged(`model.onnx's past_key_values.0.key has ${key0.length} dims, not 4`);
  mismatch("num_kv_heads", key0[1], "past_key_values.0.key dim 1");
  mismatch("head_dim", key0[3], "past_key_values.0.key dim 3");
  mismatch("vocab_size", g.outputs.logits.at(-1) ?? null, "logits' last dim");
  if (g.attention.length) {
    mismatch("num_layers", g.attention.length, "GroupQueryAttention nodes");
    mismatch("num_heads", g.attention[0].num_heads, "GroupQueryAttention num_heads");
    mismatch("num_kv_heads", g.attention[0].kv_num_heads, "GroupQueryAttention kv_num_heads");
  }
  if (g.cosCache && g.cosCache.length) mismatch("max_length", g.cosCache[0], "rows of the rotary cache cos_cache");
}
