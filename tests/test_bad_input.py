"""Bad input across every command and the API (docs/reliability.md): each case gives exactly one `error:`
line (the API: a QwenEdgeError subclass with the same words), exit code 2, and leaves the workspace exactly
as it was: every file's name, size and sha256, every folder and link, compared before and after."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qwen_edge.errors import ArtifactError, InputError, OutputError, QwenEdgeError, SourceError
from tiny_models import make_tiny

ENV = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"}


def snapshot(root: Path) -> dict[str, object]:
    """Every entry below root: files by (size, sha256), links by target, folders by name."""
    out: dict[str, object] = {}
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def _config_variant(ws: Path, name: str, **changes) -> None:
    d = ws / name
    shutil.copytree(ws / "src", d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """One workspace for every case: a tiny source, its artifact, damaged copies, user files."""
    from qwen_edge.eval.run import EvalConfig, evaluate
    from qwen_edge.export.writer import export
    ws = tmp_path_factory.mktemp("ws")
    make_tiny(ws / "src")
    export(str(ws / "src"), ws / "art", max_length=128, progress=False)
    (ws / "text.txt").write_text("The quick brown fox jumps over the lazy dog. " * 40)
    evaluate(EvalConfig(models=[str(ws / "art")], dataset=str(ws / "text.txt"), ctx=64, max_tokens=200,
                        save_reference=str(ws / "ref.npz"), progress=False))
    (ws / "user").mkdir()
    (ws / "user" / "notes.txt").write_text("my notes")
    (ws / "user.png").write_bytes(b"\x89PNG\r\n\x1a\n not ours")
    (ws / "user.txt").write_text("mine")
    (ws / "link").symlink_to(ws / "user")
    (ws / "notes.txt").write_text("just text")
    # damaged artifacts
    for name, damage in (("art_bytes", "bytes"), ("art_short", "short"), ("art_nodata", "nodata"),
                         ("art_tok", "tok"), ("art_manifest", "manifest")):
        d = ws / name
        shutil.copytree(ws / "art", d)
        data = d / "model.onnx.data"
        if damage == "bytes":
            with open(data, "r+b") as f:
                f.seek(4096)
                f.write(b"\xff" * 8192)
        elif damage == "short":
            os.truncate(data, 1000)
        elif damage == "nodata":
            data.unlink()
        elif damage == "tok":  # same size, other content: only the hash can tell
            t = (d / "tokenizer.json").read_bytes()
            (d / "tokenizer.json").write_bytes(t.replace(b"<|endoftext|>", b"<|endoftexT|>"))
        else:
            (d / "qwen_edge.json").write_text("{ not json")
    # inconsistent or damaged sources
    _config_variant(ws, "c_vocab", vocab_size=1000)
    _config_variant(ws, "c_fewer_layers", num_hidden_layers=1)
    _config_variant(ws, "c_more_layers", num_hidden_layers=3)
    _config_variant(ws, "c_heads0", num_attention_heads=0)
    _config_variant(ws, "c_positions", max_position_embeddings=10**9)
    _config_variant(ws, "c_kv", num_key_value_heads=4)
    _config_variant(ws, "c_string", hidden_size="64")
    _config_variant(ws, "c_moe", model_type="qwen2_moe")
    shutil.copytree(ws / "src", ws / "c_notjson")
    (ws / "c_notjson" / "config.json").write_text("{ nope")
    shutil.copytree(ws / "src", ws / "c_list")
    (ws / "c_list" / "config.json").write_text("[1, 2]")
    shutil.copytree(ws / "src", ws / "t_random")
    (ws / "t_random" / "tokenizer.json").write_bytes(np.random.default_rng(0).bytes(600))
    shutil.copytree(ws / "src", ws / "t_schema")
    (ws / "t_schema" / "tokenizer.json").write_text(json.dumps({"model": {"type": "Nope"}}))
    shutil.copytree(ws / "src", ws / "t_eos")
    tc = json.loads((ws / "t_eos" / "tokenizer_config.json").read_text())
    (ws / "t_eos" / "tokenizer_config.json").write_text(json.dumps({**tc, "eos_token": "<|nope|>"}))
    shutil.copytree(ws / "src", ws / "s_short")
    st = ws / "s_short" / "model.safetensors"
    st.write_bytes(st.read_bytes()[:5000])
    shutil.copytree(ws / "src", ws / "s_pickled")
    (ws / "s_pickled" / "model.safetensors").rename(ws / "s_pickled" / "pytorch_model.bin")
    (ws / "bad.gguf").write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (10**12).to_bytes(8, "little") * 2)
    (ws / "magic.gguf").write_bytes(b"NOPE" * 16)
    (ws / "bad_utf8.txt").write_bytes(b"ok\n\xff\xfe\n")
    # constraints no output can honour, or that no parser should be handed
    (ws / "cycle.json").write_text(json.dumps({
        "$defs": {"a": {"type": "object", "properties": {"b": {"$ref": "#/$defs/b"}}, "required": ["b"]},
                  "b": {"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}, "required": ["a"]}},
        "$ref": "#/$defs/a"}))
    (ws / "loop.lark").write_text("start: start\n")
    (ws / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (ws / "tasks.jsonl").write_text(json.dumps({"task_id": "t/0", "prompt": "def f(x):\n", "entry_point": "f",
                                                "test": "def check(fn):\n    assert fn(1) == 2\n"}) + "\n")
    (ws / "tasks_bad.jsonl").write_text('{"prompt": "def f():", "test": "x"}\n')
    (ws / "big.json").write_text(json.dumps({"type": "object", "properties": {
        f"p{i}": {"type": "integer"} for i in range(1000)}}))
    return ws


# (id, argv with {ws} and {out} placeholders, words the one error line must contain[, stdin bytes])
CLI_CASES = [
    # export: sources
    ("export-missing-folder", "export {ws}/nope -o {out}", "no such file or folder"),
    ("export-missing-local-gguf", "export models/x.gguf -o {out}", "no such file or folder: models/x.gguf"),
    ("export-not-a-model-file", "export {ws}/notes.txt -o {out}", "unsupported file type"),
    ("export-hub-offline", "export Qwen/NoSuchModel-0.5B -o {out}", "cannot download 'Qwen/NoSuchModel-0.5B'"),
    ("export-config-vocab", "export {ws}/c_vocab -o {out}", "the config implies [1000, 64]"),
    ("export-config-fewer-layers", "export {ws}/c_fewer_layers -o {out}", "would be left unused"),
    ("export-config-more-layers", "export {ws}/c_more_layers -o {out}", "has no tensor model.layers.2"),
    ("export-config-heads-0", "export {ws}/c_heads0 -o {out}", "num_attention_heads must be positive"),
    ("export-config-positions", "export {ws}/c_positions -o {out}", "beyond any supported model"),
    ("export-config-kv-heads", "export {ws}/c_kv -o {out}", "k_proj.weight has shape [32, 64]"),
    ("export-config-string", "export {ws}/c_string -o {out}", "hidden_size must be an integer"),
    ("export-config-moe", "export {ws}/c_moe -o {out}", "unsupported model_type 'qwen2_moe'"),
    ("export-config-not-json", "export {ws}/c_notjson -o {out}", "cannot read config.json"),
    ("export-config-list", "export {ws}/c_list -o {out}", "is not a JSON object"),
    ("export-tokenizer-random", "export {ws}/t_random -o {out}", "tokenizer.json does not load"),
    ("export-tokenizer-schema", "export {ws}/t_schema -o {out}", "tokenizer.json does not load"),
    ("export-tokenizer-eos", "export {ws}/t_eos -o {out}", "eos_token '<|nope|>' is not in the tokenizer"),
    ("export-truncated-safetensors", "export {ws}/s_short -o {out}", "corrupt safetensors file"),
    ("export-pickled", "export {ws}/s_pickled -o {out}", "pickled weights are never loaded"),
    ("export-damaged-gguf", "export {ws}/bad.gguf -o {out}", "corrupt or truncated GGUF file bad.gguf"),
    ("export-gguf-magic", "export {ws}/magic.gguf -o {out}", "not a GGUF file"),
    # export: outputs
    ("export-out-is-source", "export {ws}/src -o {ws}/src --force", "is the source"),
    ("export-out-inside-source", "export {ws}/src -o {ws}/src/out --force", "is inside the source"),
    ("export-out-contains-source", "export {ws}/src -o {ws} --force", "contains the source"),
    ("export-out-user-folder", "export {ws}/src -o {ws}/user", "already exists; pass --force"),
    ("export-force-user-folder", "export {ws}/src -o {ws}/user --force", "qwen-edge did not write"),
    ("export-force-user-file", "export {ws}/src -o {ws}/user.txt --force", "is a file qwen-edge did not write"),
    ("export-force-symlink", "export {ws}/src -o {ws}/link --force", "is a symbolic link"),
    ("export-artifact-no-force", "export {ws}/src -o {ws}/art", "already exists; pass --force"),
    # export: options
    ("export-dtype", "export {ws}/src -o {out} --dtype bf16", "unknown dtype 'bf16'"),
    ("export-max-length-0", "export {ws}/src -o {out} --max-length 0", "--max-length 0 is outside"),
    ("export-max-length-text", "export {ws}/src -o {out} --max-length abc", "Invalid value for '--max-length'"),
    ("export-no-output", "export {ws}/src", "Missing option '-o'"),
    ("export-no-source", "export", "Missing argument 'source'"),
    ("export-unknown-option", "export {ws}/src -o {out} --bogus", "No such option: --bogus"),
    # quantize
    ("quantize-bits", "quantize {ws}/src -o {out} --bits 3", "unsupported bits 3"),
    ("quantize-group", "quantize {ws}/src -o {out} --group-size 0", "unsupported group size 0"),
    ("quantize-method", "quantize {ws}/src -o {out} --method hqq", "unknown method 'hqq'"),
    ("quantize-calibration", "quantize {ws}/src -o {out} --calibration {ws}/nope.txt", "no such file"),
    ("quantize-damp", "quantize {ws}/src -o {out} --damp 2", "--damp 2.0 is outside (0, 1)"),
    ("quantize-embed-bits", "quantize {ws}/src -o {out} --embed-bits 2", "unsupported embedding precision"),
    ("quantize-int8-layers", "quantize {ws}/src -o {out} --method rtn --int8-layers 99", "outside the model's 2"),
    ("quantize-accuracy-level", "quantize {ws}/src -o {out} --accuracy-level 7", "outside 0..4"),
    ("quantize-target-speed-word", "quantize {ws}/src -o {out} --target-size 2MB --target-speed fast",
     "--target-speed 'fast': give tokens per second"),
    ("quantize-target-speed-alone", "quantize {ws}/src -o {out} --target-speed 1.2x",
     "--target-speed shapes an allocation"),
    ("quantize-target-speed-too-fast", "quantize {ws}/src -o {out} --method rtn --target-size 1.35MiB "
     "--target-speed 90000tok/s --no-progress", "is beyond this CPU"),
    ("quantize-samples", "quantize {ws}/src -o {out} --samples 0", "--samples must be >= 1"),
    ("quantize-no-memory", "QWEN_EDGE_MEMORY_LIMIT=64MiB quantize {ws}/src -o {out} --target-size 1.35MiB",
     "more than the 0.1 GiB this machine has available"),
    ("quantize-out-is-source", "quantize {ws}/src -o {ws}/src --force", "is the source"),
    ("quantize-force-user-folder", "quantize {ws}/src -o {ws}/user --force", "qwen-edge did not write"),
    ("quantize-checkpoint-in-source", "quantize {ws}/src -o {out} --method rtn --save-checkpoint {ws}/src/ck",
     "is inside the source"),
    ("quantize-checkpoint-is-output", "quantize {ws}/src -o {out} --method rtn --save-checkpoint {out}",
     "overlap"),
    ("quantize-checkpoint-user-folder", "quantize {ws}/src -o {out} --method rtn --save-checkpoint {ws}/user "
     "--force", "qwen-edge did not write"),
    ("quantize-damaged-source", "quantize {ws}/c_vocab -o {out} --method rtn", "the config implies"),
    # run
    ("run-missing-folder", "run {ws}/nope -p hi", "no such model folder"),
    ("run-not-an-artifact", "run {ws}/user -p hi", "not a qwen-edge model folder"),
    ("run-no-prompt", "run {ws}/art", "give a prompt"),
    ("run-no-memory", "QWEN_EDGE_MEMORY_LIMIT=32MiB run {ws}/art -p hi", "loading the model needs about"),
    ("export-no-memory", "QWEN_EDGE_MEMORY_LIMIT=32MiB export {ws}/src -o {out}", "export needs about"),
    ("run-utf8-argv", "run {ws}/art -p \udcff\udcfehello", "not valid UTF-8 (byte 0xff at character 0)"),
    ("run-utf8-stdin", "run {ws}/art -p -", "stdin is not valid UTF-8 (byte 0xff at offset 3)", b"ok\n\xff"),
    ("run-temperature", "run {ws}/art -p hi --temperature -1", "temperature must be a finite number >= 0"),
    ("run-top-p", "run {ws}/art -p hi --top-p 2", "top_p must be in (0, 1]"),
    ("run-max-new-tokens", "run {ws}/art -p hi --max-new-tokens 0", "max_new_tokens must be an integer >= 1"),
    ("run-empty-stop", "run {ws}/art -p hi --stop ''", "stop strings must not be empty"),
    ("run-provider", "run {ws}/art -p hi --provider nope", "execution provider 'nope' is not available"),
    ("run-max-length", "run {ws}/art -p hi --max-length 100000", "max_length must be an integer in 2..128"),
    ("run-threads", "run {ws}/art -p hi --threads -1", "threads must be an integer >= 0"),
    ("run-system-raw", "run {ws}/art -p hi --raw --system be", "--system needs the chat template"),
    ("run-too-long", "run {ws}/art --raw -p '" + "fox " * 400 + "'", "but the context holds 128"),
    ("run-damaged-bytes", "run {ws}/art_bytes -p hi", "model.onnx.data does not match its manifest"),
    ("run-damaged-short", "run {ws}/art_short -p hi", "model.onnx.data has 1000 bytes"),
    ("run-damaged-missing", "run {ws}/art_nodata -p hi", "model.onnx.data is missing"),
    ("run-swapped-tokenizer", "run {ws}/art_tok -p hi", "tokenizer.json does not match its manifest"),
    ("run-damaged-manifest", "run {ws}/art_manifest -p hi", "cannot read"),
    ("run-schema-cycle", "run {ws}/art -p hi --json-schema {ws}/cycle.json", "no finite JSON value satisfies it"),
    ("run-grammar-no-string", "run {ws}/art -p hi --grammar {ws}/loop.lark", "the grammar has no finite string"),
    ("run-schema-deep", "run {ws}/art -p hi --json-schema {ws}/deep.json", "nests 100000 levels deep; at most 128"),
    ("run-schema-too-complex", "run {ws}/art -p hi --json-schema {ws}/big.json",
     "too complex for the constraint parser (llguidance: Current row has"),
    ("quantize-target-kl-tiny", "quantize {ws}/src -o {out} --target-kl 1e-12",
     "--target-kl 1e-12 is below what the sensitivity pass resolves"),
    ("quantize-target-size-kib", "quantize {ws}/src -o {out} --target-size 1KiB",
     "--target-size 1.0 KiB is below the smallest plan"),
    ("quantize-target-size-tb", "quantize {ws}/src -o {out} --target-size 1TB", "is at or above the all-int8 size"),
    # bench
    ("bench-runs", "bench {ws}/art --runs 0", "runs must be an integer >= 1"),
    ("bench-new-tokens", "bench {ws}/art --new-tokens 1", "new_tokens must be an integer >= 2"),
    ("bench-too-long", "bench {ws}/art --prompt-tokens 120 --new-tokens 64", "exceeds the model's"),
    ("bench-damaged", "bench {ws}/art_bytes", "does not match its manifest"),
    # eval
    ("eval-ctx-0", "eval {ws}/art --dataset {ws}/text.txt --ctx 0", "--ctx must be at least 2"),
    ("eval-stride-0", "eval {ws}/art --dataset {ws}/text.txt --stride 0", "--stride must be at least 1"),
    ("eval-top-k", "eval {ws}/art --dataset {ws}/text.txt --top-k 0", "--top-k must be between 1 and 1024"),
    ("eval-max-tokens", "eval {ws}/art --dataset {ws}/text.txt --max-tokens -1", "--max-tokens must be positive"),
    ("eval-gate-syntax", "eval {ws}/art --dataset {ws}/text.txt --gate bogus", "is not METRIC OP NUMBER"),
    ("eval-gate-needs-ref", "eval {ws}/art --dataset {ws}/text.txt --gate kl_mean<=0.1", "needs --reference"),
    ("eval-dataset", "eval {ws}/art --dataset {ws}/nope.txt", "dataset '"),
    ("eval-dataset-utf8", "eval {ws}/art --dataset {ws}/bad_utf8.txt", "is not UTF-8 text"),
    ("eval-reference-missing", "eval {ws}/art --dataset {ws}/text.txt --reference {ws}/nope.npz", "not found"),
    ("eval-reference-not-ours", "eval {ws}/art --dataset {ws}/text.txt --reference {ws}/user.txt",
     "is not a qwen-edge reference file"),
    ("eval-save-reference-exists", "eval {ws}/art --dataset {ws}/text.txt --save-reference {ws}/ref.npz",
     "already exists; pass --force"),
    ("eval-save-reference-user", "eval {ws}/art --dataset {ws}/text.txt --save-reference {ws}/user.txt --force",
     "is a file qwen-edge did not write"),
    ("eval-report-in-artifact", "eval {ws}/art --dataset {ws}/text.txt --report {ws}/art/r.json",
     "is inside the source"),
    ("eval-same-report-files", "eval {ws}/art --dataset {ws}/text.txt --report {out} --junit {out}",
     "name the same file"),
    ("eval-markdown-exists", "eval {ws}/art --dataset {ws}/text.txt --markdown {ws}/user.txt", "already exists"),
    ("eval-plot-user-png", "eval {ws}/art --dataset {ws}/text.txt --plot {ws}/user.png --force",
     "is a file qwen-edge did not write"),
    ("eval-update-baseline", "eval {ws}/art --dataset {ws}/text.txt --update-baseline", "needs --baseline FILE"),
    ("eval-damaged", "eval {ws}/art_bytes --dataset {ws}/text.txt", "does not match its manifest"),
    ("eval-task-unknown", "eval {ws}/art --task nosuchtask", "unknown task 'nosuchtask'"),
    ("eval-task-malformed", "eval {ws}/art --task {ws}/tasks_bad.jsonl", "line 1: 'entry_point' must be a non-empty"),
    ("eval-task-gate-metric", "eval {ws}/art --task {ws}/tasks.jsonl --gate tasks.pass@5>=0.5",
     "pass@5 needs --samples 5 or more"),
    ("eval-task-gate-needs-reference", "eval {ws}/art --task {ws}/tasks.jsonl --gate tasks.pass@1>=reference-2pp",
     "needs --reference"),
    ("eval-task-gate-other-task", "eval {ws}/art --task {ws}/tasks.jsonl --gate humaneval.pass@1>=0.3",
     "names task 'humaneval', which this run does not produce"),
    ("eval-task-with-dataset", "eval {ws}/art --task {ws}/tasks.jsonl --dataset {ws}/text.txt",
     "--dataset / --plot belong to the perplexity run"),
    ("eval-damaged-reference", "eval {ws}/art --dataset {ws}/text.txt --reference {ws}/art_short",
     "model.onnx.data has 1000 bytes"),
    # the command itself
    ("unknown-command", "nope", "No such command 'nope'"),
]


def _argv(template: str, ws: Path, out: Path) -> list[str]:
    import shlex
    return [a.replace("{ws}", str(ws)).replace("{out}", str(out)) for a in shlex.split(template)]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(ws, case):
    name, template, words = case[:3]
    stdin = case[3] if len(case) > 3 else b""
    out = ws / f"fresh-{name}"
    before = snapshot(ws)
    argv = _argv(template, ws, out)
    env = dict(ENV)
    while argv and "=" in argv[0] and argv[0].split("=", 1)[0].isupper():  # leading NAME=value: environment
        k, v = argv.pop(0).split("=", 1)
        env[k] = v
    args = [a.encode("utf-8", "surrogateescape") for a in argv]
    r = subprocess.run([sys.executable.encode(), b"-m", b"qwen_edge.cli", *args], input=stdin,
                       capture_output=True, env=env, timeout=300, cwd=ws)
    err = r.stderr.decode("utf-8", "replace")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert r.returncode == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert words in lines[0], lines[0]
    assert "Traceback" not in err and r.stdout == b"", (err, r.stdout)
    assert snapshot(ws) == before, "the workspace changed"


def _api_cases():
    def model(ws):
        from qwen_edge import Model
        return Model.load(ws / "art")

    def export(ws, out, **kw):
        from qwen_edge.export.writer import export as run
        return run(str(kw.pop("src", ws / "src")), out, progress=False, **kw)

    def quantize(ws, out, **kw):
        from qwen_edge.quantize.api import quantize as run
        return run(str(ws / "src"), out, progress=False, **kw)

    def evaluate(ws, **kw):
        from qwen_edge.eval.run import EvalConfig, evaluate as run
        return run(EvalConfig(models=[str(ws / "art")], dataset=str(ws / "text.txt"), progress=False, **kw))

    def sampling(**kw):
        from qwen_edge.runtimes.sampler import SamplingParams
        return SamplingParams(**kw)

    from qwen_edge import Model
    return [
        ("api-load-missing", lambda ws, out: Model.load(ws / "nope"), ArtifactError, "no such model folder"),
        ("api-load-damaged", lambda ws, out: Model.load(ws / "art_bytes"), ArtifactError, "does not match its manifest"),
        ("api-load-short", lambda ws, out: Model.load(ws / "art_short"), ArtifactError, "has 1000 bytes"),
        ("api-load-swapped-tokenizer", lambda ws, out: Model.load(ws / "art_tok"), ArtifactError,
         "tokenizer.json does not match"),
        ("api-generate-surrogates", lambda ws, out: model(ws).generate("a\udcffb"), InputError,
         "the prompt is not valid UTF-8 (byte 0xff at character 1)"),
        ("api-generate-chat-surrogates", lambda ws, out: model(ws).generate([{"role": "user", "content": "\udc80"}]),
         InputError, "a user message is not valid UTF-8"),
        ("api-generate-number", lambda ws, out: model(ws).generate(123), QwenEdgeError, "a prompt is a string"),
        ("api-encode-bytes", lambda ws, out: model(ws).encode(b"x"), InputError, "must be a string"),
        ("api-chat-surrogates", lambda ws, out: model(ws).chat().say("\udcff"), InputError, "not valid UTF-8"),
        ("api-export-out-is-source", lambda ws, out: export(ws, ws / "src", force=True), OutputError, "is the source"),
        ("api-export-force-user", lambda ws, out: export(ws, ws / "user", force=True), OutputError, "did not write"),
        ("api-export-bad-config", lambda ws, out: export(ws, out, src=ws / "c_vocab"), SourceError, "config implies"),
        ("api-open-local-missing", lambda ws, out: __import__("qwen_edge.sources", fromlist=["x"]).open_source(
            "models/x.gguf"), SourceError, "no such file or folder"),
        ("api-quantize-bits", lambda ws, out: quantize(ws, out, bits=3), QwenEdgeError, "unsupported bits 3"),
        ("api-eval-ctx-0", lambda ws, out: evaluate(ws, ctx=0), QwenEdgeError, "--ctx must be at least 2"),
        ("api-eval-save-reference-exists", lambda ws, out: evaluate(ws, save_reference=str(ws / "ref.npz")),
         OutputError, "already exists"),
        ("api-sampling-top-p", lambda ws, out: sampling(top_p=0.0), QwenEdgeError, "top_p must be in (0, 1]"),
        ("api-sampling-seed", lambda ws, out: sampling(seed=-1), QwenEdgeError, "seed must be an integer >= 0"),
        ("api-schema-contains-itself", lambda ws, out: model(ws).generate("hi", json_schema=_self_containing()),
         InputError, "the JSON schema contains itself at /properties/x"),
        ("api-schema-cycle", lambda ws, out: model(ws).generate("hi", json_schema=json.loads(
            (ws / "cycle.json").read_text())), InputError, "no finite JSON value satisfies it"),
        ("api-generate-after-close", lambda ws, out: _closed(model(ws)).generate("hi"), QwenEdgeError,
         "is closed: load it again"),
        ("api-tool-parameters-string", lambda ws, out: model(ws).generate("hi", tools=[{"type": "function", "function": {
            "name": "f", "parameters": {"type": "string"}}}], tool_choice="required"), QwenEdgeError,
         "tools[0].function.parameters must be a JSON schema of type 'object'"),
        ("api-tool-call-id", lambda ws, out: model(ws).generate([{"role": "user", "content": "x"}, {
            "role": "tool", "tool_call_id": "call_9", "content": "1"}]), QwenEdgeError,
         "messages[1].tool_call_id 'call_9' matches no earlier tool call"),
    ]


def _self_containing() -> dict:
    d: dict = {"type": "object"}
    d["properties"] = {"x": d}
    return d


def _closed(m):
    m.close()
    return m


API_CASES = _api_cases()


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input(ws, case):
    name, call, kind, words = case
    out = ws / f"fresh-{name}"
    before = snapshot(ws)
    with pytest.raises(QwenEdgeError) as e:
        call(ws, out)
    assert isinstance(e.value, kind), type(e.value)
    assert words in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert snapshot(ws) == before, "the workspace changed"


def test_the_suite_is_large_enough():
    assert len(CLI_CASES) + len(API_CASES) >= 60
    assert {c[1].split()[0] for c in CLI_CASES} >= {"export", "quantize", "run", "bench", "eval"}
