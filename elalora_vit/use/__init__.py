"""Using what training produced: rebuild a run's model, evaluate it, predict on images.

    run = load_run("runs/quickstart-digits/elalora/seed0")   # model in eval mode + its preprocessing
    evaluate_run(run, split="val200")                          # {"accuracy": ..., ...}; writes eval-val200.json
    predict_images(run, ["cat.jpg"], top_k=3)                  # [Prediction(...)]

Exporting to plain timm and to PEFT lives in :mod:`elalora_vit.export`.
"""

from .evaluate import evaluate_run, run_predictions
from .predict import ImageError, Prediction, predict_images
from .rebuild import RunError, RunModel, load_run

__all__ = [
    "ImageError",
    "Prediction",
    "RunError",
    "RunModel",
    "evaluate_run",
    "load_run",
    "predict_images",
    "run_predictions",
]
