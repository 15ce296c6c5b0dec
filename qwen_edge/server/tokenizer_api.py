"""The tokenizer over HTTP, in vLLM's shapes: GET /tokenizer_info, POST /tokenize, POST /detokenize.

Why: lm-evaluation-harness's API models (`local-completions`, `local-chat-completions`) tokenize on the
client side by default, and with `tokenizer_backend="auto"` they first ask the server for these endpoints;
without them they fall back to downloading a tokenizer named after the served model from the Hugging Face
Hub, which fails offline (and may not be the artifact's tokenizer at all). With them, lm-eval's defaults work
against `qwen-edge serve` and use exactly the tokenizer the model was exported with.
"""

from __future__ import annotations

from typing import Any

from .protocol import ApiError, _text, _type_name


def info(model: Any) -> dict[str, Any]:
    tc = model.tokenizer_config
    name = (lambda t: t.get("content") if isinstance(t, dict) else t)
    eos = name(tc.get("eos_token"))
    if eos is None and model.stop_token_ids:
        eos = model.tokenizer.id_to_token(min(model.stop_token_ids))
    return {"eos_token": eos, "bos_token": name(tc.get("bos_token")), "pad_token": name(tc.get("pad_token")),
            "chat_template": model.template.source, "model_max_length": model.max_length,
            "tokenizer_class": tc.get("tokenizer_class"), "vocab_size": int(model.spec["vocab_size"])}


def tokenize(body: Any, model: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {_type_name(body)}")
    extra = set(body) - {"prompt", "add_special_tokens", "model"}
    if extra:
        raise ApiError(400, f"unsupported field '{sorted(extra)[0]}'", sorted(extra)[0])
    prompt, special = body.get("prompt"), body.get("add_special_tokens", True)
    if not isinstance(prompt, str):
        raise ApiError(400, f"'prompt' must be a string, got {_type_name(prompt)}", "prompt")
    if not isinstance(special, bool):
        raise ApiError(400, "'add_special_tokens' must be a boolean", "add_special_tokens")
    ids = model.encode(_text(prompt, "prompt"), add_special_tokens=special) if prompt else []
    return {"tokens": ids, "count": len(ids), "max_model_len": model.max_length}


def detokenize(body: Any, model: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {_type_name(body)}")
    extra = set(body) - {"tokens", "model"}
    if extra:
        raise ApiError(400, f"unsupported field '{sorted(extra)[0]}'", sorted(extra)[0])
    ids = body.get("tokens")
    vocab = int(model.spec["vocab_size"])
    if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise ApiError(400, "'tokens' must be an array of token ids", "tokens")
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise ApiError(400, f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", "tokens")
    return {"prompt": model.decode(ids, skip_special_tokens=False)}
