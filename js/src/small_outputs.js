// The decoder graph rewritten so that a run's outputs are small: for onnxruntime-node.
//
// onnxruntime-node copies every output of every run into a new ArrayBuffer, a caller-preallocated one too
// (microsoft/onnxruntime#32346), so with the in-place KV cache each decode step allocated and copied the
// whole cache (~19 MB for the 0.5B at 768 positions). Those allocations are external memory to V8: they
// trigger a garbage collection every step or two, which costs more when the heap is large (the JS
// tokenizer alone holds ~50 MB), and each fresh buffer is page-faulted in. Measured on the 0.5B: 30 ms a
// step against 17 ms for the same session without the copies (docs/benchmarks.md).
//
// Here the graph's present.N.* outputs stay internal and the graph outputs only the positions this run
// wrote (present_new.N.*, [batch, kv_heads, new, head_dim]): the JavaScript side keeps the cache and
// copies those few rows in. GroupQueryAttention then runs unshared (it copies the filled positions of
// the past into its own buffer, in C++), which costs ~1-2 ms a step but nothing in V8.
//
// The same rewrite turns logits_to_keep into a plain graph input (onnxruntime-node ignores a feed of the
// overridable initializer, onnxruntime-web rejects it): a step feeds 1, so a prefill pass no longer computes
// [chunk, vocab] logits and the prompt can go in large chunks; a lookup verify pass feeds k + 1.
//
// The rewrite edits model.onnx's protobuf (ModelProto.graph: drop the present outputs, append one Shape /
// Sub / Slice chain); field numbers are onnx.proto's. The weights stay in model.onnx.data, untouched.

const enc = new TextEncoder();
const dec = new TextDecoder();

function varintBytes(v) {
  const out = [];
  let x = BigInt(v);
  if (x < 0n) x += 1n << 64n;
  do {
    let b = Number(x & 0x7fn);
    x >>= 7n;
    if (x) b |= 0x80;
    out.push(b);
  } while (x);
  return out;
}

function readVarint(b, i) {
  let v = 0;
  let mul = 1;
  for (;;) {
    if (i >= b.length) throw new Error("truncated varint");
    const c = b[i++];
    v += (c & 0x7f) * mul;
    if (!(c & 0x80)) return [v, i];
    mul *= 128;
  }
}

/** Top-level fields of a message as [num, wire, start, end, payloadStart] byte ranges. */
function rawFields(b) {
  const out = [];
  let i = 0;
  while (i < b.length) {
    const start = i;
    let key;
    [key, i] = readVarint(b, i);
    const num = Math.floor(key / 8);
    const wire = key % 8;
    let payload = i;
    if (wire === 0) [, i] = readVarint(b, i);
    else if (wire === 1) i += 8;
    else if (wire === 5) i += 4;
    else if (wire === 2) {
      let n;
      [n, payload] = readVarint(b, i);
      i = payload + n;
    } else throw new Error(`unsupported wire type ${wire}`);
    if (i > b.length) throw new Error("a field runs past the end");
    out.push([num, wire, start, i, payload]);
  }
  return out;
}

const concat = (parts) => {
  const n = parts.reduce((s, p) => s + p.length, 0);
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
};
const field = (num, payload) => concat([Uint8Array.from(varintBytes(num * 8 + 2)), Uint8Array.from(varintBytes(payload.length)), payload]);
const str = (num, s) => field(num, enc.encode(s));
const int = (num, v) => Uint8Array.from([...varintBytes(num * 8), ...varintBytes(v)]);

// AttributeProto: name 1, i 3, ints 8, type 20 (INT 2, INTS 7). NodeProto: input 1, output 2, op_type 4, attribute 5.
const intAttr = (name, v) => concat([str(1, name), int(3, v), int(20, 2)]);
const intsAttr = (name, vs) => concat([str(1, name), ...vs.map((v) => int(8, v)), int(20, 7)]);
const node = (op, inputs, outputs, attrs = []) => field(1, concat([...inputs.map((x) => str(1, x)),
  ...outputs.map((x) => str(2, x)), str(4, op), ...attrs.map((a) => field(5, a))]));
// ValueInfoProto: name 1, type 2; TypeProto.tensor_type 1; Tensor.elem_type 1 (shape left open).
const output = (name, elemType) => field(12, concat([str(1, name), field(2, field(1, int(1, elemType)))]));
// A scalar int64 graph input (GraphProto.input 11; Tensor.shape 2: an empty TensorShapeProto = rank 0).
const scalarInt64Input = (name) => field(11, concat([str(1, name),
  field(2, field(1, concat([int(1, 7), field(2, new Uint8Array(0))])))]));

function nameOf(message, num) {
  const f = rawFields(message).find(([n, w]) => n === num && w === 2);
  return f ? dec.decode(message.subarray(f[4], f[3])) : "";
}

/**
 * model.onnx bytes -> the same model whose KV outputs are only the new positions (present_new.N.key /
 * .value) and whose logits are the last position's, or null when the graph does not have the expected
 * present.N.* outputs and logits_to_keep initializer. Its logits_to_keep is a scalar int64 input.
 */
export function smallOutputGraph(bytes, dtype) {
  const b = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const top = rawFields(b);
  const g = top.find(([num, wire]) => num === 7 && wire === 2);
  if (!g) return null;
  const graph = b.subarray(g[4], g[3]);
  const kept = [];
  const present = [];
  let keep = 0;
  for (const [num, wire, start, end, payload] of rawFields(graph)) {
    // GraphProto: initializer 5 (TensorProto.name 8), input 11 and output 12 (ValueInfoProto.name 1)
    if (wire === 2 && (num === 5 || num === 11 || num === 12)) {
      const text = nameOf(graph.subarray(payload, end), num === 5 ? 8 : 1);
      if (text.startsWith("present_new.")) return null; // already rewritten
      if (num === 12 && /^present\.\d+\.(key|value)$/.test(text)) { present.push(text); continue; }
      if ((num === 5 || num === 11) && text === "logits_to_keep") { keep++; continue; }
    }
    kept.push(graph.subarray(start, end));
  }
  if (!present.length || keep !== 2) return null;
  const elemType = dtype === "float16" ? 10 : 1;
  const added = [
    scalarInt64Input("logits_to_keep"),
    node("Constant", [], ["qe_small_axes"], [intsAttr("value_ints", [2])]),
    node("Shape", ["attention_mask"], ["qe_small_total"], [intAttr("start", 1), intAttr("end", 2)]),
    node("Shape", ["input_ids"], ["qe_small_new"], [intAttr("start", 1), intAttr("end", 2)]),
    node("Sub", ["qe_small_total", "qe_small_new"], ["qe_small_start"]),
  ];
  for (const name of present) {
    const out = name.replace("present.", "present_new.");
    added.push(node("Slice", [name, "qe_small_start", "qe_small_total", "qe_small_axes"], [out]), output(out, elemType));
  }
  const newGraph = concat([...kept, ...added]);
  const parts = [];
  for (const [num, wire, start, end] of top) parts.push(num === 7 && wire === 2 ? field(7, newGraph) : b.subarray(start, end));
  return concat(parts);
}
