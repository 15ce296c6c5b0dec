"""lm-evaluation-harness's model interface on `qwen_edge.Model`: loglikelihood, loglikelihood_rolling and
generate_until, registered as `qwen-edge`.

    python -m qwen_edge.eval.lm_eval_model --model_args path=out/int4 --tasks arc_easy --batch_size 1
    # or in Python, after importing this module: lm_eval.simple_evaluate(model="qwen-edge",
    #                                                                    model_args="path=out/int4", ...)

Why the module entry point: lm-eval 0.4.13 finds models in its own MODEL_MAPPING or in classes registered by
an import, and has no plugin discovery (no entry-point group for models), so the bare `lm_eval --model
qwen-edge` cannot see a model another package defines; `python -m qwen_edge.eval.lm_eval_model ARGS` is
lm_eval's own command line with this class registered first (every lm_eval option works).

Scoring: a question's choices share their context's KV cache (the context is prefilled once, each
continuation rewinds the cache to it: free with the in-place cache); log-probabilities are the model's raw
distribution, as `Model.prompt_logprobs` gives them (tests/test_lm_eval.py checks they are equal).
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as e:  # pragma: no cover - the eval extra installs it
    raise ImportError("the lm-eval model needs lm-evaluation-harness: pip install 'qwen-edge[eval]'") from e

from ..errors import InputError
from ..runtimes.logprobs import log_softmax

_CHUNK = 64  # positions per forward pass whose logits are kept (as Model.prompt_logprobs)
_LM_EVAL_ARGS = {"batch_size", "max_batch_size", "device"}  # lm_eval passes these to every model; one at a time here


@register_model("qwen-edge", "qwen_edge")
class QwenEdgeLM(LM):
    def __init__(self, path: str | None = None, pretrained: str | None = None, threads: int | str = 0,
                 max_length: int | str | None = None, max_gen_toks: int | str = 256, verify: bool | str = True,
                 **kwargs: Any) -> None:
        super().__init__()
        unknown = set(kwargs) - _LM_EVAL_ARGS
        if unknown:
            raise InputError(f"unknown qwen-edge model argument(s): {', '.join(sorted(unknown))} "
                             "(known: path, threads, max_length, max_gen_toks, verify)")
        folder = path or pretrained
        if not folder:
            raise InputError("the qwen-edge lm-eval model needs path=ARTIFACT_FOLDER in --model_args")
        from ..runtimes.model import Model
        self.model = Model.load(folder, threads=int(threads), verify=str(verify).lower() not in ("false", "0"),
                                max_length=int(max_length) if max_length not in (None, "") else None)
        self.path = str(folder)
        self.max_gen_toks = int(max_gen_toks)
        tc = self.model.tokenizer_config
        eos = tc.get("eos_token")
        eos = eos.get("content") if isinstance(eos, dict) else eos
        eos_id = self.model.tokenizer.token_to_id(eos) if isinstance(eos, str) else None
        self.eot_token_id = int(eos_id if eos_id is not None else min(self.model.stop_token_ids))

    # --- what lm-eval asks of a model -------------------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return self.path

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.model.render(chat_history, add_generation_prompt=add_generation_prompt)

    def tok_encode(self, text: str) -> list[int]:
        return self.model.encode(text, add_special_tokens=False)

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._encode_pair(*r.args) for r in requests]
        return self._score(pairs)

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
        out = []
        for r in requests:
            ids = self.tok_encode(r.args[0])
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=ids, prefix_token=self.eot_token_id, max_seq_len=self.model.max_length - 1,
                context_len=1)]
            out.append(sum(lp for lp, _ in self._score([(list(c), list(x)) for c, x in windows])))
        return out

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        out = []
        for r in requests:
            context, kw = r.args
            kw = dict(kw or {})
            until = kw.pop("until", None)
            until = [until] if isinstance(until, str) else list(until or [])
            max_new = int(kw.pop("max_gen_toks", self.max_gen_toks))
            temperature = float(kw.pop("temperature", 0.0) or 0.0)
            if kw.pop("do_sample", None) is False:  # lm-eval's way of asking for greedy decoding
                temperature = 0.0
            ids = self.tok_encode(context)[-(self.model.max_length - 1):]
            room = self.model.max_length - len(ids)
            res = self.model.complete(ids, max_new_tokens=max(1, min(max_new, room)), temperature=temperature,
                                      stop=[u for u in until if u] or None, seed=int(kw.pop("seed", 0) or 0))
            out.append(res.text)
        return out

    # --- scoring -------------------------------------------------------------------------------------------
    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's convention: trailing spaces of the context go with the continuation; the continuation's
        ids are the whole text's ids after the context's (so merges across the boundary are the model's)."""
        n = len(context) - len(context.rstrip())
        if n:
            context, continuation = context[:-n], context[-n:] + continuation
        whole = self.tok_encode(context + continuation)
        ctx = self.tok_encode(context)
        if whole[:len(ctx)] != ctx:  # a merge across the boundary: score the continuation as encoded alone
            return ctx or [self.eot_token_id], self.tok_encode(continuation)
        return ctx or [self.eot_token_id], whole[len(ctx):]

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(log-probability of the continuation given the context, whether it is the greedy one) per pair;
        pairs that share a context reuse its prefilled cache."""
        runner = self.model.new_runner()
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        last: tuple[int, ...] | None = None
        first_row = None
        for i in sorted(range(len(pairs)), key=lambda j: pairs[j][0]):
            ctx, cont = pairs[i]
            keep = self.model.max_length - len(cont)
            if keep < 1:
                cont = cont[-(self.model.max_length - 1):]
                keep = 1
            ctx = ctx[-keep:]
            if tuple(ctx) != last:
                runner.reset()
                runner.append(ctx)
                first_row = np.array(runner.forward_last(1)[-1], dtype=np.float32)
                last = tuple(ctx)
            else:
                runner.truncate(len(ctx))
            rows = [first_row]
            for s in range(0, len(cont) - 1, _CHUNK):
                part = cont[s:s + _CHUNK][: len(cont) - 1 - s]
                runner.append(part)
                rows.extend(np.array(runner.forward_last(len(part)), dtype=np.float32))
            lp, greedy = 0.0, True
            for row, tok in zip(rows, cont):
                ls = log_softmax(row)
                lp += float(ls[tok])
                greedy = greedy and int(np.argmax(row)) == tok
            out[i] = (lp, greedy)
        return out  # type: ignore[return-value]


def main() -> None:
    """lm_eval's command line with the `qwen-edge` model registered (and chosen when --model is not given)."""
    import sys

    from lm_eval.__main__ import cli_evaluate
    if "--model" not in sys.argv:
        sys.argv[1:1] = ["--model", "qwen-edge"]
    cli_evaluate()


if __name__ == "__main__":
    main()
