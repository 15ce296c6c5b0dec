"""Real text data sets for evaluation (perplexity) and quantization calibration."""

from qwen_edge.data.enwiki import enwiki_articles, enwiki_text

__all__ = ["enwiki_articles", "enwiki_text"]
