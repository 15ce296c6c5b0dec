"""Config parsing: both transformers layouts, RoPE never silently defaulted, clear refusals."""

import pytest

from qwen_edge.errors import QwenEdgeError
from qwen_edge.spec import spec_from_hf_config

BASE = dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
            num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
            tie_word_embeddings=True)


def test_4x_and_5x_layouts_give_the_same_spec():
    old = spec_from_hf_config({**BASE, "rope_theta": 1e6,
                               "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}})
    new = spec_from_hf_config({**BASE, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
                                                           "original_max_position_embeddings": 32768}})
    assert old == new
    assert old.rope.theta == 1e6 and old.rope.type == "yarn" and old.rope.factor == 4.0
    assert old.head_dim == 64 and old.qkv_bias and not old.qk_norm and old.tie_word_embeddings


def test_5x_default_rope_reads_the_base_from_rope_parameters():
    s = spec_from_hf_config({**BASE, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}})
    assert s.rope.theta == 1e6 and s.rope.type == "default"


def test_a_missing_rope_base_is_an_error_not_a_default():
    with pytest.raises(QwenEdgeError, match="no RoPE base"):
        spec_from_hf_config(dict(BASE))
    with pytest.raises(QwenEdgeError, match="no RoPE base"):
        spec_from_hf_config({**BASE, "rope_parameters": {"rope_type": "default"}})


def test_conflicting_rope_bases_are_an_error():
    with pytest.raises(QwenEdgeError, match="two different RoPE bases"):
        spec_from_hf_config({**BASE, "rope_theta": 1e4, "rope_parameters": {"rope_theta": 1e6}})


@pytest.mark.parametrize("model_type", ["qwen2_moe", "qwen3_moe", "llama", None])
def test_other_architectures_are_refused_naming_what_is_supported(model_type):
    with pytest.raises(QwenEdgeError, match="qwen-edge supports dense qwen2 .* and qwen3"):
        spec_from_hf_config({**BASE, "rope_theta": 1e6, "model_type": model_type})


def test_sliding_window_and_unknown_rope_scaling_are_refused():
    with pytest.raises(QwenEdgeError, match="sliding-window"):
        spec_from_hf_config({**BASE, "rope_theta": 1e6, "use_sliding_window": True})
    with pytest.raises(QwenEdgeError, match="unsupported RoPE scaling 'dynamic'"):
        spec_from_hf_config({**BASE, "rope_theta": 1e6, "rope_scaling": {"type": "dynamic", "factor": 2.0}})


def test_qwen3_reads_explicit_head_dim_and_qk_norm():
    s = spec_from_hf_config({**BASE, "model_type": "qwen3", "head_dim": 128, "rope_theta": 1e6,
                             "num_attention_heads": 16, "num_key_value_heads": 8, "hidden_size": 1024})
    assert s.head_dim == 128 and s.qk_norm and not s.qkv_bias


def test_invalid_gqa_ratio_and_missing_keys():
    with pytest.raises(QwenEdgeError, match="not a multiple"):
        spec_from_hf_config({**BASE, "rope_theta": 1e6, "num_key_value_heads": 3})
    cfg = {**BASE, "rope_theta": 1e6}
    del cfg["hidden_size"]
    with pytest.raises(QwenEdgeError, match="missing 'hidden_size'"):
        spec_from_hf_config(cfg)
