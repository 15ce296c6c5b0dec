"""`qwen-edge eval`: perplexity, KL divergence and top-1 agreement against a reference, CI gates and reports.

One concern per module: datasets (text in), windows (tokens and the window plan), model (one onnxruntime
forward per window), score (per-token statistics per window), reference (the compact saved reference),
metrics (figures and their errors), gates, baseline, reports, plot, and run (the orchestration).
"""
