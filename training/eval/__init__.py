"""Evaluation: benchmark readers, answer metrics, the evaluator and GEMeX box grounding.

Where things go: a new benchmark reader → `vqa_datasets.py` (or its own module, like `gemex.py`, registered
in `vqa_datasets.FORMATS`); a file format → `files.py`; a metric → `metrics.py`. docs/evaluation.md.
"""

from training.eval.evaluate import Prediction, predict, rescore, score, write_predictions
from training.eval.items import BenchItem, BenchmarkError, load_benchmark_image
from training.eval.metrics import item_correct, item_score, token_f1
from training.eval.vqa_datasets import FORMATS, detect_format, load_benchmark

__all__ = [
    "BenchItem",
    "BenchmarkError",
    "FORMATS",
    "Prediction",
    "detect_format",
    "item_correct",
    "item_score",
    "load_benchmark",
    "load_benchmark_image",
    "predict",
    "rescore",
    "score",
    "token_f1",
    "write_predictions",
]
