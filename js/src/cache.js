// The KV cache of one sequence and the forward step, over an onnxruntime (node or web) session.
//
// OwnedCache (onnxruntime-node): per layer one [1, kv_heads, capacity, head_dim] buffer kept by JavaScript
// and fed as past_key_values.N.*; the session runs the graph of small_outputs.js, which outputs only the
// new positions (present_new.N.*), copied in after each run. InPlaceCache (onnxruntime-node, a graph that
// small_outputs.js cannot rewrite): the same buffers also passed as the preallocated present.N.* outputs,
// so GroupQueryAttention writes new keys and values in place, but onnxruntime-node then copies the whole
// cache out at every run (below). The capacity grows with the sequence. GrowingCache (onnxruntime-web: its preallocated
// outputs stay empty, an open onnxruntime bug): the past holds exactly the positions so far and each
// step's present becomes the next past.
//
// The graph's logits_to_keep cannot be fed from JavaScript (node ignores the feed, web rejects it), so with
// the graph as exported a forward pass computes every fed position's logits: the prompt is fed in chunks of
// `prefillChunk` tokens so no pass computes more than one chunk's logits ([chunk, vocab] floats). The
// rewritten graph of small_outputs.js (Node) keeps only the last position's, so its chunks can be large.

import { QwenEdgeError } from "./errors.js";

class Cache {
  constructor(session, ort, spec, maxLength, prefillChunk, dtype) {
    this.session = session;
    this.ort = ort;
    this.spec = spec;
    this.maxLength = maxLength;
    this.prefillChunk = prefillChunk;
    this.dtype = dtype; // "float32" | "float16"
    this.ids = []; // the sequence so far: the first `length` are in the cache, the rest pending
    this.length = 0;
    this.vocab = spec.vocab_size;
  }

  get free() {
    return this.maxLength - this.ids.length;
  }

  append(ids) {
    if (this.ids.length + ids.length > this.maxLength) {
      throw new QwenEdgeError(`the sequence needs ${this.ids.length + ids.length} tokens but the context holds ${this.maxLength}`);
    }
    for (const t of ids) this.ids.push(t);
  }

  push(id) {
    if (this.ids.length >= this.maxLength) throw new QwenEdgeError(`the context is full (${this.maxLength} tokens)`);
    this.ids.push(id);
  }

  truncate(n) {
    const keep = Math.max(0, Math.min(n, this.ids.length));
    this.ids.length = keep;
    if (this.length > keep) this.rewind(keep);
  }

  reset() {
    this.ids = [];
    this.rewind(0);
  }

  /**
   * Run the pending ids (in chunks); the logits of the last `keep` positions, [keep * vocab] (keep 1: the
   * last position's). keep > 1 is a lookup verify pass: the proposals' positions go in the last run.
   */
  async forward(keep = 1) {
    const pending = this.ids.length - this.length;
    if (pending <= 0) throw new QwenEdgeError("nothing to run: no pending tokens");
    if (!(keep >= 1 && keep <= pending)) throw new QwenEdgeError(`keep must be 1..${pending}, got ${keep}`);
    let logits = null;
    while (this.length < this.ids.length) {
      const left = this.ids.length - this.length;
      // the last run holds every kept position (a long pending run stops its chunks short of them)
      const n = left <= Math.max(keep, this.prefillChunk) ? left : Math.min(left - keep, this.prefillChunk);
      const last = n === left;
      const ids = new BigInt64Array(n);
      for (let i = 0; i < n; i++) ids[i] = BigInt(this.ids[this.length + i]);
      const total = this.length + n;
      const feeds = {
        input_ids: new this.ort.Tensor("int64", ids, [1, n]),
        attention_mask: new this.ort.Tensor("int64", new BigInt64Array(total).fill(1n), [1, total]),
      };
      if (this.keepInput) feeds.logits_to_keep = new this.ort.Tensor("int64", BigInt64Array.of(BigInt(last ? keep : 1)), []);
      const out = await this.run(feeds, n);
      const all = out.logits.data;
      const rows = out.logits.dims[1]; // n, or the kept positions where the graph takes logits_to_keep
      const k = last ? keep : 1;
      // Each run's outputs are fresh buffers (onnxruntime-node and -web copy them out): a decode step keeps
      // the whole output as is. A copy would double the external memory a step allocates, and V8 answers
      // that pressure with collections whose marking threads take the CPU from onnxruntime's (measured).
      logits = rows === k ? all : all.slice((rows - k) * this.vocab, rows * this.vocab);
      out.logits.dispose?.();
      this.length = total;
    }
    return logits;
  }
}

function typedArray(dtype, n) {
  return dtype === "float16" ? new Uint16Array(n) : new Float32Array(n);
}

// onnxruntime-node copies every output after a run, a pre-allocated one too (its binding's
// OrtValueToNapiValue; microsoft/onnxruntime#32346 would reuse them), so each step costs a copy of the whole
// cache: ~16 us per position of capacity for the 0.5B (docs/benchmarks.md). The cache therefore holds what
// the sequence needs, not maxLength: it grows in steps of STEP positions (copying the filled positions),
// which costs one copy per STEP tokens instead of a larger copy at every step.
const STEP = 256;

export class InPlaceCache extends Cache {
  constructor(...args) {
    super(...args);
    this.capacity = 0;
    this.buffers = [];
    this._ensure(1);
  }

  /** Room for n positions: new buffers of n rounded up to STEP, the filled positions copied. */
  _ensure(n) {
    if (n <= this.capacity) return;
    const s = this.spec;
    const cap = Math.min(this.maxLength, Math.ceil(n / STEP) * STEP);
    const hd = s.head_dim;
    const buffers = [];
    for (let i = 0; i < 2 * s.num_layers; i++) {
      const data = typedArray(this.dtype, s.num_kv_heads * cap * hd);
      const old = this.buffers[i];
      if (old && this.length) {
        for (let h = 0; h < s.num_kv_heads; h++) {
          data.set(old.data.subarray(h * this.capacity * hd, h * this.capacity * hd + this.length * hd), h * cap * hd);
        }
      }
      buffers.push(new this.ort.Tensor(this.dtype, data, [1, s.num_kv_heads, cap, hd]));
    }
    this.buffers = buffers;
    this.capacity = cap;
  }

  append(ids) {
    super.append(ids);
    this._ensure(this.ids.length);
  }

  push(id) {
    super.push(id);
    this._ensure(this.ids.length);
  }

  rewind(n) {
    this.length = n; // later positions are simply overwritten
  }

  async run(feeds, n) {
    const fetches = { logits: null };
    for (let i = 0; i < this.spec.num_layers; i++) {
      for (const [j, kind] of [[0, "key"], [1, "value"]]) {
        const t = this.buffers[2 * i + j];
        feeds[`past_key_values.${i}.${kind}`] = t;
        fetches[`present.${i}.${kind}`] = t; // the same tensor: GroupQueryAttention writes in place
      }
    }
    return this.session.run(feeds, fetches);
  }
}

export class OwnedCache extends InPlaceCache {
  get keepInput() {
    return true; // the rewritten graph's logits_to_keep is a plain input (small_outputs.js)
  }

  async run(feeds, n) {
    const s = this.spec;
    const fetches = ["logits"];
    for (let i = 0; i < s.num_layers; i++) {
      feeds[`past_key_values.${i}.key`] = this.buffers[2 * i];
      feeds[`past_key_values.${i}.value`] = this.buffers[2 * i + 1];
      fetches.push(`present_new.${i}.key`, `present_new.${i}.value`);
    }
    const out = await this.session.run(feeds, fetches);
    const hd = s.head_dim;
    const cap = this.capacity;
    for (let i = 0; i < 2 * s.num_layers; i++) {
      const name = `present_new.${i >> 1}.${i & 1 ? "value" : "key"}`;
      const src = out[name].data;
      const dst = this.buffers[i].data;
      for (let h = 0; h < s.num_kv_heads; h++) dst.set(src.subarray(h * n * hd, (h + 1) * n * hd), (h * cap + this.length) * hd);
    }
    return out;
  }
}

export class GrowingCache extends Cache {
  constructor(...args) {
    super(...args);
    this.rewind(0);
  }

  rewind(n) {
    const s = this.spec;
    if (n === 0 || !this.past) {
      const dims = [1, s.num_kv_heads, 0, s.head_dim];
      this.past = Array.from({ length: 2 * s.num_layers }, () => new this.ort.Tensor(this.dtype, typedArray(this.dtype, 0), dims));
    } else { // keep the first n positions of every head
      this.past = this.past.map((t) => {
        const [, heads, len, hd] = t.dims;
        const out = typedArray(this.dtype, heads * n * hd);
        for (let h = 0; h < heads; h++) out.set(t.data.subarray(h * len * hd, h * len * hd + n * hd), h * n * hd);
        return new this.ort.Tensor(this.dtype, out, [1, heads, n, hd]);
      });
    }
    this.length = n;
  }

  async run(feeds, n) {
    const s = this.spec;
    for (let i = 0; i < s.num_layers; i++) {
      feeds[`past_key_values.${i}.key`] = this.past[2 * i];
      feeds[`past_key_values.${i}.value`] = this.past[2 * i + 1];
    }
    const out = await this.session.run(feeds);
    for (let i = 0; i < s.num_layers; i++) {
      this.past[2 * i] = out[`present.${i}.key`];
      this.past[2 * i + 1] = out[`present.${i}.value`];
    }
    return out;
  }
}
