"""The manifest's model fields are checked against model.onnx at load (artifact.check_model): a hand-edited
field is the one-line "damaged" error (exit 2 on the CLI, ArtifactError in the API) before any allocation;
and the small API gaps of issue 17."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qwen_edge import Model
from qwen_edge import artifact as A
from qwen_edge import graph_facts
from qwen_edge.errors import ArtifactError, InputError, QwenEdgeError
from tiny_models import make_tiny

ENV = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
FIELDS = ["vocab_size", "num_layers", "num_heads", "num_kv_heads", "head_dim"]
ABSURD = [10**12, -1, 0, "2", True, None, 2.5]


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> Path:
    from qwen_edge.export.writer import export
    root = tmp_path_factory.mktemp("manifest")
    make_tiny(root / "src")
    export(str(root / "src"), root / "art", max_length=128, progress=False)
    return root / "art"


def _edited(art: Path, tmp: Path, edit) -> Path:
    d = tmp / "edited"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(art, d)
    m = json.loads((d / A.MANIFEST).read_text())
    edit(m)
    (d / A.MANIFEST).write_text(json.dumps(m))
    return d


def _edits():
    for f in FIELDS:
        yield f"{f}+1", f, lambda m, f=f: m["model"].__setitem__(f, m["model"][f] + 1)
        yield f"{f}-1", f, lambda m, f=f: m["model"].__setitem__(f, m["model"][f] - 1)
        for v in ABSURD:
            yield f"{f}={v!r}", f, lambda m, f=f, v=v: m["model"].__setitem__(f, v)
    yield "max_length+1", "max_length", lambda m: m.__setitem__("max_length", m["max_length"] + 1)
    yield "max_length-1", "max_length", lambda m: m.__setitem__("max_length", m["max_length"] - 1)
    yield "max_length=10**12", "max_length", lambda m: m.__setitem__("max_length", 10**12)


EDITS = list(_edits())


@pytest.mark.parametrize("case", EDITS, ids=[c[0] for c in EDITS])
def test_api_refuses_an_edited_manifest(art, tmp_path, case):
    _, field, edit = case
    d = _edited(art, tmp_path, edit)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for verify in (True, False):  # the check runs with --no-verify too: it is cheap and guards allocations
        with pytest.raises(ArtifactError, match=rf"is damaged: .*{field}"):
            Model.load(d, verify=verify)
    # nothing was allocated from the edited number (10**12 vocab would be a 3.6 TiB logits buffer)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB


@pytest.mark.parametrize("case", [c for c in EDITS if c[0].endswith("+1") or "10**12" in c[0]],
                         ids=[c[0] for c in EDITS if c[0].endswith("+1") or "10**12" in c[0]])
def test_cli_refuses_an_edited_manifest(art, tmp_path, case):
    _, field, edit = case
    d = _edited(art, tmp_path, edit)
    for argv in (["run", str(d), "-p", "hi", "--max-new-tokens", "2"], ["bench", str(d)],
                 ["serve", str(d), "--port", "0"]):
        r = subprocess.run([sys.executable, "-m", "qwen_edge.cli", *argv], capture_output=True, text=True,
                           env=ENV, timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "is damaged" in lines[0] \
            and field in lines[0], (argv, r.returncode, r.stderr[-2000:])


def test_the_untouched_manifest_loads_and_the_reader_agrees_with_onnx(art):
    import onnx
    from onnx import helper
    g = graph_facts.read(art / A.MODEL)
    m = onnx.load(str(art / A.MODEL), load_external_data=False)

    def dims(vi):
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]

    assert g.inputs == {i.name: dims(i) for i in m.graph.input}
    assert g.outputs == {o.name: dims(o) for o in m.graph.output}
    gqa = [{a.name: helper.get_attribute_value(a) for a in n.attribute if a.type == onnx.AttributeProto.INT}
           for n in m.graph.node if n.op_type == "GroupQueryAttention"]
    assert g.attention == gqa and len(gqa) == 2
    assert g.initializer_dims["cos_cache"] == next(list(t.dims) for t in m.graph.initializer if t.name == "cos_cache")
    Model.load(art).close()


def test_a_graph_that_is_not_onnx_is_damaged(art, tmp_path):
    d = _edited(art, tmp_path, lambda m: None)
    (d / A.MODEL).write_bytes(b"\xff" * 64)
    with pytest.raises(ArtifactError, match="cannot be read as an ONNX model"):
        A.check_model(d, A.read_manifest(d))


def test_api_gaps_are_clear_errors(art, tmp_path):
    m = Model.load(art, max_length=64)
    for bad in (b"hi", bytearray(b"hi"), memoryview(b"hi")):
        with pytest.raises(InputError, match="decode it to a string first"):
            m.generate(bad)
    with pytest.raises(QwenEdgeError, match="one position must stay free for the reply"):
        m.generate(list(range(3, 67)))
    assert isinstance(m.generate(list(range(3, 66)), max_new_tokens=1), str)  # 63 tokens + the reply fit
    f = tmp_path / "a-file"
    f.write_text("x")
    with pytest.raises(ArtifactError, match="is a file, not a model folder"):
        Model.load(f)
    r = subprocess.run([sys.executable, "-m", "qwen_edge.cli", "run", str(f), "-p", "hi"], capture_output=True,
                       text=True, env=ENV, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == f"error: {f} is a file, not a model folder " \
                                                     f"(give the folder that holds {A.MANIFEST})", r.stderr
    assert m.prompt_ids(np.array([3, 4])) == [3, 4]
