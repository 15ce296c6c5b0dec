"""The numpy safetensors reader: dtypes as real checkpoints store them, lazily and exactly."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from qwen_edge.errors import QwenEdgeError
from qwen_edge.sources.safetensors_file import SafetensorsFile


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_float_tensors_widen_to_float32_exactly(tmp_path, dtype):
    t = {"a": torch.randn(33, 17).to(dtype), "b": torch.randn(5).to(dtype), "i": torch.arange(6, dtype=torch.int64)}
    save_file(t, str(tmp_path / "m.safetensors"))
    f = SafetensorsFile(tmp_path / "m.safetensors")
    assert sorted(f.keys()) == ["a", "b", "i"] and f.shape("a") == (33, 17)
    for k in ("a", "b"):
        got = f.get(k)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, t[k].float().numpy())
    np.testing.assert_array_equal(f.get("i"), np.arange(6))


def test_offsets_outside_the_file_are_refused(tmp_path):
    save_file({"a": torch.zeros(100)}, str(tmp_path / "m.safetensors"))
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(data[:-8])
    with pytest.raises(QwenEdgeError, match="lies outside the file"):
        SafetensorsFile(tmp_path / "m.safetensors")
