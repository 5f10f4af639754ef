"""Evaluation: benchmarks (HumanEval, AlpacaEval, held-out NLL), generation engines and the sandbox that runs code."""
