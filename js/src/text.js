// Streamed text: the Python runtime's streaming detokenizer and stop-string matcher, ported as is
// (qwen_edge/runtimes/detok.py, stops.py), so both emit the same pieces.

import { QwenEdgeError } from "./errors.js";

const REPLACEMENT = "\ufffd";
const MAX_PENDING = 8; // a character completes within 4 byte-level tokens; more pending = invalid bytes

/** Token ids in, complete text pieces out: never half a UTF-8 character. */
export class StreamDecoder {
  constructor(tokenizer, skipSpecialTokens = true) {
    this.tokenizer = tokenizer;
    this.skip = skipSpecialTokens;
    this.ids = [];
    this.read = 0;
    this.prefixText = "";
  }

  decode(ids) {
    return this.tokenizer.decode(ids, { skip_special_tokens: this.skip });
  }

  put(id) {
    this.ids.push(id);
    const text = this.decode(this.ids);
    const pending = this.ids.length - this.read;
    if ((text.endsWith(REPLACEMENT) || text.length < this.prefixText.length) && pending < MAX_PENDING) return "";
    return this.emit(text);
  }

  flush() {
    const piece = this.ids.length > this.read ? this.emit(this.decode(this.ids)) : "";
    this.ids = [];
    this.read = 0;
    this.prefixText = "";
    return piece;
  }

  emit(text) {
    const piece = text.slice(this.prefixText.length);
    this.ids = this.ids.slice(this.read);
    this.read = this.ids.length;
    this.prefixText = this.decode(this.ids);
    return piece;
  }
}

/** Stop strings across pieces: text that may still start a stop is held back until decided. */
export class StopMatcher {
  constructor(stops) {
    if (stops !== null && stops !== undefined && !Array.isArray(stops)) {
      throw new QwenEdgeError("stop must be an array of strings");
    }
    this.stops = [...new Set(stops || [])];
    for (const s of this.stops) {
      if (typeof s !== "string") throw new QwenEdgeError(`stop strings must be strings, got ${typeof s}`);
      if (!s) throw new QwenEdgeError("stop strings must not be empty");
    }
    this.prefixes = new Set();
    for (const s of this.stops) for (let i = 1; i < s.length; i++) this.prefixes.add(s.slice(0, i));
    this.longest = Math.max(0, ...this.stops.map((s) => s.length));
    this.held = "";
    this.stopped = false;
  }

  /** Returns [text safe to show, stopped]. */
  put(piece) {
    if (this.stopped) return ["", true];
    const buf = this.held + piece;
    if (!this.stops.length) return [buf, false];
    let hit = buf.length;
    let which = null;
    for (const s of this.stops) {
      const i = buf.indexOf(s);
      if (i !== -1 && i < hit) { hit = i; which = s; }
    }
    if (which !== null) {
      this.held = "";
      this.stopped = true;
      return [buf.slice(0, hit), true];
    }
    for (let n = Math.min(buf.length, this.longest - 1); n > 0; n--) {
      if (this.prefixes.has(buf.slice(-n))) {
        this.held = buf.slice(-n);
        return [buf.slice(0, -n), false];
      }
    }
    this.held = "";
    return [buf, false];
  }

  flush() {
    const held = this.held;
    this.held = "";
    return this.stopped ? "" : held;
  }
}
