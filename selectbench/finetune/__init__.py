"""The one fine-tuning recipe every subset goes through: ``finetune(subset, model, config, out_dir)``."""

from selectbench.finetune.config import FinetuneConfig
from selectbench.finetune.recipe import finetune
from selectbench.finetune.subset import load_subset, measure_subset

__all__ = ["FinetuneConfig", "finetune", "load_subset", "measure_subset"]
