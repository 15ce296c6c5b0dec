// Prompt-lookup speculative decoding for the JS runtime: the proposals and the choice of how many to check
// are qwen_edge/runtimes/speculative.py's (PromptLookup, Controller), so the greedy tokens are Python's.
// The tokens that followed the latest earlier occurrence of the sequence's last n-gram are proposed, the
// model checks them in one forward pass (Cache.forward(keep)), and those equal to its own choice are kept:
// the output is what plain decoding gives, several tokens a pass when the output repeats the input.

/** Up to k ids that followed the most recent earlier occurrence of the last n ids (n from maxNgram down). */
export function lookupProposals(ids, k, maxNgram = 4, minNgram = 2) {
  const L = ids.length;
  for (let n = Math.min(maxNgram, L - 1); n >= minNgram; n--) {
    outer: for (let i = L - n - 1; i >= 0; i--) {
      for (let j = 0; j < n; j++) if (ids[i + j] !== ids[L - n + j]) continue outer;
      return ids.slice(i + n, i + n + k);
    }
  }
  return [];
}

/** How many tokens to propose: the k with the most expected tokens per second, from measured costs. */
export class Controller {
  constructor(maxTokens) {
    this.maxTokens = maxTokens;
    this.acc = 2; // decayed counts of accepted / first-rejected proposals (prior: half accepted)
    this.rej = 2;
    this.plain = 0; // seconds of a one-token step
    this.extra = 0; // extra seconds per verified token
    this.idle = 0;
  }

  choose(draftCost = 0) {
    if (!this.plain) return 0; // the first step measures a plain step
    const a = Math.min(this.acc / (this.acc + this.rej), 0.99);
    let bestK = 0;
    let best = 1 / this.plain;
    for (let k = 1; k <= this.maxTokens; k++) {
      const rate = (1 - a ** (k + 1)) / (1 - a) / (this.plain + k * (this.extra + draftCost));
      if (rate > best) { bestK = k; best = rate; }
    }
    if (bestK === 0) {
      if (++this.idle >= 16) { this.idle = 0; return 1; } // proposals may have become good again
    } else this.idle = 0;
    return bestK;
  }

  record(proposed, accepted, seconds) {
    if (proposed === 0) {
      this.plain = this.plain ? 0.9 * this.plain + 0.1 * seconds : seconds;
      return;
    }
    this.acc = 0.9 * this.acc + accepted;
    this.rej = 0.9 * this.rej + (accepted < proposed ? 1 : 0);
    const per = Math.max(0, seconds - this.plain) / proposed;
    this.extra = this.extra ? 0.8 * this.extra + 0.2 * per : per;
  }
}
