"""selectbench: compare instruction-data selectors under one fine-tuning recipe and one evaluation."""

__version__ = "0.1.0"
