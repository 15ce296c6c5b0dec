"""Is the Fisher proxy (qwen_edge/quantize/sensitivity.py) a good stand-in for real KL? On the real 0.5B.

    python scripts/investigations/validate_sensitivity.py [--windows 16] [--held-out 4] [--format int4g128]

Predicts, for a spread of tensors (each kind of linear in early, middle and late layers, and the tied
table), the KL of quantizing that tensor alone with RTN in --format; then measures it: the fp32 torch
model with only that tensor quantized, against the unquantized one, on held-out enwiki windows (articles
61-100). Prints both per tensor, their ratio, and the rank correlation (Markdown, for docs/quantize.md).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=16, help="calibration windows for the Fisher")
    ap.add_argument("--held-out", type=int, default=4, help="held-out windows of 512 for the measured KL")
    ap.add_argument("--format", default="int4g128")
    a = ap.parse_args()
    from tokenizers import Tokenizer

    from qwen_edge.assets import example_gguf
    from qwen_edge.data.enwiki import enwiki_text
    from qwen_edge.pack import rtn
    from qwen_edge.quantize.calibration_text import calibration_tokens, sample_windows
    from qwen_edge.quantize.layer import DecoderLayer, rms_norm, rope_tables
    from qwen_edge.quantize.recipe import Format
    from qwen_edge.quantize.sensitivity import fisher, predict
    from qwen_edge.sources import open_source
    from qwen_edge.sources.tie import tie

    torch.set_num_threads(2)
    src, _ = tie(open_source(str(example_gguf())), "on")
    spec, weights = src.spec, src.weights
    fmt = Format.parse(a.format)
    L = spec.num_layers
    names = [f"model.layers.{i}.{k}" for i in (0, 1, L // 2, L - 2, L - 1)
             for k in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")] + ["table"]
    t = time.perf_counter()
    cal = sample_windows(calibration_tokens("enwiki", src.write_tokenizer), a.windows, 512, 1)
    fish, count = fisher(spec, weights, cal, progress=True)
    pred = predict(fish, count, 512, weights, spec, {n: [fmt] for n in names})
    del fish
    t_fisher = time.perf_counter() - t
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        src.write_tokenizer(Path(d))
        ids = np.asarray(Tokenizer.from_file(f"{d}/tokenizer.json").encode(enwiki_text(split="evaluation")).ids)
    held = ids[: a.held_out * 512].reshape(a.held_out, 512)
    cos, sin = rope_tables(spec, 512)
    table = torch.from_numpy(np.ascontiguousarray(weights.get("model.embed_tokens.weight")))
    norm = torch.from_numpy(weights.get("model.norm.weight"))
    layers = [DecoderLayer(spec, weights, i) for i in range(L)]

    @torch.no_grad()
    def logp(tab: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for w in held:
            x = tab[torch.from_numpy(w)][None]
            for layer in layers:
                x = layer.forward(x, cos, sin)
            out.append(F.log_softmax(rms_norm(x, norm, spec.rms_norm_eps)[0] @ tab.T, -1))
        return out
    base = logp(table)
    rows = []
    for name in names:
        if name == "table":
            q = torch.from_numpy(rtn(table.numpy(), fmt.bits, fmt.group_size).dequantize())
            lq = logp(q)
        else:
            i, lin = int(name.split(".")[2]), name.split(".", 3)[3]
            keep = layers[i].w[lin]
            layers[i].w[lin] = torch.from_numpy(rtn(keep.numpy(), fmt.bits, fmt.group_size).dequantize())
            lq = logp(table)
            layers[i].w[lin] = keep
        kl = float(np.mean([(p.exp() * (p - q)).sum(-1).mean().item() for p, q in zip(base, lq)]))
        rows.append((name, pred[name][str(fmt)], kl))
        print(json.dumps({"tensor": name, "predicted": rows[-1][1], "measured": kl}), flush=True)
    p, m = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    rank = lambda x: np.argsort(np.argsort(x))  # noqa: E731
    rho = float(np.corrcoef(rank(p), rank(m))[0, 1])
    print(f"\n{a.format}, Fisher on {a.windows} x 512 calibration tokens ({t_fisher:.0f} s), measured on "
          f"{a.held_out} x 512 held-out tokens\n")
    print("| tensor | predicted KL | measured KL | ratio |\n|---|---|---|---|")
    for n, pr, me in rows:
        print(f"| {n.replace('model.layers.', 'L')} | {pr:.5f} | {me:.5f} | {pr / me:.2f} |")
    print(f"\nSpearman rank correlation {rho:.3f}; median ratio {np.median(p / m):.2f}; "
          f"sum predicted {p.sum():.4f} vs sum measured {m.sum():.4f}")


if __name__ == "__main__":
    main()
