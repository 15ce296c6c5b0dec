"""The `qwen-edge` command: a thin Typer layer over the stages. Errors print one line and exit 2."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from .errors import InputError, Interrupted, QwenEdgeError
from .strict_json import dumps_report

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
                  help="Qwen dense models to fast, small, verified ONNX models for CPUs.")


# Speculative decoding, declared once for run, bench and serve (the same options, the same words).
DRAFT = typer.Option(None, "--draft", help="a smaller model with the same tokenizer proposes tokens that the model "
                                           "checks in one pass (serve: in every slot): the model's own output, faster")
DRAFT_TOKENS = typer.Option(8, "--draft-tokens", help="most tokens the draft proposes a step (fewer when they are "
                                                        "rejected)")
LOOKUP = typer.Option(None, "--lookup", help="propose up to N tokens copied from where the last few tokens occurred "
                                             "earlier (edits of the input): the same output, faster")


@app.callback()
def _root() -> None:
    """Qwen dense models to fast, small, verified ONNX models for CPUs."""


def _emit(data: dict, as_json: bool, lines: list[str]) -> None:
    if as_json:
        print(dumps_report(data, indent=2, sort_keys=True))
    else:
        print("\n".join(lines))


@app.command()
def export(
    source: str = typer.Argument(..., help="HF folder, hub id (org/name) or .gguf file"),
    output: Path = typer.Option(..., "-o", "--output", help="artifact folder to write"),
    dtype: str = typer.Option("fp32", help="fp32 or fp16"),
    max_length: Optional[int] = typer.Option(None, help="context length (default: the model's)"),
    revision: Optional[str] = typer.Option(None, help="hub revision (branch, tag or commit)"),
    tie_embeddings: str = typer.Option("off", help="store an embedding and LM head that are one matrix stored twice once: off, auto (when they agree), on"),
    ort: bool = typer.Option(False, "--ort", help="also write model.ort (ORT format, for onnxruntime's mobile packages; under 2 GiB)"),
    force: bool = typer.Option(False, "--force", help="replace an existing output folder (one qwen-edge wrote)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar per layer on stderr"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest summary as JSON"),
) -> None:
    """Export a model to ONNX with an in-place KV cache."""
    from .export.writer import export as run_export
    m = run_export(source, output, dtype=dtype, max_length=max_length, force=force, revision=revision,
                   progress=progress, tie_embeddings=tie_embeddings, ort_format=ort)
    size = sum((output / n).stat().st_size for n in m["files"])
    summary = {"output": str(output), "dtype": m["dtype"], "max_length": m["max_length"],
               "model_type": m["model"]["model_type"], "layers": m["model"]["num_layers"],
               "size_bytes": size, "export_seconds": m["export_seconds"], "source": m["source"]}
    _emit(summary, as_json, [f"exported {m['model']['model_type']} ({m['model']['num_layers']} layers, {m['dtype']}) "
                             f"to {output}: {size / 1e6:.0f} MB in {m['export_seconds']:.1f} s"])


@app.command("eval")
def eval_(
    models: list[str] = typer.Argument(..., help="artifact folder(s) to evaluate"),
    dataset: Optional[str] = typer.Option(None, help="enwiki (default), wikitext2, a text file or a folder of text files"),
    ctx: Optional[int] = typer.Option(None, help="window length in tokens (default 512, or the model's max_length if shorter)"),
    stride: Optional[int] = typer.Option(None, help="tokens between window starts (default: --ctx)"),
    max_tokens: Optional[int] = typer.Option(None, help="evaluate the first N tokens (default 32768; 0 = all)"),
    reference: Optional[str] = typer.Option(None, help="reference: an artifact folder or a --save-reference file"),
    save_reference: Optional[Path] = typer.Option(None, help="write the model's compact reference logits here"),
    top_k: int = typer.Option(32, help="top-k log-probs kept per token in a reference"),
    gate: list[str] = typer.Option([], "--gate", help="METRIC OP NUMBER[%], e.g. kl_mean<=0.05 (repeatable)"),
    baseline: Optional[Path] = typer.Option(None, help="baseline JSON for the *_vs_baseline gates"),
    update_baseline: bool = typer.Option(False, "--update-baseline", help="rewrite --baseline when all gates hold"),
    report: Optional[Path] = typer.Option(None, help="write the JSON report here"),
    junit: Optional[Path] = typer.Option(None, help="write a JUnit XML report here (one test case per gate)"),
    markdown: Optional[Path] = typer.Option(None, help="write a Markdown report here"),
    plot: Optional[Path] = typer.Option(None, help="write a PNG of perplexity (or KL) against size on disk"),
    threads: int = typer.Option(0, help="onnxruntime intra-op threads (0 = all cores)"),
    force: bool = typer.Option(False, "--force", help="replace existing report / reference files (qwen-edge's own only)"),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="check the models' sha256 against their manifests first"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar on stderr"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON report"),
    task: list[str] = typer.Option([], "--task", help="task accuracy: humaneval or a HumanEval-format .jsonl (repeatable)"),
    limit: Optional[int] = typer.Option(None, help="with --task: the first N problems of each task"),
    samples: int = typer.Option(1, help="with --task: completions per problem (pass@k for k <= N)"),
    max_new_tokens: int = typer.Option(512, help="with --task: tokens per completion"),
    timeout: float = typer.Option(10.0, help="with --task: seconds each program may run"),
    draft: Optional[str] = typer.Option(None, help="with --task: a draft model for speculative decoding (exact on fp32)"),
    reference_draft: Optional[str] = typer.Option(None, help="with --task: a draft for the reference folder"),
) -> None:
    """Perplexity, KL divergence and top-1 agreement, or task accuracy (--task), with CI gates.
    Exit 0: gates hold, 1: a gate fails, 2: bad input."""
    from .eval import reports
    from .eval.run import EvalConfig, evaluate
    if task:
        return _eval_tasks(models, task, dataset=dataset, reference=reference, save_reference=save_reference,
                           gate=gate, report=report, junit=junit, markdown=markdown, plot=plot, threads=threads,
                           force=force, verify=verify, progress=progress, as_json=as_json, limit=limit,
                           samples=samples, max_new_tokens=max_new_tokens, timeout=timeout, draft=draft,
                           reference_draft=reference_draft)
    if plot is not None:
        from .eval.plot import require
        require()
    if update_baseline and baseline is None:
        raise InputError("--update-baseline needs --baseline FILE")
    outs = {"report": report, "junit": junit, "markdown": markdown, "plot": plot}
    reports.check_outputs({k: v for k, v in outs.items() if v is not None}, force=force,
                          sources=[Path(m) for m in models] + ([Path(reference)] if reference else []))
    rep = evaluate(EvalConfig(models=models, dataset=dataset, ctx=ctx, stride=stride, max_tokens=max_tokens,
                              reference=reference, save_reference=str(save_reference) if save_reference else None,
                              top_k=top_k, gates=gate, baseline=str(baseline) if baseline else None,
                              update_baseline=update_baseline, progress=progress, threads=threads, force=force,
                              verify=verify))
    for kind, path in outs.items():
        if path is not None:
            reports.write(kind, rep, path, force=force)
    _emit(rep, as_json, reports.summary_lines(rep))
    if not rep["passed"]:
        raise typer.Exit(1)


def _eval_tasks(models: list[str], tasks: list[str], *, dataset: Optional[str], reference: Optional[str],
                save_reference: Optional[Path], gate: list[str], report: Optional[Path], junit: Optional[Path],
                markdown: Optional[Path], plot: Optional[Path], as_json: bool, **kw) -> None:
    from .eval import reports
    from .eval.tasks.run import TaskConfig, run_tasks, summary_lines
    if len(models) != 1:
        raise InputError("--task evaluates one model at a time (compare against another with --reference)")
    if dataset is not None or plot is not None:
        raise InputError("--task runs task accuracy; --dataset / --plot belong to the perplexity run: run them apart")
    outs = {"report": report, "junit": junit, "markdown": markdown}
    reports.check_outputs({k: v for k, v in outs.items() if v is not None}, force=kw["force"],
                          sources=[Path(models[0])] + ([Path(reference)] if reference else []))
    rep = run_tasks(TaskConfig(model=models[0], tasks=tasks, reference=reference, gates=gate,
                               save_reference=str(save_reference) if save_reference else None,
                               memory_mb=1024, **{k: v for k, v in kw.items() if k != "timeout"},
                               timeout_s=kw["timeout"]))
    for kind, path in outs.items():
        if path is not None:
            reports.write(kind, rep, path, force=kw["force"])
    _emit(rep, as_json, summary_lines(rep))
    if not rep["passed"]:
        raise typer.Exit(1)


def _read_text(path: Optional[Path], what: str) -> Optional[str]:
    if path is None:
        return None
    from .runtimes.template import decode_utf8
    try:
        return decode_utf8(path.read_bytes(), what)
    except OSError as e:
        raise InputError(f"{what} {path}: {e.strerror or e}") from None


def _unescape(s: str) -> str:
    """Backslash escapes a shell leaves as typed: \\n \\t \\r \\\\ (so --stop "\\n\\n" means two newlines)."""
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s) and s[i + 1] in "ntr\\":
            out.append({"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}[s[i + 1]])
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


@app.command("run")
def run_(
    model: Path = typer.Argument(..., help="artifact folder"),
    prompt: Optional[str] = typer.Option(None, "-p", "--prompt", help="the prompt ('-' reads it from stdin)"),
    chat: bool = typer.Option(False, "--chat", help="interactive multi-turn chat: one message per stdin line"),
    system: Optional[str] = typer.Option(None, help="system message"),
    raw: bool = typer.Option(False, "--raw", help="send -p as raw text, without the chat template"),
    max_new_tokens: int = typer.Option(512, help="most tokens to generate (per turn)"),
    temperature: Optional[float] = typer.Option(None, help="0 = greedy (default: the model's)"),
    top_k: Optional[int] = typer.Option(None, help="keep the k most likely tokens (0 = off)"),
    top_p: Optional[float] = typer.Option(None, help="nucleus sampling mass in (0, 1]"),
    min_p: Optional[float] = typer.Option(None, help="drop tokens below min_p x the top probability"),
    repetition_penalty: Optional[float] = typer.Option(None, help="> 1 discourages repeats (1 = off)"),
    seed: Optional[int] = typer.Option(None, help="random seed: the same seed gives the same output"),
    stop: list[str] = typer.Option([], "--stop", help="stop string, \\n and \\t escapes understood (repeatable)"),
    threads: int = typer.Option(0, help="onnxruntime intra-op threads (0 = all cores)"),
    provider: str = typer.Option("cpu", help="execution provider: cpu, cuda, ... or an onnxruntime name"),
    max_length: Optional[int] = typer.Option(None, help="context length to allocate (default: the export's)"),
    truncate: bool = typer.Option(False, "--truncate", help="drop the oldest tokens of a prompt that is too long"),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="check the files' sha256 against the manifest first"),
    draft: Optional[Path] = DRAFT,
    draft_tokens: int = DRAFT_TOKENS,
    lookup: Optional[int] = LOOKUP,
    json_schema: Optional[Path] = typer.Option(None, "--json-schema", help="a JSON schema file: the output is JSON "
                                               "that matches it (constrained decoding)"),
    grammar: Optional[Path] = typer.Option(None, "--grammar", help="a Lark grammar file the output must match"),
    regex: Optional[str] = typer.Option(None, "--regex", help="a regular expression the output must match"),
    stats: bool = typer.Option(False, "--stats", help="print timings to stderr"),
    as_json: bool = typer.Option(False, "--json", help="print {text, tokens, finish_reason, timings} as JSON"),
) -> None:
    """Generate text, streamed as it comes, or chat (--chat) reading messages from stdin."""
    from .runtimes.cli_run import run_chat, run_prompt
    from .runtimes.template import check_text, decode_utf8
    if prompt is None and not chat:
        raise InputError("give a prompt with -p TEXT (or -p - to read stdin), or use --chat")
    if prompt == "-":
        prompt = decode_utf8(sys.stdin.buffer.read(), "stdin")
    if prompt is not None:
        check_text(prompt)
    if system is not None:
        check_text(system, "--system")
    stops = [check_text(_unescape(s), "--stop") for s in stop] or None
    options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                   repetition_penalty=repetition_penalty, seed=seed, stop=stops, truncate=truncate)
    constrained = {k: v for k, v in (("json_schema", _read_text(json_schema, "--json-schema")),
                                     ("grammar", _read_text(grammar, "--grammar")), ("regex", regex)) if v is not None}
    if constrained and chat:
        raise InputError("--json-schema, --grammar and --regex apply to one prompt (-p), not to --chat")
    options.update(constrained)
    load = dict(threads=threads, provider=provider, max_length=max_length, verify=verify, draft=draft,
                draft_tokens=draft_tokens, lookup=lookup)
    if chat:
        if run_chat(model, load, options, system=system, first=prompt, as_json=as_json, stats=stats):
            raise typer.Exit(2)  # some lines were refused (each said so on its own error: line)
    else:
        run_prompt(model, load, options, prompt=prompt, system=system, raw=raw, as_json=as_json, stats=stats)


@app.command("bench")
def bench_(
    model: Path = typer.Argument(..., help="artifact folder"),
    prompt_tokens: int = typer.Option(512, help="prompt length in tokens"),
    new_tokens: int = typer.Option(128, help="tokens to generate per run"),
    runs: int = typer.Option(5, help="timed runs (medians are reported)"),
    warmup: int = typer.Option(1, help="untimed runs first"),
    threads: int = typer.Option(0, help="onnxruntime intra-op threads (0 = all cores)"),
    provider: str = typer.Option("cpu", help="execution provider"),
    prefill_chunk: int = typer.Option(256, help="prompt tokens per forward pass"),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="check the files' sha256 against the manifest first"),
    draft: Optional[Path] = DRAFT,
    draft_tokens: int = DRAFT_TOKENS,
    lookup: Optional[int] = LOOKUP,
    predicted: bool = typer.Option(False, "--predicted", help="also the decode speed predicted from this CPU's measured format costs (what quantize --target-speed plans with; the first use measures them: minutes)"),
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON"),
) -> None:
    """Time to first token, prefill and decode tokens/s, peak RSS and size on disk."""
    from .runtimes.bench import bench, summary_lines
    pred = None
    if predicted:  # before the timed runs: refused without a plan, and never beside them
        from .quantize.format_costs import predicted_decode
        pred = predicted_decode(model, threads=threads, progress=not as_json)
    r = bench(model, prompt_tokens=prompt_tokens, new_tokens=new_tokens, runs=runs, warmup=warmup,
              threads=threads, provider=provider, prefill_chunk=prefill_chunk, verify=verify,
              draft=draft, draft_tokens=draft_tokens, lookup=lookup,
              progress=lambda i, n: print(f"\rrun {i}/{n}", end="" if i < n else "\n", file=sys.stderr, flush=True))
    lines = summary_lines(r)
    if pred is not None:
        pred["measured_over_predicted"] = round(r["decode_tps"] / pred["decode_tps"], 3)
        r["predicted"] = pred
        lines.append(f"predicted decode: {pred['decode_tps']:.1f} tok/s (format costs measured on this CPU, "
                     f"{pred['context']}-token context: linears and head {pred['linears_and_head_ms']:.2f} ms + the "
                     f"rest of a step {pred['step_ms']:.2f} ms); measured / predicted = "
                     f"{pred['measured_over_predicted']:.2f}")
    _emit(r, as_json, lines)


@app.command("quantize")
def quantize_(
    source: str = typer.Argument(..., help="HF folder, hub id (org/name) or .gguf file"),
    output: Path = typer.Option(..., "-o", "--output", help="artifact folder to write"),
    target_size: Optional[str] = typer.Option(None, help="size budget of the whole folder, e.g. 410MiB: each tensor gets the format that costs the least accuracy within it"),
    bpw: Optional[float] = typer.Option(None, help="budget in bits per weight (linears and tables as stored)"),
    target_kl: Optional[float] = typer.Option(None, help="the smallest plan whose predicted KL (nats/token) is at most this"),
    target_speed: Optional[str] = typer.Option(None, help="with a target: decode-speed floor predicted from each format's measured cost on this CPU, e.g. 70tok/s or 1.2x (times the plain --bits 4 plan: int4g32 linears, int8g128 table); default 1x; 0 = accuracy alone"),
    recipe: Optional[Path] = typer.Option(None, help="replay a plan: a recipe.json from an earlier quantize (editable)"),
    method: str = typer.Option("gptq", help="rtn, gptq or awq"),
    bits: int = typer.Option(4, help="4 or 8 (the uniform plan)"),
    group_size: int = typer.Option(32, help="input channels per quantization block (16..256, uniform plan)"),
    sym: bool = typer.Option(False, "--sym/--asym", help="symmetric (no zero points) or asymmetric"),
    act_order: bool = typer.Option(False, "--act-order", help="GPTQ: quantize columns by decreasing Hessian diagonal"),
    damp: float = typer.Option(0.01, help="GPTQ: damping, a fraction of the mean Hessian diagonal"),
    refit: bool = typer.Option(True, "--refit/--no-refit", help="GPTQ: refit group scales by least squares under the Hessian"),
    float_target: bool = typer.Option(False, "--float-target/--no-float-target", help="GPTQ: fit the float model's outputs from the quantized model's inputs (corrects upstream error)"),
    calibration: list[str] = typer.Option(["mix"], help="mix (default: enwiki prose + Python source, half each), "
                                          "enwiki, python, or your own UTF-8 file or folder; repeat to mix several "
                                          "(equal shares)"),
    samples: int = typer.Option(32, help="calibration samples (32 x 512 = 16k tokens: full-rank Hessians for the 0.5B-7B shapes' 4864-18944 inputs need up to 19k)"),
    seq_len: int = typer.Option(512, help="tokens per calibration sample"),
    sensitivity_samples: int = typer.Option(16, help="calibration windows for the per-tensor sensitivity (with a target)"),
    seed: int = typer.Option(0, help="seed for choosing the calibration samples"),
    tie_embeddings: Optional[str] = typer.Option(None, help="store the embedding and LM head once: auto (when the source's two copies agree), on, off, residual (the head once, the embedding as the head plus an int4g64 residual when the copies agree; default: auto, residual for --bits 8)"),
    embed_bits: str = typer.Option("8", help="embedding precision: 8, 4 or fp32 (uniform plan)"),
    head_bits: str = typer.Option("8", help="LM head precision: 8, 4 or fp32 (uniform plan)"),
    token_group_size: Optional[int] = typer.Option(None, help="block size of the embedding and LM head (uniform plan; default 128, 32 for --bits 8)"),
    accuracy_level: int = typer.Option(4, help="MatMulNBits accuracy_level: 4 = int8 activations per block (the fast CPU path, for int4 and int8), 0 = fp32 activations (int8 is ~40x slower)"),
    max_length: Optional[int] = typer.Option(None, help="context length (default: the model's)"),
    int8_layers: Optional[str] = typer.Option(None, help="int4 only: decoder layers kept at 8 bits, e.g. 0,1,-1 (uniform plan)"),
    save_checkpoint: Optional[Path] = typer.Option(None, help="also write a GPTQ-format HF folder here"),
    ort: bool = typer.Option(False, "--ort", help="also write model.ort (ORT format, for onnxruntime's mobile packages; under 2 GiB)"),
    revision: Optional[str] = typer.Option(None, help="hub revision (branch, tag or commit)"),
    force: bool = typer.Option(False, "--force", help="replace an existing output folder (one qwen-edge wrote)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress on stderr"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Quantize a model to int4 / int8 (RTN, GPTQ or AWQ) into MatMulNBits ONNX, to a size or accuracy target."""
    from .quantize.api import QuantizeConfig, run
    m = run(QuantizeConfig(source, output, method=method, bits=bits, group_size=group_size, sym=sym, act_order=act_order,
                 damp=damp, refit=refit, float_target=float_target, calibration=calibration, samples=samples, seq_len=seq_len, seed=seed,
                 embed_bits=embed_bits, head_bits=head_bits, token_group_size=token_group_size,
                 accuracy_level=accuracy_level, max_length=max_length, int8_layers=int8_layers,
                 tie_embeddings=tie_embeddings, target_size=target_size, bpw=bpw, target_kl=target_kl,
                 target_speed=target_speed, recipe=recipe, sensitivity_samples=sensitivity_samples, save_checkpoint=save_checkpoint, ort_format=ort,
                 force=force, revision=revision, progress=progress))
    q = m["quantization"]
    size = sum((output / n).stat().st_size for n in m["files"]) + (output / "qwen_edge.json").stat().st_size
    summary = {"output": str(output), "method": q["method"], "bits": q["bits"], "group_size": q["group_size"],
               "sym": q["sym"], "size_bytes": size, "size_mib": round(size / 2**20, 1),
               "quantize_seconds": m["quantize_seconds"], "plan": q["plan"]["counts"],
               "tables": q["plan"]["tables"], "tied": q["tie_embeddings"]["tied"],
               "checkpoint": str(save_checkpoint) if save_checkpoint else None, "quantization": q}
    how = q["plan"]["how"]
    extra = f", predicted KL (RTN) {how['predicted_kl_rtn']:.4f}" if "predicted_kl_rtn" in how else ""
    if "predicted_tps" in how.get("speed", {}):
        extra += (f", predicted decode {how['speed']['predicted_tps']:.1f} tok/s (floor "
                  f"{how['speed']['target_tps']:.1f}; plain int4 {how['speed']['reference_tps']:.1f})")
    tables = q["plan"]["tables"]
    tables_text = (f"one tied table {tables['table']}" if set(tables) == {"table"} else
                   "; ".join(f"{k} {v}" for k, v in tables.items()))
    _emit(summary, as_json, [f"quantized {m['model']['model_type']} with {q['method']} "
                             f"({', '.join(f'{n} x {k}' for k, n in q['plan']['counts'].items())}; {tables_text}) "
                             f"to {output}: {size / 2**20:.1f} MiB in {m['quantize_seconds']:.1f} s{extra}"])


@app.command("serve")
def serve_(
    model: Path = typer.Argument(..., help="artifact folder"),
    host: str = typer.Option("127.0.0.1", help="address to bind (127.0.0.1: this machine only; 0.0.0.0: every interface)"),
    port: int = typer.Option(8000, help="TCP port (0: any free port, printed at start)"),
    api_key: Optional[str] = typer.Option(None, help="require Authorization: Bearer KEY on every request"),
    parallel: int = typer.Option(1, help="generations at once (each with its own KV cache)"),
    queue: int = typer.Option(16, help="requests that may wait for a slot; beyond that: 503 with Retry-After"),
    cache: int = typer.Option(4, help="idle conversations kept for the prompt cache (LRU)"),
    ctx: Optional[int] = typer.Option(None, help="context length per generation (default: the export's, at most 8192)"),
    max_tokens: int = typer.Option(2048, help="the most tokens one request may generate (and the default)"),
    max_body: int = typer.Option(1 << 20, help="the largest request body in bytes (413 beyond)"),
    model_name: Optional[str] = typer.Option(None, help="the model id clients send (default: the folder's name)"),
    alias: list[str] = typer.Option([], "--alias", help="another model name to accept (apps that hard-code one; "
                                    "repeatable; '*' accepts any name)"),
    threads: int = typer.Option(0, help="onnxruntime intra-op threads (0 = all cores)"),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="check the files' sha256 against the manifest first"),
    shutdown_timeout: float = typer.Option(5.0, help="on SIGTERM/SIGINT/SIGHUP: seconds running requests get to finish "
                                                      "before they are cut (a second signal cuts at once)"),
    draft: Optional[Path] = DRAFT,
    draft_tokens: int = DRAFT_TOKENS,
    lookup: Optional[int] = LOOKUP,
    as_json: bool = typer.Option(False, "--json", help="print {url, model} as one JSON line on stdout when listening"),
) -> None:
    """Serve the model over the OpenAI HTTP API (chat, completions, streaming) until stopped."""
    from .server.http import serve

    def ready(url: str, mid: str) -> None:
        print(f"qwen-edge serve: {mid} at {url}/v1 (Ctrl-C or SIGTERM stops)", file=sys.stderr, flush=True)
        if as_json:
            print(dumps_report({"url": url, "model": mid}), flush=True)
    try:
        serve(str(model), host=host, port=port, api_key=api_key, parallel=parallel, queue=queue, cache=cache,
              threads=threads, ctx=ctx, max_tokens=max_tokens, max_body=max_body, model_id=model_name,
              verify=verify, shutdown_timeout=shutdown_timeout, ready=ready, draft=draft,
              draft_tokens=draft_tokens, lookup=lookup, aliases=tuple(alias))
        for name in ("SIGTERM", "SIGHUP", "SIGINT"):  # stopped: a late signal (a second SIGTERM after a quick
            if hasattr(signal, name):                 # drain) must not raise in whatever runs at exit
                signal.signal(getattr(signal, name), signal.SIG_IGN)
        try:
            print("qwen-edge serve: stopped", file=sys.stderr, flush=True)  # every thread joined: exit 0
        except OSError:  # stderr is gone (the parent died): nothing to tell
            pass
    except (KeyboardInterrupt, Interrupted):  # a signal while the model was still loading
        print("qwen-edge serve: stopped", file=sys.stderr, flush=True)  # a requested stop: exit 0


def _on_signal(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> None:
    """Run the command. Exit codes: 0 done, 1 an eval gate failed, 2 bad input (one `error:` line),
    130 Ctrl-C, 128 + N signal N (SIGTERM, SIGHUP): staged outputs are removed on every way out."""
    for name in ("SIGTERM", "SIGHUP"):  # like Ctrl-C: unwind, so `with Staged(...)` cleans up
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _on_signal)
    try:
        rv = app(args=argv, prog_name="qwen-edge", standalone_mode=False)
    except QwenEdgeError as e:
        _fail(str(e))
    except _ClickException as e:  # usage errors: one line instead of click's usage block
        ctx = getattr(e, "ctx", None)
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        _fail(f"{e.format_message()}{where}")
    except (KeyboardInterrupt, typer.Abort):
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Interrupted as e:
        print(f"terminated by signal {e.signum}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except BrokenPipeError:  # stdout closed early (| head): nothing more to say
        sys.stderr.close()
        sys.exit(141)
    if isinstance(rv, int) and rv:
        sys.exit(rv)


def _fail(message: str) -> None:
    print(f"error: {' '.join(message.split()) if chr(10) in message else message}", file=sys.stderr)
    sys.exit(2)


# click's base exception, wherever this Typer keeps click (vendored as typer._click in newer releases)
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


if __name__ == "__main__":
    main()
