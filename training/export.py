"""Turn a finished training run into a bundle (LoRA merged, scaffolding kept for /explain)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from training.recipe import Recipe
from vital_core.bundle import refresh_manifest, save_bundle
from vital_core.model import VitalModel


def export_bundle(
    model: VitalModel,
    recipe: Recipe,
    out: str | Path,
    *,
    scores: dict[str, Any] | None = None,
    command: str | None = None,
    encoder_dir: str | Path | None = None,
    index_dir: str | Path | None = None,
    state: dict[str, Any] | None = None,
    phantom_task: str | None = None,
) -> Path:
    """Save `model` as a merged bundle whose manifest records the recipe, command, seed and scores.

    `encoder_dir` (the frozen encoder that made the ROI targets) and `index_dir` (a FAISS patch index)
    are copied in so /explain works from the bundle alone. `state` (see `Trainer.full_state`) replaces
    the live modules' tensors, e.g. when they are FSDP shards. `phantom_task` records which phantom
    task the bundle was trained on (bundles that do not record one were built on the legacy task).
    """
    scaffold = model.scaffold is not None and recipe.stage == "latent"
    provenance = {
        "command": command,
        "recipe": recipe.to_dict(),
        "seed": recipe.seed,
        "stage": recipe.stage,
        "scores": scores or {},
    }
    if phantom_task:
        provenance["phantom_task"] = phantom_task
    path = save_bundle(
        model, out, merged=True, scaffold=scaffold, provenance=provenance, overwrite=True, state=state
    )
    if encoder_dir or index_dir:
        for src, name in ((encoder_dir, "encoder"), (index_dir, "index")):
            if src:
                shutil.copytree(src, path / name, dirs_exist_ok=True)
        refresh_manifest(path)
    return path
