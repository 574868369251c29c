"""Vision alignment (ours): the random tiny backbone's vision tower learns the tiny MedSigLIP's patch features.

A real Qwen3-VL starts from a pretrained vision encoder; a random tiny one learns to see only slowly from
answer tokens (measured on the compositional phantom: after 600 caption steps its captions were at chance
on where each structure is). So before the backbone sees a question, its vision tower is distilled from
the frozen tiny MedSigLIP the project trains on the phantom (training/encoder_train.py), whose patch
features already tell the structures apart: for every patch, a linear read-out of the tower's last block
(before Qwen3-VL's merger) regresses the encoder's L2-normalised feature of the same image cell, by
cosine. The read-out is dropped afterwards; the merger and the language model are trained by the stages
that follow. Both see the image as a 16 x 16 grid of 8-pixel patches at 128 px (the tiny preset).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

log = logging.getLogger("vital.vision_align")


def qwen_patch_cells(grid_h: int, grid_w: int, merge: int) -> np.ndarray:
    """Row-major cell index (row * grid_w + col) of every patch in Qwen's order.

    Qwen2-VL's image processor emits patches merge window by merge window: for each (h_block, w_block), the
    merge x merge patches inside it, row by row."""
    hb, wb = grid_h // merge, grid_w // merge
    idx = np.arange(grid_h * grid_w).reshape(hb, merge, wb, merge)  # [hb, hi, wb, wi] row-major cells
    return idx.transpose(0, 2, 1, 3).reshape(-1)  # (hb, wb, hi, wi) order


def align_vision(
    model: Any,
    encoder: Any,
    images: Sequence[str | Path],
    *,
    steps: int = 400,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Distil `encoder`'s patch grid into `model`'s vision tower in place; returns the final cosines.

    Args:
        model: a VitalModel whose vision tower sees the same grid as the encoder.
        encoder: the frozen patch encoder (index_builder.encoder.PatchEncoder).
        images: image files to draw batches from (the training split).
    """
    from tqdm import tqdm

    visual = model.core.model.visual
    proc = model.processor
    device = model.device
    gen = torch.Generator().manual_seed(seed)
    probe = proc([Image.open(images[0]).convert("RGB")], return_tensors="pt")["image_grid_thw"][0]
    gh, gw = int(probe[1]), int(probe[2])
    if (gh, gw) != (encoder.grid, encoder.grid):
        raise ValueError(
            f"the vision tower sees a {gh} x {gw} patch grid but the encoder a {encoder.grid} x {encoder.grid} "
            "one; align needs the same grid (tiny preset: 128 px, patch 8)"
        )
    cells = torch.as_tensor(qwen_patch_cells(gh, gw, proc.merge_size))
    hidden = visual.config.hidden_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = torch.nn.Linear(hidden, encoder.hidden_size).to(device)
    for p in visual.parameters():
        p.requires_grad_(True)
    params = [p for p in visual.parameters()] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + np.cos(np.pi * s / steps))
    )
    was_training = visual.training
    visual.train()
    bar = tqdm(range(steps), desc="vision align", disable=not progress, dynamic_ncols=True)
    cos_hist: list[float] = []
    t0 = time.perf_counter()
    for _ in bar:
        pick = torch.randint(len(images), (batch_size,), generator=gen).tolist()
        batch = [Image.open(images[i]).convert("RGB") for i in pick]
        target = encoder.encode(batch).flatten(1, 2)[:, cells].to(device)  # (b, G*G, D) in Qwen's order
        vis = proc(batch, return_tensors="pt")
        out = visual(vis["pixel_values"].to(device), grid_thw=vis["image_grid_thw"].to(device))
        pred = head(out.last_hidden_state.float()).reshape(batch_size, gh * gw, -1)  # (b, G*G, D)
        cos = F.cosine_similarity(pred, target, dim=-1)  # (b, G*G)
        loss = (1 - cos).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        cos_hist.append(float(cos.detach().mean()))
        bar.set_postfix(cos=f"{np.mean(cos_hist[-20:]):.3f}")
    visual.train(was_training)
    result = {
        "steps": steps,
        "cosine_first": round(float(np.mean(cos_hist[:10])), 4),
        "cosine_last": round(float(np.mean(cos_hist[-20:])), 4),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    log.info("vision align: %s", result)
    return result
