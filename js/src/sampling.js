// Token sampling on Float32Array logits: the Python runtime's semantics (qwen_edge/runtimes/sampler.py),
// in Hugging Face's order: repetition penalty, OpenAI's frequency / presence penalties, then (unless greedy)
// temperature -> top-k -> top-p -> min-p, renormalize, draw. Seeded draws are reproducible in JavaScript
// (a 32-bit generator: the same seed gives the same tokens here, not the same as numpy's).

import { QwenEdgeError } from "./errors.js";

const DEFAULTS = { temperature: 1.0, topK: 0, topP: 1.0, minP: 0.0, repetitionPenalty: 1.0,
  frequencyPenalty: 0.0, presencePenalty: 0.0, seed: null };

function real(name, v) {
  if (typeof v !== "number" || Number.isNaN(v)) throw new QwenEdgeError(`${name} must be a number, got ${JSON.stringify(v)}`);
  return v;
}

/** Check and complete sampling options; the model's generation_config fills what the caller leaves out. */
export function samplingParams(generationConfig = {}, options = {}) {
  const cfg = generationConfig || {};
  const fromCfg = { temperature: cfg.temperature, topK: cfg.top_k, topP: cfg.top_p, minP: cfg.min_p,
    repetitionPenalty: cfg.repetition_penalty };
  const p = { ...DEFAULTS };
  for (const [k, v] of Object.entries(fromCfg)) if (v !== undefined && v !== null) p[k] = v;
  if (cfg.do_sample === false) p.temperature = 0.0;
  for (const k of Object.keys(DEFAULTS)) if (options[k] !== undefined && options[k] !== null) p[k] = options[k];
  const t = real("temperature", p.temperature);
  if (!Number.isFinite(t) || t < 0) throw new QwenEdgeError(`temperature must be a finite number >= 0, got ${t}`);
  const tp = real("topP", p.topP);
  if (!(tp > 0 && tp <= 1)) throw new QwenEdgeError(`topP must be in (0, 1], got ${tp}`);
  if (!Number.isInteger(p.topK) || p.topK < 0) throw new QwenEdgeError(`topK must be an integer >= 0 (0 = off), got ${p.topK}`);
  const mp = real("minP", p.minP);
  if (!(mp >= 0 && mp <= 1)) throw new QwenEdgeError(`minP must be in [0, 1], got ${mp}`);
  const rp = real("repetitionPenalty", p.repetitionPenalty);
  if (!(Number.isFinite(rp) && rp > 0)) throw new QwenEdgeError(`repetitionPenalty must be a finite number > 0, got ${rp}`);
  for (const k of ["frequencyPenalty", "presencePenalty"]) {
    const v = real(k, p[k]);
    if (!(v >= -2 && v <= 2)) throw new QwenEdgeError(`${k} must be between -2 and 2, got ${v}`);
  }
  if (p.seed !== null && (!Number.isInteger(p.seed) || p.seed < 0)) {
    throw new QwenEdgeError(`seed must be an integer >= 0 or null, got ${p.seed}`);
  }
  return p;
}

/** mulberry32: a small, well-mixed 32-bit generator; floats in [0, 1). */
function rng(seed) {
  let a = seed === null ? (Math.random() * 2 ** 32) >>> 0 : seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export class Sampler {
  constructor(params, topLogprobs = null) {
    this.params = params;
    this.random = rng(params.seed);
    this.topLogprobs = topLogprobs;
    this.log = [];
  }

  get greedy() {
    return this.params.temperature === 0;
  }

  get needsHistory() {
    const p = this.params;
    return p.repetitionPenalty !== 1 || p.frequencyPenalty !== 0 || p.presencePenalty !== 0;
  }

  /**
   * The next token id. history: every id so far; generated: the ids this call generated. With
   * `topLogprobs` set (0..20), each draw's log-probability and that many alternatives go to `log`: from the
   * distribution drawn from before truncation (penalties and temperature applied; temperature 1 when greedy),
   * as qwen_edge/runtimes/logprobs.py.
   */
  sample(logits, history = null, generated = null) {
    const x = this._penalized(logits, history, generated);
    const tok = this._pick(x);
    if (this.topLogprobs !== null && this.topLogprobs !== undefined) this.log.push(logprobEntry(x, tok, this.params.temperature || 1, this.topLogprobs));
    return tok;
  }

  _penalized(logits, history, generated) {
    const p = this.params;
    let x = logits;
    if (this.needsHistory) {
      x = Float32Array.from(logits);
      if (p.repetitionPenalty !== 1 && history) {
        for (const id of new Set(history)) x[id] = x[id] > 0 ? x[id] / p.repetitionPenalty : x[id] * p.repetitionPenalty;
      }
      if ((p.frequencyPenalty !== 0 || p.presencePenalty !== 0) && generated && generated.length) {
        const counts = new Map();
        for (const id of generated) counts.set(id, (counts.get(id) || 0) + 1);
        for (const [id, c] of counts) x[id] -= p.frequencyPenalty * c + p.presencePenalty;
      }
    }
    return x;
  }

  _pick(x) {
    const p = this.params;
    if (this.greedy) return argmax(x);
    const n = x.length;
    let max = -Infinity;
    for (let i = 0; i < n; i++) if (x[i] > max) max = x[i];
    const invT = Math.min(1 / p.temperature, 1e30);
    // candidates as [id, weight], weight = exp((logit - max) / T): the max weight is exactly 1
    let ids = null;
    let w;
    if (p.topK > 0 && p.topK < n) {
      const kth = kthLargest(x, p.topK);
      ids = [];
      for (let i = 0; i < n; i++) if (x[i] >= kth) ids.push(i);  // ties at the k-th value kept, as HF
      w = Float64Array.from(ids, (i) => Math.exp((x[i] - max) * invT));
    } else {
      w = new Float64Array(n);
      for (let i = 0; i < n; i++) w[i] = Math.exp((x[i] - max) * invT);
    }
    if (p.topP < 1) {
      let total = 0;
      for (let j = 0; j < w.length; j++) total += w[j];
      const target = p.topP * total;
      // The nucleus lies inside any top set that already holds the target mass: find a small one, sort it.
      let order = [];
      for (const t of [1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 0]) {
        order = [];
        let mass = 0;
        for (let j = 0; j < w.length; j++) if (w[j] > t || (t === 0 && w[j] > 0)) { order.push(j); mass += w[j]; }
        if (mass >= target) break;
      }
      order.sort((a, b) => w[b] - w[a] || a - b);
      let before = 0;
      let cut = order.length;
      for (let r = 0; r < order.length; r++) {  // keep a token iff the mass strictly above it < top_p
        if (before >= target) { cut = r; break; }
        before += w[order[r]];
      }
      const minW = w[order[Math.max(0, cut - 1)]];
      const keep = order.filter((j) => w[j] >= minW);
      ids = keep.map((j) => (ids ? ids[j] : j));
      w = Float64Array.from(keep, (j) => w[j]);
    }
    if (p.minP > 0) {
      const keep = [];
      for (let j = 0; j < w.length; j++) if (w[j] >= p.minP) keep.push(j);
      ids = keep.map((j) => (ids ? ids[j] : j));
      w = Float64Array.from(keep, (j) => w[j]);
    }
    let total = 0;
    for (let j = 0; j < w.length; j++) total += w[j];
    let target = this.random() * total;
    for (let j = 0; j < w.length; j++) {
      target -= w[j];
      if (target < 0 && w[j] > 0) return ids ? ids[j] : j;
    }
    for (let j = w.length - 1; j >= 0; j--) if (w[j] > 0) return ids ? ids[j] : j;
    return argmax(x);
  }
}

/** {id, logprob, top: [[id, logprob], ...]} of token `tok` under log-softmax(x / t). */
export function logprobEntry(x, tok, t, top) {
  let max = -Infinity;
  for (let i = 0; i < x.length; i++) if (x[i] > max) max = x[i];
  let sum = 0;
  for (let i = 0; i < x.length; i++) sum += Math.exp((x[i] - max) / t);
  const lse = max / t + Math.log(sum);
  const lp = (i) => x[i] / t - lse;
  const best = [];
  if (top > 0) {  // the `top` largest, by a small insertion list
    for (let i = 0; i < x.length; i++) {
      if (best.length < top || x[i] > x[best[best.length - 1]]) {
        let j = best.length < top ? best.length : top - 1;
        best[j] = i;
        while (j > 0 && x[best[j]] > x[best[j - 1]]) { const s = best[j]; best[j] = best[j - 1]; best[j - 1] = s; j--; }
      }
    }
  }
  return { id: tok, logprob: lp(tok), top: best.map((i) => [i, lp(i)]) };
}

export function argmax(x) {
  let best = 0;
  let v = x[0];
  for (let i = 1; i < x.length; i++) if (x[i] > v) { v = x[i]; best = i; }
  return best;
}

function kthLargest(x, k) {
  // Quickselect on a copy: O(n) expected, no sort of the whole vocabulary.
  const a = Float32Array.from(x);
  let lo = 0;
  let hi = a.length - 1;
  const target = k - 1;
  while (lo < hi) {
    const pivot = a[(lo + hi) >>> 1];
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i] > pivot) i++;
      while (a[j] < pivot) j--;
      if (i <= j) { const t = a[i]; a[i] = a[j]; a[j] = t; i++; j--; }
    }
    if (target <= j) hi = j;
    else if (target >= i) lo = i;
    else break;
  }
  return a[target];
}
