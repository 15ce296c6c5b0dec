"""The real Qwen2.5-Coder-0.5B-Instruct: the recommended int4 recipes (410 MiB and 469 MiB, replayed from
recipes/ with GPTQ) and the recommended int8 file, gated at the issue's targets against the fp32 export on
held-out prose and code (enwiki articles 61-100 and ten standard-library modules; the default calibration
mixes articles 1-60 with thirty other modules). One quantization per file, shared by the
tests (the 410 MiB file is the session's `real_int4`, which the eval, serve and JS tests also use).
docs/benchmarks.md has the full benchmark (32 windows, llama.cpp side by side)."""

import json

import pytest

from conftest import REAL_INT4, REAL_INT4_PEAK, RECIPES, manifest

pytestmark = pytest.mark.real

MIB = 2**20
INT8 = dict(method="rtn", bits=8)  # the defaults: blocks of 32, the embedding as the head plus a residual
Q8_0_MIB = 644.4  # llama.cpp's Q8_0 of the same GGUF (docs/benchmarks.md)


def folder_bytes(folder) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


@pytest.fixture(scope="module")
def results(example_gguf, real_fp32, real_int4, tmp_path_factory):
    """The 469 MiB recipe (GPTQ), the int8 file, and RTN on the 410 MiB recipe (to show what GPTQ adds),
    scored with the 410 MiB file against one fp32 reference on the same 16 windows of 512 tokens."""
    from qwen_edge.eval.run import EvalConfig, evaluate
    from qwen_edge.quantize.api import quantize
    root = tmp_path_factory.mktemp("realq")
    gguf = str(example_gguf)
    quantize(gguf, root / "int4-469", max_length=4096, progress=False,
             **{**REAL_INT4, "recipe": RECIPES / "qwen2.5-coder-0.5b-instruct-469mib.json"})
    quantize(gguf, root / "int8", max_length=4096, progress=False, **INT8)
    quantize(gguf, root / "rtn-410", max_length=4096, progress=False, method="rtn", recipe=REAL_INT4["recipe"])
    folders = {"int4-410": real_int4, "int4-469": root / "int4-469", "int8": root / "int8", "rtn-410": root / "rtn-410"}
    metrics, code = ({name: r["metrics"] for name, r in zip(folders, evaluate(EvalConfig(
        models=[str(f) for f in folders.values()], reference=str(real_fp32), dataset=dataset, ctx=512,
        max_tokens=8192, progress=False, threads=2))["models"])} for dataset in ("enwiki", "python"))
    print(json.dumps({d: {k: {m: round(v, 5) for m, v in x.items() if m in ("kl_mean", "top1", "ppl_increase")}
                          for k, x in r.items()} for d, r in (("prose", metrics), ("code", code))}))
    for name in folders:
        metrics[name] = {**metrics[name], "code": code[name]}
    return folders, metrics


def test_410_mib_recipe_meets_its_targets(results):
    folders, r = results
    assert folder_bytes(folders["int4-410"]) <= 410 * MIB
    # the recipe trades some accuracy for speed (a decode floor 1.07x the plain int4 file's): held-out KL
    # 0.0194 / top-1 91.6 % on 32 windows; the gate is KL <= 0.025 (two thirds of IQ4_NL + imatrix's)
    assert r["int4-410"]["kl_mean"] <= 0.025 and r["int4-410"]["top1"] >= 0.90, r["int4-410"]
    # and on code, where a prose calibration left it at KL 0.035 (docs/benchmarks.md: 0.022 with the mix)
    assert r["int4-410"]["code"]["kl_mean"] <= 0.028 and r["int4-410"]["code"]["top1"] >= 0.91, r["int4-410"]


def test_469_mib_recipe_meets_its_targets(results):
    folders, r = results
    assert folder_bytes(folders["int4-469"]) <= 469 * MIB
    # held-out KL 0.0045 / top-1 95.8 % on 32 windows; the gate for the 469 MiB class is KL <= 0.0075
    assert r["int4-469"]["kl_mean"] <= 0.0075 and r["int4-469"]["top1"] >= 0.945, r["int4-469"]
    assert r["int4-469"]["code"]["kl_mean"] <= 0.0075, r["int4-469"]


def test_int8_meets_its_target_at_full_speed(results):
    folders, r = results
    # the gate is KL <= 0.001; top-1 on these 16 windows: 97.9 % (SE 0.16 %) with the residual
    # embedding, 98.1 % with two int8 tables (KL 0.00075 / 0.00076): the floor sits two SE below
    assert r["int8"]["kl_mean"] <= 0.001 and r["int8"]["top1"] >= 0.975, r["int8"]
    q = manifest(folders["int8"])["quantization"]
    assert q["accuracy_level"] == 4  # int8 activations: the fast kernel (level 0 is ~40x slower per matmul)
    # no larger than llama.cpp's Q8_0: the head once, the embedding as its codes plus an int4 residual
    assert q["embedding"] == {"head_plus_residual": {"bits": 4, "group_size": 64}}
    assert folder_bytes(folders["int8"]) <= Q8_0_MIB * MIB


def test_gptq_improves_on_rtn_with_the_same_plan(results):
    folders, r = results
    for x, y in ((r["int4-410"], r["rtn-410"]), (r["int4-410"]["code"], r["rtn-410"]["code"])):  # both domains
        assert x["kl_mean"] < 0.85 * y["kl_mean"], (x, y)
    a, b = manifest(folders["int4-410"])["quantization"], manifest(folders["rtn-410"])["quantization"]
    assert a["plan"]["linears"] == b["plan"]["linears"] and a["plan"]["how"]["kind"] == "recipe"


def test_the_shared_tables_are_stored_once(results):
    folders, _ = results
    assert manifest(folders["int4-410"])["quantization"]["tie_embeddings"]["tied"]
    t8 = manifest(folders["int8"])["quantization"]["tie_embeddings"]
    assert not t8["tied"] and t8["residual"]  # int8: the embedding is the head's codes plus a residual
    from qwen_edge.artifact import verify
    assert verify(folders["int4-410"]) == []


def test_the_memory_estimate_bounds_the_measured_gptq_peak(example_gguf, real_int4):
    """The real 0.5B's GPTQ (the recipe: no sensitivity pass), measured in its own process: the estimate that
    decides refusals is not below the peak and not more than 1.5x it (footprint.py)."""
    from qwen_edge import footprint as FP
    from qwen_edge.sources import open_source
    peak = int((real_int4.parent / REAL_INT4_PEAK).read_text())
    spec = open_source(str(example_gguf)).spec
    est = max(FP.writing(spec, FP.packed_bytes(spec, 4.8)).total,
              FP.calibration(spec, REAL_INT4["samples"], REAL_INT4["seq_len"], "gptq", FP.packed_bytes(spec, 4.8)).total)
    print(f"GPTQ peak {peak / 2**30:.2f} GiB, estimate {est / 2**30:.2f} GiB")
    assert peak <= est <= 1.5 * peak, (peak, est)
