// The runtime-agnostic part of the JavaScript package: what the Python `Model` offers (generate, stream,
// chat with cache reuse, sampling, stop strings, context checks), over a backend that owns the KV cache.
// It imports no package: the tokenizer and template classes and the onnxruntime backend are handed in by
// node.js (onnxruntime-node, in-place cache) or web.js (onnxruntime-web, growing cache).

import { QwenEdgeError } from "./errors.js";
import { argmax, Sampler, samplingParams } from "./sampling.js";
import { Controller, lookupProposals } from "./speculative.js";
import { checkTools, forTemplate, parseCalls } from "./tools.js";
import { StopMatcher, StreamDecoder } from "./text.js";

const OPTIONS = new Set(["maxNewTokens", "temperature", "topK", "topP", "minP", "repetitionPenalty",
  "frequencyPenalty", "presencePenalty", "seed", "stop", "truncate", "ignoreEos", "signal", "logprobs", "tools",
  "toolChoice"]);
const ROLES = new Set(["system", "user", "assistant", "tool"]);

/** The chat template text: tokenizer_config.json's chat_template, else chat_template.jinja. */
export function templateSource(tokenizerConfig, jinjaFile) {
  let t = tokenizerConfig ? tokenizerConfig.chat_template : undefined;
  if (Array.isArray(t)) t = (t.find((x) => x.name === "default") || {}).template;
  if (typeof t === "string" && t.trim()) return t;
  return jinjaFile || null;
}

export class Model {
  /**
   * @param {object} a  manifest, tokenizer (a @huggingface/tokenizers Tokenizer), tokenizerConfig,
   *   generationConfig, Template (the @huggingface/jinja class), templateText, backend ({newCache(n)}),
   *   maxLength
   */
  constructor(a) {
    this.manifest = a.manifest;
    this.spec = a.manifest.model;
    this.tokenizer = a.tokenizer;
    this.generationConfig = a.generationConfig || {};
    this.backend = a.backend;
    const limit = a.manifest.max_length;
    const n = a.maxLength ?? limit;
    if (!Number.isInteger(n) || n < 2 || n > limit) {
      throw new QwenEdgeError(`maxLength must be an integer in 2..${limit} (the exported context), got ${a.maxLength}`);
    }
    this.maxLength = n;
    if (a.lookup !== undefined && a.lookup !== null && !(Number.isInteger(a.lookup) && a.lookup >= 1 && a.lookup <= 64)) {
      throw new QwenEdgeError(`lookup (tokens proposed from the prompt) must be an integer in 1..64, got ${a.lookup}`);
    }
    this.lookup = a.lookup ?? null; // prompt-lookup speculative decoding (greedy generations): speculative.js
    this.templateText = templateSource(a.tokenizerConfig, a.templateText);
    this.template = this.templateText ? new a.Template(this.templateText) : null;
    this.stopTokenIds = stopIds(this.generationConfig, a.tokenizerConfig, this.tokenizer, this.templateText);
    this._idle = [];
    this.closed = false;
    this._inflight = new Set(); // forward passes running now: close() waits for them before the release
  }

  _checkOpen() {
    if (this.closed) throw new QwenEdgeError("the model is closed: load it again to generate");
  }

  /** Run one forward pass, known to close() until it settles. */
  _forward(cache, keep = 1) {
    const p = cache.forward(keep);
    this._inflight.add(p);
    const done = () => this._inflight.delete(p);
    p.then(done, done);
    return p;
  }

  encode(text, { addSpecialTokens = true } = {}) {
    checkText(text, "the text");
    return this.tokenizer.encode(text, { add_special_tokens: addSpecialTokens }).ids;
  }

  decode(ids, { skipSpecialTokens = true } = {}) {
    return this.tokenizer.decode(ids, { skip_special_tokens: skipSpecialTokens });
  }

  /** The chat as the prompt text the model sees (the model's own template). */
  render(messages, { addGenerationPrompt = true, tools = null } = {}) {
    if (!this.template) throw new QwenEdgeError("this model has no chat template: pass raw text or token ids");
    return this.template.render({ messages: forTemplate(checkMessages(messages)), add_generation_prompt: addGenerationPrompt,
      tools, documents: null });
  }

  /** A prompt (text, chat messages or token ids) as token ids; `tools` rendered by the template. */
  promptIds(prompt, tools = null) {
    if (typeof prompt === "string") return this.encode(checkText(prompt, "the prompt"));
    if (Array.isArray(prompt) && prompt.length && prompt.every((m) => m && typeof m === "object" && !Array.isArray(m))) {
      return this.encode(this.render(prompt, { tools }), { addSpecialTokens: false });
    }
    if (Array.isArray(prompt) && prompt.every((t) => Number.isInteger(t))) {
      const bad = prompt.find((t) => t < 0 || t >= this.spec.vocab_size);
      if (bad !== undefined) throw new QwenEdgeError(`token id ${bad} is outside the vocabulary (0..${this.spec.vocab_size - 1})`);
      return [...prompt];
    }
    throw new QwenEdgeError("a prompt is a string, an array of chat messages ({role, content}) or an array of token ids");
  }

  /** The prompt ids checked against the context (or cut from the left with truncate). */
  fit(ids, maxNewTokens, truncate) {
    if (!ids.length) throw new QwenEdgeError("the prompt is empty");
    if (ids.length < this.maxLength) return ids;
    if (!truncate) {
      throw new QwenEdgeError(`the prompt is ${ids.length} tokens but the context holds ${this.maxLength} and one position ` +
        "must stay free for the reply; " +
        "shorten it or truncate it from the left (truncate: true)");
    }
    return ids.slice(-Math.max(this.maxLength - maxNewTokens, Math.floor(this.maxLength / 2)));
  }

  /** Generate, as an async iterable of text pieces; `.result` resolves to {text, tokens, finishReason, timings}. */
  stream(prompt, options = {}) {
    const t0 = now();
    this._checkOpen();
    checkOptions(options);
    const maxNew = checkMaxNew(options.maxNewTokens ?? 512);
    const params = samplingParams(this.generationConfig, options);
    const top = options.logprobs ?? null;
    if (top !== null && !(Number.isInteger(top) && top >= 0 && top <= 20)) {
      throw new QwenEdgeError(`logprobs must be an integer in 0..20 (the alternatives to return), got ${top}`);
    }
    let tools = options.tools ? checkTools(options.tools) : null;
    if (options.toolChoice !== undefined && !["auto", "none"].includes(options.toolChoice)) {
      throw new QwenEdgeError("toolChoice in JavaScript is 'auto' or 'none' ('required' and named functions need " +
        "constrained decoding, which the JS package lacks: use the server)");
    }
    if (options.toolChoice === "none") tools = null;
    const ids = this.fit(this.promptIds(prompt, tools), maxNew, !!options.truncate);
    const cache = this._idle.pop() || this.backend.newCache(this.maxLength);
    cache.reset();
    cache.append(ids);
    return new TextStream(this, cache, new Sampler(params, top), { maxNew, stops: options.stop, ignoreEos: options.ignoreEos,
      signal: options.signal, t0, onDone: () => { if (this._idle.length < 2) this._idle.push(cache); } });
  }

  async complete(prompt, options = {}) {
    const s = this.stream(prompt, options);
    for await (const _ of s); // eslint-disable-line no-unused-vars
    if (options.tools && options.toolChoice !== "none") {
      const [content, calls] = parseCalls(s.result.text, checkTools(options.tools).map((t) => t.function.name));
      s.result.content = content;
      s.result.toolCalls = calls;
    }
    return s.result;
  }

  async generate(prompt, options = {}) {
    return (await this.complete(prompt, options)).text;
  }

  chat({ system = null, ...defaults } = {}) {
    this._checkOpen();
    checkOptions(defaults);
    return new Chat(this, system, defaults);
  }

  /**
   * Release the session. Safe mid-generation: running streams end at their next token (finishReason
   * "cancelled"), the forward passes in flight finish first, and later calls throw a QwenEdgeError.
   */
  async close() {
    if (this.closed) return;
    this.closed = true;
    this._idle = [];
    await Promise.allSettled([...this._inflight]);
    await this.backend.close?.();
  }
}

export class TextStream {
  constructor(model, cache, sampler, { maxNew, stops, ignoreEos, signal, t0, onDone }) {
    this.model = model;
    this.cache = cache;
    this.sampler = sampler;
    this.maxNew = maxNew;
    this.matcher = new StopMatcher(stops ?? null);
    this.stopIds = ignoreEos ? new Set() : model.stopTokenIds;
    this.signal = signal;
    this.t0 = t0;
    this.onDone = onDone;
    this.result = null;
    this.done = false;
  }

  /**
   * The one consumer loop: a producer (plain steps, or prompt lookup) yields tokens with whether the context
   * is full after each; end tokens, max tokens, stop strings, cancellation, detokenizing and timings live here
   * once. Breaking out of the producer lets it settle the cache (its finally block).
   */
  async *[Symbol.asyncIterator]() {
    const tm = { promptTokens: this.cache.ids.length - this.cache.length, cachedTokens: this.cache.length,
      newTokens: 0, ttftS: 0, prefillS: 0, decodeS: 0, totalS: 0 };
    const tokens = [];
    const text = [];
    const decoder = new StreamDecoder(this.model.tokenizer);
    const start = this.cache.ids.length;
    let reason = "length";
    let tFirst = 0;
    let tLast = 0;
    try {
      if (this.model.closed) { reason = "cancelled"; return; } // closed before the first step
      const t = now();
      const logits = await this.model._forward(this.cache);
      tm.prefillS = now() - t;
      const lookup = this.model.lookup && this.sampler.greedy && this.sampler.topLogprobs === null;
      if (lookup) tm.speculative = { proposed: 0, accepted: 0, passes: 0, tokens: 0 };
      const steps = lookup ? this._lookupSteps(logits, start, tm) : this._plainSteps(logits, start);
      for await (const { tok, full } of steps) {
        tokens.push(tok);
        tm.newTokens = tokens.length;
        tLast = now();
        if (tokens.length === 1) { tFirst = tLast; tm.ttftS = tLast - this.t0; }
        if (this.stopIds.has(tok)) { reason = "eos"; break; }
        const [out, stopped] = this.matcher.put(decoder.put(tok));
        if (out) { text.push(out); yield out; }
        if (stopped) { reason = "stop"; break; }
        if (this.signal?.aborted || this.model.closed) { reason = "cancelled"; break; }
        if (tokens.length === this.maxNew || full) break;
      }
      if (reason !== "stop") {
        let [tail, stopped] = this.matcher.put(decoder.flush());
        tail += this.matcher.flush();
        if (stopped) reason = "stop";
        if (tail) { text.push(tail); yield tail; }
      }
    } finally {
      tm.totalS = now() - this.t0;
      tm.decodeS = tLast - tFirst;
      tm.prefillTps = tm.prefillS > 0 ? tm.promptTokens / tm.prefillS : 0;
      tm.decodeTps = tm.newTokens > 1 && tm.decodeS > 0 ? (tm.newTokens - 1) / tm.decodeS : 0;
      const sp = tm.speculative;
      if (sp) {
        sp.acceptanceRate = sp.proposed ? sp.accepted / sp.proposed : 0;
        sp.tokensPerPass = sp.passes ? sp.tokens / sp.passes : 0;
        delete sp.tokens;
      }
      this.result = { text: text.join(""), tokens, finishReason: reason, timings: tm };
      if (this.sampler.topLogprobs !== null) this.result.logprobs = this.sampler.log;
      this.done = true;
      this.onDone?.(this);
    }
  }

  /** The plain producer: one token a forward pass, each fed back in place (the last one stays pending). */
  async *_plainSteps(logits, start) {
    const penalty = this.sampler.needsHistory;
    const fast = this.sampler.greedy && !penalty && this.sampler.topLogprobs === null;
    for (;;) {
      const tok = fast ? argmax(logits)
        : this.sampler.sample(logits, penalty ? this.cache.ids : null, penalty ? this.cache.ids.slice(start) : null);
      this.cache.push(tok);
      yield { tok, full: this.cache.free === 0 };
      logits = await this.model._forward(this.cache);
    }
  }

  /**
   * The prompt-lookup producer (greedy): the same tokens as the plain one (each kept proposal is the
   * model's own choice), several a forward pass.
   */
  async *_lookupSteps(logits, start, tm) {
    const cache = this.cache;
    const penalty = this.sampler.needsHistory;
    const vocab = this.model.spec.vocab_size;
    const ctl = new Controller(this.model.lookup);
    const sp = tm.speculative;
    const pick = (rows, i, upto) => {
      const row = rows.subarray(i * vocab, (i + 1) * vocab);
      return penalty ? this.sampler.sample(row, cache.ids.slice(0, upto), cache.ids.slice(start, upto)) : argmax(row);
    };
    let out = [pick(logits, 0, cache.ids.length)]; // the first token, from the prefill
    let base = cache.ids.length;
    let accepted = 0;
    let j = -1; // the index in `out` of the token the consumer holds (-1: none of this pass yet)
    try {
      for (;;) {
        // the rollback: keep the pending token and the accepted proposals (their keys and values were computed
        // from the same prefix); later positions are overwritten, nothing copied. The last token is pending.
        cache.truncate(base + accepted);
        cache.push(out[accepted]);
        for (j = 0; j < out.length; j++) yield { tok: out[j], full: base + j + 1 === cache.maxLength };
        j = -1;
        base = cache.ids.length;
        const room = Math.min(this.maxNew - tm.newTokens, cache.free) - 1; // (a pass yields up to k + 1 tokens)
        const props = lookupProposals(cache.ids, Math.min(ctl.choose(), room));
        const k = props.length;
        const tp = now();
        if (k) cache.append(props);
        const rows = await this.model._forward(cache, k + 1);
        const passS = now() - tp;
        sp.passes++;
        out = [];
        accepted = 0;
        for (let i = 0; i <= k; i++) {
          const tgt = pick(rows, i, base + i);
          out.push(tgt);
          if (i === k || props[i] !== tgt) break;
          accepted++;
        }
        ctl.record(k, accepted, passS);
        sp.proposed += k;
        sp.accepted += accepted;
        sp.tokens += out.length;
      }
    } finally {
      // the consumer stopped at out[j]: the cache as the plain loop leaves it (that token pending)
      if (j >= 0 && j < out.length - 1) { cache.truncate(base + j); cache.push(out[j]); }
    }
  }

  /** Run to the end; the whole text. */
  async read() {
    for await (const _ of this); // eslint-disable-line no-unused-vars
    return this.result.text;
  }
}

/** A multi-turn chat that keeps its KV cache between turns (only each new turn is prefilled). */
export class Chat {
  constructor(model, system, defaults) {
    this.model = model;
    this.defaults = defaults;
    this.system = system;
    this.messages = system !== null ? [{ role: "system", content: system }] : [];
    this.cache = model.backend.newCache(model.maxLength);
    this.last = null;
    this.busy = false;
  }

  get tokens() {
    return [...this.cache.ids];
  }

  reset(system = this.system) {
    if (this.busy) throw new QwenEdgeError("the previous reply is still streaming: finish it first");
    this.messages = system !== null ? [{ role: "system", content: system }] : [];
    this.cache.reset();
  }

  async say(content, options = {}) {
    return this.send(content, options).read();
  }

  /** Send a user message; iterate the returned stream for the reply (added to messages when done). */
  send(content, options = {}) {
    this.model._checkOpen();
    if (this.busy) throw new QwenEdgeError("the previous reply is still streaming: finish it first");
    if (typeof content !== "string") throw new QwenEdgeError(`a chat message is a string, got ${typeof content}`);
    checkOptions(options);
    const t0 = now();
    const opts = { ...this.defaults, ...options };
    const maxNew = checkMaxNew(opts.maxNewTokens ?? 512);
    const params = samplingParams(this.model.generationConfig, opts);
    const [messages, keep, fresh] = this._fit([...this.messages, { role: "user", content }], maxNew, !!opts.truncate);
    this.cache.truncate(keep);
    this.cache.append(fresh);
    this.busy = true;
    return new TextStream(this.model, this.cache, new Sampler(params), { maxNew, stops: opts.stop,
      ignoreEos: opts.ignoreEos, signal: opts.signal, t0, onDone: (s) => {
        this.busy = false;
        this.last = s.result;
        this.messages = [...messages, { role: "assistant", content: s.result.text }];
      } });
  }

  _newIds(text) {
    const hist = this.cache.ids;
    if (hist.length) {
      const done = this.model.decode(hist, { skipSpecialTokens: false });
      if (text.startsWith(done) && text.length > done.length) {
        return [hist.length, this.model.encode(text.slice(done.length), { addSpecialTokens: false })];
      }
    }
    const ids = this.model.encode(text, { addSpecialTokens: false });
    const n = Math.min(hist.length, ids.length - 1);
    let keep = 0;
    while (keep < n && hist[keep] === ids[keep]) keep++;
    return [keep, ids.slice(keep)];
  }

  _fit(messages, maxNew, truncate) {
    const limit = this.model.maxLength;
    const room = Math.min(maxNew, Math.floor(limit / 2));
    for (;;) {
      const [keep, fresh] = this._newIds(this.model.render(messages));
      const n = keep + fresh.length;
      if (n < limit && (!truncate || n + room <= limit)) return [messages, keep, fresh];
      const first = messages.length && messages[0].role === "system" ? 1 : 0;
      if (!truncate || messages.length - first <= 1) {
        throw new QwenEdgeError(`the conversation is ${n} tokens but the context holds ${limit} and one position must stay ` +
          "free for the reply; start a new chat " +
          "or drop the oldest turns (truncate: true)");
      }
      messages.splice(first, 1);
      while (messages.length - first > 1 && messages[first].role !== "user") messages.splice(first, 1);
    }
  }
}

function stopIds(gen, tokCfg, tokenizer, template) {
  const ids = new Set();
  const eos = gen.eos_token_id;
  for (const i of Array.isArray(eos) ? eos : eos === undefined || eos === null ? [] : [eos]) ids.add(i);
  const eosTok = tokCfg && tokCfg.eos_token;
  for (let tok of [eosTok, "<|endoftext|>", template && template.includes("<|im_end|>") ? "<|im_end|>" : null]) {
    if (tok && typeof tok === "object") tok = tok.content;
    const id = typeof tok === "string" ? tokenizer.token_to_id(tok) : undefined;
    if (id !== undefined && id !== null) ids.add(id);
  }
  return ids;
}

function checkText(text, what) {
  if (typeof text !== "string") throw new QwenEdgeError(`${what} must be a string, got ${typeof text}`);
  for (let i = 0; i < text.length; i++) {  // a lone surrogate cannot be UTF-8
    const c = text.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff) {
      const d = text.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) { i++; continue; }
    }
    if (c >= 0xd800 && c <= 0xdfff) throw new QwenEdgeError(`${what} is not valid Unicode (a lone surrogate at ${i})`);
  }
  return text;
}

function checkMessages(messages) {
  if (!Array.isArray(messages)) throw new QwenEdgeError("messages must be an array of {role, content} objects");
  return messages.map((m) => {
    if (!m || typeof m !== "object" || !("role" in m)) {
      throw new QwenEdgeError(`a chat message must be an object with role and content, got ${JSON.stringify(m)}`);
    }
    if (!ROLES.has(m.role)) throw new QwenEdgeError(`unknown chat role ${JSON.stringify(m.role)}: use system, user, assistant or tool`);
    if (m.content !== undefined && m.content !== null) checkText(m.content, `a ${m.role} message`);
    return { ...m };
  });
}

function checkOptions(options) {
  for (const k of Object.keys(options)) {
    if (!OPTIONS.has(k)) throw new QwenEdgeError(`unknown option '${k}': use ${[...OPTIONS].join(", ")}`);
  }
}

function checkMaxNew(n) {
  if (!Number.isInteger(n) || n < 1) throw new QwenEdgeError(`maxNewTokens must be an integer >= 1, got ${n}`);
  return n;
}

function now() {
  return performance.now() / 1000;
}
