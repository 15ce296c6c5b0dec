"""Speculative decoding: cheap proposals checked by the target in one forward pass, the target's output.

A decode step on a CPU reads every weight once to produce one token; checking a few proposed tokens in the
same pass costs little more. Two proposers:

* PromptLookup: the tokens that followed the latest earlier occurrence of the sequence's last n-gram (free;
  strong when the output repeats the input, as in code editing);
* DraftModel: a smaller or more quantized model with the same tokenizer, its own runner and cache kept in
  step with the target's sequence.

Each step the proposer offers up to k tokens after the pending one; the target runs the pending token and the
proposals in one pass and returns each position's logits (`Runner.forward_last`). Greedy: proposals are kept
while they equal the target's own choice; the first that differs is replaced by it, and when all are kept
the target's next token comes free. Sampling: the speculative sampling rule (Leviathan et al. 2023; Chen et
al. 2023): a proposal d drawn from q is kept with probability min(1, p(d) / q(d)), else the token is drawn
from max(0, p - q) renormalised, so every token is distributed as the target's p (a lookup proposal is a
point mass: kept with probability p(d), else drawn from p without d). The target's cache rolls back by
truncation: positions past the accepted ones are simply overwritten later, nothing is copied.

k adapts (`Controller`): from the measured acceptance rate, the time of a plain step, the extra time of each
verified token and the draft's time per proposal, each step takes the k with the most expected tokens per
second, 0 (a plain step) when speculation does not pay, with a probe now and then to notice a change.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from ..errors import QwenEdgeError
from .kv import Runner
from .sampler import Sampler, _distribution, _draw, probs, sampled


@dataclass
class SpecStats:
    """Counts for one generation: proposals, those accepted, and the target's decode forward passes."""

    proposed: int = 0
    accepted: int = 0
    passes: int = 0  # target forward passes after the first token (plain steps and verify passes)
    tokens: int = 0  # tokens those passes produced

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_pass(self) -> float:
        return self.tokens / self.passes if self.passes else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"proposed": self.proposed, "accepted": self.accepted, "passes": self.passes,
                "acceptance_rate": self.acceptance_rate, "tokens_per_pass": self.tokens_per_pass}


class PromptLookup:
    """Proposes the continuation of the most recent earlier occurrence of the sequence's last n-gram."""

    name = "lookup"
    size_ratio = 0.0  # a proposal's cost relative to a target step (lookup: free)

    def __init__(self, max_tokens: int, max_ngram: int = 4, min_ngram: int = 2):
        self.max_tokens = int(max_tokens)
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.cost_per_token = 0.0

    def begin(self, target: Runner) -> None:
        pass

    def end(self) -> None:
        pass

    def propose(self, history: np.ndarray, k: int, sampler: Sampler) -> tuple[list[int], None]:
        h = history
        L = h.size
        for n in range(min(self.max_ngram, L - 1), self.min_ngram - 1, -1):
            windows = np.lib.stride_tricks.sliding_window_view(h[:L - 1], n)  # every earlier n-gram
            hits = np.flatnonzero((windows == h[L - n:]).all(axis=1))
            if hits.size:
                i = int(hits[-1]) + n  # the most recent occurrence's continuation
                return h[i:i + k].tolist(), None
        return [], None


class DraftModel:
    """A smaller model proposing greedily (or sampling with the target's settings, keeping its q)."""

    name = "draft"
    size_ratio = 0.5  # the draft's size over the target's (Model sets it): its first cost estimate

    def __init__(self, model: Any, max_tokens: int):
        self.model = model
        self.max_tokens = int(max_tokens)
        self.runner: Runner | None = None
        self.cost_per_token = 0.0  # seconds per proposal, measured
        self.catch_up = 0
        self.vocab = int(model.spec["vocab_size"])

    def begin(self, target: Runner) -> None:
        """The draft's runner lives beside the target's (an attribute of it), so a conversation the target
        has cached (a chat, the server's prompt cache) is cached in the draft too: sync() keeps the common
        prefix."""
        r = getattr(target, "draft_runner", None)
        if r is None or r.session is not self.model.session:
            r = target.draft_runner = self.model.new_runner()
        self.runner = r

    def end(self) -> None:
        self.runner = None

    def sync(self, history: np.ndarray) -> bool:
        """Make the draft's sequence equal `history` (its cache keeps the common prefix); False when the
        history holds an id past the draft's vocabulary (then nothing is proposed)."""
        r = self.runner
        m = min(r.n, history.size - 1)  # the last id is always fed: its logits give the first proposal
        diff = np.flatnonzero(r.ids[:m] != history[:m])
        common = int(diff[0]) if diff.size else m
        new = history[common:]
        if new.size and int(new.max()) >= self.vocab:  # a target's padding row the draft has no embedding for
            return False
        r.truncate(common)
        if new.size:
            r.append(new)
        return True

    def propose(self, history: np.ndarray, k: int, sampler: Sampler) -> tuple[list[int], list[np.ndarray] | None]:
        r = self.runner
        if not self.sync(history):
            return [], None
        catch_up = self.catch_up = r.n - r.length  # ids the draft has not seen: 1-2 a step, the prompt at first
        t = time.perf_counter()
        out: list[int] = []
        qs: list[np.ndarray] | None = None if sampler.params.greedy else []
        # under a constraint the draft proposes what the grammar allows (a copy of its state follows the
        # proposals): an unconstrained draft's text is rarely valid JSON, so its proposals would all be cut
        grammar = sampler.constraint.fork() if sampler.constraint is not None else None
        for i in range(k):
            logits = r.forward()
            if grammar is not None and not (qs is None and grammar.allows(int(logits.argmax()))):
                logits = grammar.mask_prefix(logits)  # (greedy: only when the draft's best token is refused)
                if not np.isfinite(logits.max()):  # nothing the draft knows is allowed: stop proposing
                    break
            if qs is None:
                tok = int(logits.argmax())
            else:
                q = probs(logits, sampler.params)
                tok = _draw(q, float(sampler.rng.random()))
                qs.append(q)
            out.append(tok)
            if grammar is not None:
                grammar.advance(tok)
                if grammar.done:
                    break
            if i + 1 < k:
                r.push(tok)
        if k and catch_up <= 2:  # a step's cost, not a prompt's prefill
            per = (time.perf_counter() - t) / k
            self.cost_per_token = 0.8 * self.cost_per_token + 0.2 * per if self.cost_per_token else per
        return out, qs


class Controller:
    """Chooses how many tokens to propose from measured acceptance and costs (see the module docstring)."""

    PROBE_EVERY = 16

    def __init__(self, max_tokens: int, probe_when_gated: bool = True):
        self.max_tokens = max_tokens
        self.probe_when_gated = probe_when_gated
        self.acc, self.rej = 2.0, 2.0  # decayed counts of accepted / first-rejected proposals (prior 0.5)
        self.plain = 0.0  # seconds of a plain (one-token) target step
        self.extra = 0.0  # extra seconds per verified token
        self.idle = 0  # plain steps in a row
        self.spec_spt = 0.0  # measured seconds per token of whole speculating steps (draft, verify, choice)
        self.steps = 0
        self.spec_s = self.spec_tokens = 0.0
        self.probe_every = self.PROBE_EVERY

    @property
    def alpha(self) -> float:
        return self.acc / (self.acc + self.rej)

    def choose(self, draft_cost: float) -> int:
        if not self.plain:
            return 0  # the first step measures a plain step
        a = min(self.alpha, 0.99)
        best_k, best = 0, 1.0 / self.plain
        if self.spec_spt and self.spec_spt > 1.15 * self.plain:  # (a margin: this machine's speed swings)
            # measured: speculating steps gave fewer tokens a second than plain ones (whatever the model says).
            # A draft's cost does not change within a generation, and each probe makes it catch up on every
            # token since its last step (measured: 4 probes cost an int8 target 15 %): no more probes then.
            if not self.probe_when_gated:
                return 0
            a = 0.0
        for k in range(1, self.max_tokens + 1):
            rate = (1 - a ** (k + 1)) / (1 - a) / (self.plain + k * (self.extra + draft_cost))
            if rate > best:
                best_k, best = k, rate
        if best_k == 0:
            self.idle += 1
            if self.idle >= self.probe_every:  # proposals may have become good again
                self.idle = 0
                self.probe_every = min(2 * self.probe_every, 256)  # each failed probe waits twice as long
                return 1
        else:
            self.idle = 0
            self.probe_every = self.PROBE_EVERY
        return best_k

    def record_step(self, proposed: int, tokens: int, seconds: float) -> None:
        """A whole step (proposals, the pass, the choice): what speculation really yields per second."""
        if proposed:
            self.steps += 1
            if self.steps == 1:
                return  # the first also pays one-time costs (buffers, the draft's first pass)
            # seconds over tokens of the recent steps together: one unlucky step does not decide
            self.spec_s = 0.9 * self.spec_s + seconds
            self.spec_tokens = 0.9 * self.spec_tokens + tokens
            if self.steps > 8:
                self.spec_spt = self.spec_s / self.spec_tokens

    def record(self, proposed: int, accepted: int, seconds: float) -> None:
        if proposed == 0:
            self.plain = seconds if not self.plain else 0.9 * self.plain + 0.1 * seconds
            return
        self.acc = 0.9 * self.acc + accepted
        self.rej = 0.9 * self.rej + (1 if accepted < proposed else 0)
        per = max(0.0, seconds - self.plain) / proposed
        self.extra = per if not self.extra else 0.8 * self.extra + 0.2 * per


def check_draft(target: Any, draft: Any) -> None:
    """A draft must share the target's tokenizer (the same ids for the same text)."""
    if target.tokenizer.get_vocab(with_added_tokens=True) != draft.tokenizer.get_vocab(with_added_tokens=True):
        raise QwenEdgeError(f"the draft {draft.folder} has a different tokenizer from the target {target.folder}: "
                            "a draft must come from the same model family (the same vocabulary)")
    if int(draft.spec["vocab_size"]) > int(target.spec["vocab_size"]):
        raise QwenEdgeError(f"the draft's vocabulary ({draft.spec['vocab_size']}) is larger than the target's "
                            f"({target.spec['vocab_size']})")


def speculative_steps(runner: Runner, sampler: Sampler, proposer: Any, logits: np.ndarray, start: int,
                      timings: Any, stats: SpecStats, *, max_new_tokens: int,
                      stop_ids: frozenset[int]) -> Iterator[int]:
    """A producer for token_loop (generate.py): each final token, already in the runner, several a forward
    pass; fills `stats`. Closed mid-pass (the consumer stopped), it settles the cache to the tokens kept.

    A constraint (constrained.py) masks the target's logits at every verified position, in the state after
    the tokens accepted before it, and advances only on tokens that are kept: a proposal the grammar does not
    allow has probability zero and is rejected, so nothing is ever rolled back and the output follows the
    same rules as plain constrained decoding. Proposals are first cut to the prefix the grammar accepts
    (llguidance's validate_tokens: no pass is spent on a token that cannot be kept). With logprobs, each
    kept token's entry is computed from its position's (masked, penalized) row, as the plain loop does."""
    params = sampler.params
    history_needed = sampler.needs_history
    constraint = sampler.constraint
    top = sampler.top_logprobs
    ctl = Controller(proposer.max_tokens, probe_when_gated=proposer.name == "lookup")
    sample_s = 0.0
    emitted = 0
    handing_out = False  # True while a pass's tokens are being yielded (a stop there settles the cache)
    proposer.begin(runner)

    def choose(row: np.ndarray, pos: int) -> tuple[np.ndarray | None, int, np.ndarray]:
        """The target's distribution at history length `pos` (None when greedy), greedy, its token, and the
        row as sampled from (masked by the constraint in its current state)."""
        hist = runner.ids[:pos] if history_needed else None
        gen = runner.ids[start:pos] if history_needed else None
        if constraint is not None:
            if params.greedy and top is None:  # the mask only when the best token is refused (constrained.py)
                pick = (lambda x: _distribution(x, params, hist, gen)[0][0]) if history_needed else np.argmax
                return None, constraint.greedy(row, pick), row
            row = constraint.mask(row)
        if params.greedy:
            if not history_needed:
                return None, int(row.argmax()), row
            ids, _ = _distribution(row, params, hist, gen)
            return None, int(ids[0]), row
        return probs(row, params, hist, gen), -1, row

    def keep(tok: int, row: np.ndarray, pos: int) -> int:
        """A token is final: the constraint follows it and its log-probability is recorded."""
        if constraint is not None:
            constraint.advance(tok)
        if top is not None:
            hist = runner.ids[:pos] if history_needed else None
            gen = runner.ids[start:pos] if history_needed else None
            sampler.log.append(sampled(row, params, hist, gen, tok, top))
        return tok

    try:
        # the first token: from the prefill's logits, as in the plain loop
        ts = time.perf_counter()
        p, tok, row = choose(logits, runner.n)
        if p is not None:
            tok = _draw(p, float(sampler.rng.random()))
        keep(tok, row, runner.n)
        sample_s += time.perf_counter() - ts
        runner.push(tok)
        emitted = 1
        yield tok
        while True:
            base = runner.n  # ids through the pending token
            room = min(max_new_tokens - emitted, runner.free) - 1  # a pass yields up to k + 1 tokens
            # until the draft's cost is measured, guess it from the bytes each model reads (its file size)
            cost = proposer.cost_per_token or proposer.size_ratio * ctl.plain
            k = min(ctl.choose(cost), room)
            qs = None
            props: list[int] = []
            t_step = time.perf_counter()
            if k > 0:
                props, qs = proposer.propose(runner.history, k, sampler)
                if constraint is not None and props:  # only what the grammar can accept is worth a check
                    props = props[:constraint.valid_prefix(props)]
                    qs = None if qs is None else qs[:len(props)]
                k = len(props)
            tp = time.perf_counter()
            if k:
                runner.append(props)
                logits = runner.forward_last(k + 1)
            else:
                logits = runner.forward()[None]
            pass_s = time.perf_counter() - tp
            stats.passes += 1
            ts = time.perf_counter()
            out: list[int] = []
            accepted = 0
            for i in range(k + 1):
                p, tgt, row = choose(logits[i], base + i)
                if i == k:  # every proposal kept: the target's next token comes free
                    out.append(keep(tgt if p is None else _draw(p, float(sampler.rng.random())), row, base + i))
                    break
                d = props[i]
                if p is None:  # greedy
                    if d == tgt:
                        out.append(keep(d, row, base + i))
                        accepted += 1
                        if d in stop_ids:  # the generation ends here: nothing after it is kept
                            break
                        continue
                    out.append(keep(tgt, row, base + i))
                    break
                q = None if qs is None else qs[i]
                qd = 1.0 if q is None else float(q[d])
                if qd > 0 and sampler.rng.random() < min(1.0, p[d] / qd):
                    out.append(keep(d, row, base + i))
                    accepted += 1
                    if d in stop_ids:
                        break
                    continue
                if q is None:
                    r = p.copy()
                    r[d] = 0.0
                else:
                    r = p.copy()
                    r[:q.size] -= q
                    np.maximum(r, 0.0, out=r)
                s = r.sum()
                out.append(keep(_draw(r if s > 0 else p, float(sampler.rng.random())), row, base + i))
                break
            sample_s += time.perf_counter() - ts
            ctl.record(k, accepted, pass_s)
            if getattr(proposer, "catch_up", 0) <= 2:  # (a draft's prompt prefill is not a step's cost)
                ctl.record_step(k, len(out), time.perf_counter() - t_step)
            stats.proposed += k
            stats.accepted += accepted
            # the rollback: back to the pending token, then the output ids (the accepted proposals' keys and
            # values stay in the cache: they were computed from the same prefix; see _settle)
            runner.truncate(base)
            handing_out = True
            for tok in out:
                runner.push(tok)
                emitted += 1
                stats.tokens += 1
                yield tok  # the consumer may stop here: the finally block settles the cache
            handing_out = False
            _settle(runner, base, accepted)
    finally:
        if handing_out:
            _settle(runner, base, accepted)
        proposer.end()
        timings.sample_s += sample_s


def _settle(runner: Runner, base: int, accepted: int) -> None:
    """After a pass: the cache holds the pending token and the accepted proposals (their keys and values are
    the target's own: each was computed from the same prefix); the last output token stays pending."""
    runner.length = min(runner.n - 1, base + accepted)
