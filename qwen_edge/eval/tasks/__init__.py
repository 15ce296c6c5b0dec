"""Task accuracy: does the quantized model still do the job? Code executed (HumanEval and any JSONL in its
format), pass@k, and differences paired item by item against a reference (docs/ci.md)."""
