"""`Model`: an artifact folder loaded for generation (the Python API behind `qwen-edge run`).

    from qwen_edge import Model
    model = Model.load("out/int4", threads=2)
    for piece in model.stream("Hello", max_new_tokens=64): print(piece, end="", flush=True)
    text = model.generate([{"role": "user", "content": "Hi"}], temperature=0.0)

A prompt is raw text (str), a chat (a list of {"role", "content"} dicts, rendered with the model's
chat template) or token ids (a list of ints). One Model is safe to share between threads: onnxruntime
sessions run concurrently and every generation gets its own KV cache from a small pool.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np

from .. import artifact as A
from ..errors import ArtifactError, InputError, QwenEdgeError
from .generate import Result, TextStream, check_max_new_tokens
from .kv import Runner
from .options import GenerateOptions
from .sampler import Sampler, SamplingParams
from .session import SessionConfig, open_session
from .template import ChatTemplate, check_text, load_template

Prompt = Union[str, Sequence[Mapping[str, Any]], Sequence[int], np.ndarray]



class Model:
    def __init__(self, folder: str | Path, *, threads: int = 0, provider: str = "cpu", max_length: int | None = None,
                 arena: bool = True, spin: bool = True, prefill_chunk: int = 256, use_jinja: bool | None = None,
                 verify: bool = True, draft: str | Path | Model | None = None, draft_tokens: int = 8,
                 lookup: int | None = None):
        self.folder = Path(folder)
        self.manifest = A.read_manifest(self.folder)
        # Damaged or swapped files fail here, naming the file, not later as garbage text (artifact.py).
        self.verified = A.check(self.folder, self.manifest, verify=verify)
        self.spec = self.manifest["model"]
        limit = int(self.manifest["max_length"])
        if max_length is None:
            max_length = limit
        if isinstance(max_length, bool) or not isinstance(max_length, int) or not 1 < max_length <= limit:
            raise QwenEdgeError(f"max_length must be an integer in 2..{limit} (the exported context), "
                                f"got {max_length!r}")
        if isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, int) or prefill_chunk < 1:
            raise QwenEdgeError(f"prefill_chunk must be an integer >= 1, got {prefill_chunk!r}")
        self.max_length = max_length
        from ..footprint import check_artifact
        check_artifact(self.folder, self.manifest, command="loading the model", max_length=max_length)
        self.prefill_chunk = prefill_chunk
        self.session_config = SessionConfig(threads=threads, provider=provider, arena=arena, spin=spin)
        self.tokenizer = _tokenizer(self.folder)
        self.generation_config = _json(self.folder / A.GENERATION)
        self.tokenizer_config = _json(self.folder / "tokenizer_config.json")
        self.template = ChatTemplate(load_template(self.folder), use_jinja=use_jinja)
        self.stop_token_ids = frozenset(self._stop_ids())
        self.session = open_session(self.folder, self.session_config)
        self._pool: list[Runner] = []
        self._lock = threading.Lock()
        self._grammars: Any = None  # constrained.Grammars, built on the first constrained call
        self.draft: Model | None = None
        self.lookup: int | None = None
        self.draft_tokens = 0
        if draft is not None or lookup is not None:
            self._speculation(draft, draft_tokens, lookup, threads, provider, arena, spin, verify)

    def _speculation(self, draft: Any, draft_tokens: Any, lookup: Any, *load: Any) -> None:
        from .speculative import check_draft
        if draft is not None and lookup is not None:
            raise QwenEdgeError("choose one way to propose tokens: a draft model or prompt lookup, not both")
        if lookup is not None:
            if isinstance(lookup, bool) or not isinstance(lookup, int) or not 1 <= lookup <= 64:
                raise QwenEdgeError(f"lookup (tokens proposed from the prompt) must be an integer in 1..64, got {lookup!r}")
            self.lookup = lookup
            return
        if isinstance(draft_tokens, bool) or not isinstance(draft_tokens, int) or not 1 <= draft_tokens <= 64:
            raise QwenEdgeError(f"draft_tokens must be an integer in 1..64, got {draft_tokens!r}")
        if isinstance(draft, Model):
            d = draft
        else:
            if not isinstance(draft, (str, Path)):
                raise QwenEdgeError(f"draft is an artifact folder or a Model, got {type(draft).__name__}")
            threads, provider, arena, spin, verify = load
            dm = A.read_manifest(Path(draft))
            # the draft's threads do not spin after its runs: the target runs next on the same cores (the
            # target keeps spinning: without it a plain step of an int8 target was up to 20 % slower, measured)
            d = Model(draft, threads=threads, provider=provider, arena=arena, spin=False, verify=verify,
                      max_length=min(int(dm["max_length"]), self.max_length), prefill_chunk=self.prefill_chunk)
        check_draft(self, d)
        self.draft, self.draft_tokens = d, draft_tokens
        self._own_draft = not isinstance(draft, Model)

    def _proposer(self, ids: list[int], max_new_tokens: int) -> Any:
        """A fresh proposer for one generation (None without speculation)."""
        from .speculative import DraftModel, PromptLookup
        if self.lookup is not None:
            return PromptLookup(self.lookup)
        if self.draft is None:
            return None
        need = min(len(ids) + max_new_tokens, self.max_length)
        if need > self.draft.max_length:
            raise QwenEdgeError(f"the request needs {need} positions but the draft {self.draft.folder} holds "
                                f"{self.draft.max_length}: lower max_new_tokens or use a draft with a longer context")
        p = DraftModel(self.draft, self.draft_tokens)
        p.size_ratio = self.draft.size_bytes / max(1, self.size_bytes)
        return p

    @classmethod
    def load(cls, folder: str | Path, **kwargs: Any) -> Model:
        """Load an artifact folder. Options: threads (0 = all cores), provider ("cpu", "cuda", ... or
        an onnxruntime provider name), max_length (a shorter context: a smaller KV cache), arena,
        spin, prefill_chunk, use_jinja (None: the template's Jinja when jinja2 is importable),
        verify (True: check every file's sha256 against the manifest first; sizes are always checked).
        Speculative decoding (the same output, several tokens per forward pass): draft (an artifact folder
        or a loaded Model with the same tokenizer) proposing up to draft_tokens tokens a step, or lookup=N
        (up to N tokens copied from where the sequence's last few tokens occurred before)."""
        return cls(folder, **kwargs)

    # ------------------------------------------------------------------ text
    def _open(self) -> None:
        if self.session is None:
            raise QwenEdgeError(f"the model {self.folder} is closed: load it again")

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        self._open()
        if not isinstance(text, str):
            raise InputError(f"text to encode must be a string, got {type(text).__name__}")
        return self.tokenizer.encode(check_text(text, "the text"), add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        self._open()
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True, **kw: Any) -> str:
        """The chat as the prompt text the model sees."""
        self._open()
        if self.template.source is None:
            raise QwenEdgeError(f"{self.folder} has no chat template: pass raw text or token ids")
        return self.template.render(messages, add_generation_prompt=add_generation_prompt, **kw)

    def prompt_ids(self, prompt: Prompt, tools: list[dict] | None = None) -> list[int]:
        self._open()
        if isinstance(prompt, (bytes, bytearray, memoryview)):  # a Sequence of ints, but never token ids
            raise InputError(f"a prompt of {type(prompt).__name__} is not accepted: decode it to a string first "
                             "(or pass token ids as a list of ints)")
        if isinstance(prompt, str):
            return self.encode(check_text(prompt))
        if isinstance(prompt, np.ndarray):
            prompt = prompt.reshape(-1).tolist()
        if isinstance(prompt, Sequence) and prompt and all(isinstance(m, Mapping) for m in prompt):
            from .tools import check_tool_messages
            check_tool_messages([dict(m) for m in prompt])
            if tools is not None or any(m.get("tool_calls") for m in prompt):
                from .tools import for_template
                return self.encode(self.render(for_template([dict(m) for m in prompt]), tools=tools),
                                   add_special_tokens=False)
            return self.encode(self.render(prompt), add_special_tokens=False)
        if isinstance(prompt, Sequence) and all(isinstance(t, (int, np.integer)) and not isinstance(t, bool)
                                                for t in prompt):
            ids = [int(t) for t in prompt]
            bad = [t for t in ids if not 0 <= t < int(self.spec["vocab_size"])]
            if bad:
                raise QwenEdgeError(f"token id {bad[0]} is outside the vocabulary (0..{self.spec['vocab_size'] - 1})")
            return ids
        raise QwenEdgeError("a prompt is a string, a list of chat messages ({'role', 'content'} dicts) "
                            "or a list of token ids")

    # ------------------------------------------------------------------ generation
    def sampling(self, **overrides: Any) -> SamplingParams:
        """The model's generation defaults with overrides (None keeps the default)."""
        self._open()
        return SamplingParams.from_defaults(self.generation_config, **overrides)

    def stream(self, prompt: Prompt, options: GenerateOptions | None = None, **changes: Any) -> TextStream:
        """Generate, yielding text pieces as they are complete; `.result` has text, tokens and timings.

        `options` (a GenerateOptions: runtimes/options.py) and keyword changes to it: max_new_tokens,
        temperature, top_k, top_p, min_p, repetition_penalty, seed, frequency_penalty, presence_penalty
        (None: the model's default), stop, and:
        truncate: drop the oldest prompt tokens when the prompt does not fit (else a QwenEdgeError).
        ignore_eos: run max_new_tokens steps even past end tokens (benchmarks).
        json_schema (a schema: the output is JSON that matches it), json_object (any JSON object), regex,
        grammar (Lark text): constrained decoding (constrained.py, llguidance); one of them at most. An
        invalid one is a QwenEdgeError before anything is generated. With a draft or lookup, proposals are
        verified under the constraint (speculative.py).
        logprobs: N in 0..20: `.result.logprobs` gets each token's log-probability and the N most likely
        alternatives (logprobs.py says from which distribution), also while speculating.
        tools, tool_choice, parallel_tool_calls: OpenAI's; rendered by the model's template (tools.py).
        "required" or a named function constrains the reply to valid <tool_call> blocks; `complete` parses
        them into `result.tool_calls`. An unknown option name is a QwenEdgeError naming the known ones.
        """
        self._open()
        o = GenerateOptions.of(options, **changes)
        from .logprobs import check_top
        top = check_top(o.logprobs)
        from .tools import policy
        tools, call_grammar = policy(o.tools, o.tool_choice, o.parallel_tool_calls, o.constrained)
        t0 = time.perf_counter()
        max_new_tokens = check_max_new_tokens(o.max_new_tokens)
        params = self.sampling(**o.sampling())
        asked = o.constraint()
        if call_grammar:
            asked["grammar"] = call_grammar
        constraint = self.constraint(**asked)
        ids = self.fit(self.prompt_ids(prompt, tools), max_new_tokens, o.truncate)
        runner = self._acquire()
        try:
            runner.append(ids)
            return self.generation(runner, params=params, constraint=constraint, top_logprobs=top,
                                   max_new_tokens=max_new_tokens, stop=o.stop, ignore_eos=o.ignore_eos, t0=t0,
                                   on_done=lambda s: self._release(s.runner))
        except BaseException:
            self._release(runner)
            raise

    def generation(self, runner: Runner, *, params: SamplingParams, constraint: Any = None,
                   top_logprobs: int | None = None, max_new_tokens: int, stop: Sequence[str] | None = None,
                   ignore_eos: bool = False, t0: float | None = None, on_done: Any = None,
                   cancel: Any = None) -> TextStream:
        """The one place a generation is assembled (Model.stream, Chat and the server's engine): the runner's
        pending ids continued under these sampling parameters, constraint and log-probability count, with this
        model's speculation (a draft or lookup) when it has one: every feature composes with it."""
        proposer = self._proposer(runner.history.tolist(), max_new_tokens)
        return TextStream(runner, Sampler(params, constraint, top_logprobs), self.tokenizer,
                          max_new_tokens=max_new_tokens, stop_ids=self.stop_token_ids, stops=stop,
                          ignore_eos=ignore_eos, t0=t0, on_done=on_done, cancel=cancel, proposer=proposer)

    def constraint(self, *, json_schema: Any = None, json_object: bool = False, regex: str | None = None,
                   grammar: str | None = None, spec: Any = None) -> Any:
        """A fresh constrained.Constraint for one generation (None when nothing is asked), checked."""
        self._open()
        from .constrained import ConstraintSpec, Grammars
        given = [(k, v) for k, v in (("json_schema", json_schema), ("regex", regex), ("grammar", grammar))
                 if v is not None] + ([("json_object", None)] if json_object else [])
        if spec is not None:
            given.append((spec.kind, spec.value))
        if not given:
            return None
        if len(given) > 1:
            raise QwenEdgeError(f"one constraint at a time, got {', '.join(k for k, _ in given)}")
        if self._grammars is None:
            eos = self.generation_config.get("eos_token_id")
            eos = eos[0] if isinstance(eos, list) and eos else eos
            if not isinstance(eos, int):
                eos = min(self.stop_token_ids)
            self._grammars = Grammars((self.folder / "tokenizer.json").read_text(encoding="utf-8"),
                                      int(self.spec["vocab_size"]), eos)
        return self._grammars.constraint(ConstraintSpec(*given[0]))

    def prompt_logprobs(self, prompt: Prompt, top: int = 0) -> list[Any]:
        """Each prompt token's log-probability given the tokens before it (None for the first) and the `top`
        most likely alternatives: what evaluation harnesses score (logprobs.prompt_logprobs)."""
        self._open()
        from .logprobs import check_top, prompt_logprobs
        top = check_top(top, "top")
        ids = self.fit(self.prompt_ids(prompt), 1, False)
        runner = self._acquire()
        try:
            return prompt_logprobs(runner, ids, top)
        finally:
            self._release(runner)

    def generate(self, prompt: Prompt, options: GenerateOptions | None = None, **changes: Any) -> str:
        """The whole generated text (options as for `stream`)."""
        return self.complete(prompt, options, **changes).text

    def complete(self, prompt: Prompt, options: GenerateOptions | None = None, **changes: Any) -> Result:
        """Text, token ids, finish reason and timings (options as for `stream`); with tools, the calls the
        model made in `tool_calls` (OpenAI's format) and the rest of the text in `content`."""
        o = GenerateOptions.of(options, **changes)
        s = self.stream(prompt, o)
        s.read()
        if o.tools is not None and o.tool_choice != "none":
            from .tools import parse_calls
            names = [t["function"]["name"] for t in o.tools if isinstance(t, dict) and "function" in t]
            s.result.content, s.result.tool_calls = parse_calls(s.result.text, names)
        return s.result

    def chat(self, system: str | None = None, **defaults: Any) -> "Chat":
        """A multi-turn chat that keeps its KV cache between turns; `defaults` are `stream` options."""
        self._open()
        from .chat import Chat
        return Chat(self, system=system, **defaults)

    def fit(self, ids: list[int], max_new_tokens: int, truncate: bool) -> list[int]:
        """The prompt ids, checked against the context (or left-truncated when asked)."""
        if not ids:
            raise QwenEdgeError("the prompt is empty")
        if len(ids) < self.max_length:
            return ids
        if not truncate:
            from .context import check_context
            check_context(len(ids), self.max_length, "prompt",
                          "shorten it or truncate it from the left (truncate=True, --truncate)")
        keep = max(self.max_length - max_new_tokens, self.max_length // 2)
        return ids[-keep:]

    # ------------------------------------------------------------------ caches
    def new_runner(self) -> Runner:
        self._open()
        return Runner(self.session, self.spec, self.max_length, self.prefill_chunk)

    def _acquire(self) -> Runner:
        with self._lock:
            r = self._pool.pop() if self._pool else None
        if r is None:
            r = self.new_runner()
        r.reset()
        return r

    def _release(self, runner: Runner) -> None:
        with self._lock:
            if len(self._pool) < 2:  # keep a couple of caches warm, let extra ones go
                self._pool.append(runner)

    def close(self) -> None:
        """Free the caches and the session (the Model is unusable afterwards)."""
        with self._lock:
            self._pool.clear()
        self.session = None
        if self.draft is not None and getattr(self, "_own_draft", False):
            self.draft.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers
    def _stop_ids(self) -> set[int]:
        """generation_config's eos ids, the tokenizer's eos token and <|endoftext|> (Qwen's document end)."""
        ids: set[int] = set()
        eos = self.generation_config.get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [] if eos is None else [eos])
        tc = self.tokenizer_config
        for tok in (tc.get("eos_token"), "<|endoftext|>", "<|im_end|>" if self.template.source and
                    "<|im_end|>" in self.template.source else None):
            if isinstance(tok, dict):
                tok = tok.get("content")
            if isinstance(tok, str) and self.tokenizer.token_to_id(tok) is not None:
                ids.add(int(self.tokenizer.token_to_id(tok)))
        return {int(i) for i in ids}

    @property
    def kv_cache_bytes(self) -> int:
        """Bytes of one preallocated KV cache (each generation or chat holds one)."""
        self._open()
        key = next(i for i in self.session.get_inputs() if i.name == "past_key_values.0.key")
        item = 2 if key.type == "tensor(float16)" else 4
        s = self.spec
        return 2 * s["num_layers"] * s["num_kv_heads"] * s["head_dim"] * self.max_length * item

    @property
    def size_bytes(self) -> int:
        """Bytes on disk of the folder's files."""
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())

    def __repr__(self) -> str:
        return (f"Model({str(self.folder)!r}, {self.spec.get('model_type')}, {self.manifest.get('dtype')}, "
                f"max_length={self.max_length})")


def _tokenizer(folder: Path) -> Any:
    from tokenizers import Tokenizer
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ArtifactError(f"{folder} has no tokenizer.json")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises bare Exceptions on a damaged file
        raise ArtifactError(f"{folder} is damaged: tokenizer.json does not load ({str(e).strip()[:120]})") from None


def _json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"cannot read {path}: {e}") from None
    if not isinstance(d, dict):
        raise ArtifactError(f"{path} is not a JSON object")
    return d
