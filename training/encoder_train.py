"""`vital train-encoder`: a tiny MedSigLIP trained by the project on phantom image–report pairs.

The frozen "medical vision encoder" of vital-tiny must carry meaning, or ROI targets, the visual loss,
heatmaps and nearest patches are noise. We make it the way SigLIP is made, at toy size:

* a real `transformers.SiglipModel` (vision tower = the tiny preset's encoder architecture, a 2-layer text
  tower, a byte-level BPE trained on the reports);
* the sigmoid image–text loss (SigLIP) on (phantom image, report) pairs, where the report is written from
  the phantom's own facts (every object's name, size, shape, brightness and region);
* a region–phrase term: the patch features inside each object's mask are pooled (area-weighted on the patch
  grid) and scored against that object's phrase ("the liver") with the same sigmoid loss over all the
  regions and phrases of the batch, plus a per-patch term (patches inside the mask match the phrase,
  patches outside do not, positives and negatives weighted equally), so single patches localise and phrase→patch similarity points at the object.

Scenes are regenerated from the manifest ids (the phantom is a pure function of seed and index), so every
object's mask is available, not only the sample's target. The model is saved in HF `SiglipModel` format with
its tokenizer; `index_builder.encoder.PatchEncoder` loads its vision tower with `SiglipVisionModel`.
It lives in training/ because it needs the phantom's scenes; index_builder only loads the result.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vital_core.cli import CLIError

log = logging.getLogger("vital.encoder_train")

TEXT_LEN = 48
"""Report length in tokens (SigLIP pads every text to a fixed length and pools the last token)."""
PHRASE_LEN = 8
"""Phrase length in tokens."""
TEXT_ARCH = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
"""The text tower: as small as the vision tower (SigLIP needs equal embedding widths)."""


@dataclass
class PairSet:
    """Images with their reports and their objects' phrases and patch-grid masks."""

    pixels: torch.Tensor
    """uint8 [N, S, S, 3]."""
    reports: list[str]
    names: list[list[str]]
    """Object names per image."""
    grids: list[np.ndarray]
    """Per image float32 [n_obj, G*G]: the fraction of each patch cell covered by each object's mask."""
    targets: list[str]
    """The manifest sample's target name per image."""


def report(scene: Any) -> str:
    """A short radiology-style report of a phantom scene, from its own facts (one clause per object)."""
    from training.phantom.facts import mask_facts

    parts = []
    for o in scene.objects:
        f = mask_facts(o.mask)
        tone = "bright" if o.brighter else "dark"
        parts.append(f"{o.name}: {f.size} {f.shape} {tone} {o.target_type}, {f.region}.")
    return " ".join(parts)


def phrase(name: str) -> str:
    """The phrase that names one structure."""
    return f"the {name}"


def cell_fractions(mask: np.ndarray, grid: int) -> np.ndarray:
    """Fraction of each of the grid x grid cells covered by a bool mask [S, S] -> float32 [grid*grid]."""
    s = mask.shape[0]
    if s % grid:
        raise ValueError(f"mask side {s} is not a multiple of the grid {grid}")
    c = s // grid
    return mask.reshape(grid, c, grid, c).mean(axis=(1, 3)).astype(np.float32).reshape(-1)


def load_pairs(manifest: str | Path, split: str, seed: int, grid: int, limit: int | None = None) -> PairSet:
    """Regenerate the phantom scenes of one split of a manifest and pair them with reports and masks."""
    from training.phantom import make_sample

    rows = [json.loads(x) for x in Path(manifest).read_text().splitlines() if x.strip()]
    meta = Path(manifest).with_name("phantom.json")
    params = json.loads(meta.read_text()) if meta.is_file() else {}
    size = params.get("size", 128)
    task, only = params.get("task", "legacy"), bool(params.get("multihop_only", False))
    rows = [r for r in rows if r["split"] == split][:limit]
    if not rows:
        raise CLIError(f"no {split} samples in {manifest}")
    pix, reps, names, grids, targets = [], [], [], [], []
    for r in rows:
        s = make_sample(int(r["id"].rsplit("-", 1)[1]), seed, size, task, only)
        img = s.scene.to_uint8()  # (S, S) or (S, S, 3)
        pix.append(np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img)
        reps.append(report(s.scene))
        names.append([o.name for o in s.scene.objects])
        grids.append(np.stack([cell_fractions(o.mask, grid) for o in s.scene.objects]))
        targets.append(r["target"])
    return PairSet(torch.from_numpy(np.stack(pix)), reps, names, grids, targets)


def _pixels(u8: torch.Tensor) -> torch.Tensor:
    """uint8 [B, S, S, 3] -> normalised [B, 3, S, S] exactly as index_builder.encoder.preprocess does."""
    return (u8.float() / 255.0 - 0.5).div(0.5).permute(0, 3, 1, 2).contiguous()


def _tokens(tok: Any, texts: list[str], length: int) -> torch.Tensor:
    """Token ids [B, length]: text + eos, left-padded (the last position, which SigLIP pools, is eos)."""
    ids = [tok(t, add_special_tokens=False)["input_ids"][: length - 1] + [tok.eos_token_id] for t in texts]
    return torch.tensor([[tok.pad_token_id] * (length - len(i)) + i for i in ids])


def _sigmoid_loss(
    a: torch.Tensor, b: torch.Tensor, pos: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor
):
    """SigLIP loss: -mean over rows of sum_j log sigmoid(±(s·a_i·b_j + t)); pos [A, B] bool."""
    logits = a @ b.T * scale.exp() + bias  # (A, B)
    labels = pos.float() * 2 - 1
    return -F.logsigmoid(labels * logits).sum() / a.shape[0]


def build_model(vocab_size: int, seed: int) -> Any:
    """A fresh tiny SiglipModel whose vision tower has the tiny preset's encoder architecture."""
    from transformers import SiglipConfig, SiglipModel

    from vital_core.presets import TINY_ENCODER_ARCH

    cfg = SiglipConfig(
        # special ids of vital_core.tokenizer's BPE: <|endoftext|> (pad) = 0, <|im_start|> = 1, <|im_end|> = 2
        text_config={
            **TEXT_ARCH,
            "vocab_size": vocab_size,
            "max_position_embeddings": TEXT_LEN,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        vision_config=dict(TINY_ENCODER_ARCH),
    )
    torch.manual_seed(seed)
    return SiglipModel(cfg)


class RegionHead(torch.nn.Module):
    """Learnable temperature and bias of the region–phrase and patch–phrase sigmoid terms."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor([np.log(10.0)] * 2, dtype=torch.float32))
        self.bias = torch.nn.Parameter(torch.tensor([-5.0, 0.0]))


def losses(model: Any, head: RegionHead, tok: Any, batch: PairSet, idx: list[int]) -> dict[str, torch.Tensor]:
    """Global image–report, region–phrase and patch–phrase sigmoid losses for the images `idx`."""
    pix = _pixels(batch.pixels[idx])  # (B, 3, S, S)
    vis = model.vision_model(pixel_values=pix)
    img = F.normalize(vis.pooler_output, dim=-1)  # (B, D)
    patches = F.normalize(vis.last_hidden_state, dim=-1)  # (B, P, D)
    txt = F.normalize(_text_features(model, _tokens(tok, [batch.reports[i] for i in idx], TEXT_LEN)), dim=-1)
    out = {
        "global": _sigmoid_loss(
            img, txt, torch.eye(len(idx), dtype=torch.bool), model.logit_scale, model.logit_bias
        )
    }
    names = sorted({n for i in idx for n in batch.names[i]})
    phr = F.normalize(
        _text_features(model, _tokens(tok, [phrase(n) for n in names], PHRASE_LEN)), dim=-1
    )  # (U, D)
    col = {n: j for j, n in enumerate(names)}
    w, who, img_of = [], [], []
    for b, i in enumerate(idx):
        for n, g in zip(batch.names[i], batch.grids[i]):
            w.append(torch.from_numpy(g))
            who.append(col[n])
            img_of.append(b)
    wt = torch.stack(w)  # (R, P) cell fractions
    reg_patches = patches[torch.tensor(img_of)]  # (R, P, D)
    pooled = F.normalize(
        (wt.unsqueeze(-1) * reg_patches).sum(1) / wt.sum(1, keepdim=True).clamp_min(1e-6), dim=-1
    )
    pos = torch.tensor(who).unsqueeze(1) == torch.arange(len(names)).unsqueeze(0)  # (R, U)
    out["region"] = _sigmoid_loss(pooled, phr, pos, head.scale[0], head.bias[0])
    sims = (reg_patches @ phr[torch.tensor(who)].unsqueeze(-1)).squeeze(-1)  # (R, P)
    logits = sims * head.scale[1].exp() + head.bias[1]
    inside, outside = (wt >= 0.5).float(), (wt == 0).float()  # cells in / out of the mask; edges ignored
    # balanced: the few patches inside a mask weigh as much as the many outside it
    pos = -(F.logsigmoid(logits) * inside).sum() / inside.sum().clamp_min(1.0)
    out["patch"] = pos - (F.logsigmoid(-logits) * outside).sum() / outside.sum().clamp_min(1.0)
    out["total"] = out["global"] + out["region"] + out["patch"]
    return out


def _text_features(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """Pooled text embedding [B, D] (the SigLIP text head on the last token)."""
    return model.text_model(input_ids=ids).pooler_output


def train_encoder(
    manifest: str | Path,
    out: str | Path,
    *,
    steps: int = 1000,
    batch_size: int = 32,
    lr: float = 2e-3,
    images: int = 1200,
    seed: int = 0,
    phantom_seed: int = 0,
    progress: bool = True,
) -> Path:
    """Train the tiny MedSigLIP on the manifest's train split and save it (HF SiglipModel + tokenizer)."""
    from tqdm import tqdm

    from vital_core.presets import TINY_ENCODER_ARCH
    from vital_core.tokenizer import train_bpe_tokenizer

    grid = TINY_ENCODER_ARCH["image_size"] // TINY_ENCODER_ARCH["patch_size"]
    t0 = time.perf_counter()
    data = load_pairs(manifest, "train", phantom_seed, grid, images)
    names = sorted({n for ns in data.names for n in ns})
    tok = train_bpe_tokenizer(data.reports + [phrase(n) for n in names], vocab_size=512)
    model = build_model(len(tok), seed)
    head = RegionHead()
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps))
    )
    gen = torch.Generator().manual_seed(seed)
    model.train()
    history = []
    bar = tqdm(range(steps), desc="train-encoder", disable=not progress, dynamic_ncols=True)
    for step in bar:
        idx = torch.randint(len(data.reports), (batch_size,), generator=gen).tolist()
        parts = losses(model, head, tok, data, idx)
        opt.zero_grad(set_to_none=True)
        parts["total"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        row = {k: round(float(v.detach()), 4) for k, v in parts.items()}
        bar.set_postfix(row)
        if step % 50 == 0 or step == steps - 1:
            history.append({"step": step, **row})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval().requires_grad_(False)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    info = {
        "manifest": str(manifest),
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "images": len(data.reports),
        "seed": seed,
        "minutes": round((time.perf_counter() - t0) / 60, 2),
        "history": history,
    }
    (out / "encoder_train.json").write_text(json.dumps(info, indent=2) + "\n")
    log.info("tiny MedSigLIP saved to %s in %.1f min", out, info["minutes"])
    return out


@torch.inference_mode()
def evaluate_encoder(model: Any, tok: Any, data: PairSet) -> dict[str, float]:
    """Report→image retrieval (R@1, R@5 among the split's images) and phrase→patch pointing of the target.

    Pointing: the patch with the highest cosine to "the {target}" lies in a cell the target's mask covers
    (any fraction > 0); `pointing_all` does the same for every object of every scene.
    """
    model.eval()
    img, patches = [], []
    for i in range(0, len(data.reports), 64):
        vis = model.vision_model(pixel_values=_pixels(data.pixels[i : i + 64]))
        img.append(F.normalize(vis.pooler_output, dim=-1))  # (b, D)
        patches.append(F.normalize(vis.last_hidden_state, dim=-1))  # (b, P, D)
    img_t, pat = torch.cat(img), torch.cat(patches)  # (N, D), (N, P, D)
    txt = torch.cat(
        [
            F.normalize(_text_features(model, _tokens(tok, data.reports[i : i + 64], TEXT_LEN)), dim=-1)
            for i in range(0, len(data.reports), 64)
        ]
    )
    sim = txt @ img_t.T  # (N texts, N images)
    rank = (sim > sim.diagonal().unsqueeze(1)).sum(1)  # images scoring above the true one
    hits_t, hits_all, n_all = 0, 0, 0
    for i, names in enumerate(data.names):
        phr = F.normalize(_text_features(model, _tokens(tok, [phrase(n) for n in names], PHRASE_LEN)), dim=-1)
        best = (pat[i] @ phr.T).argmax(0)  # (n_obj,) best patch per phrase
        for j, n in enumerate(names):
            hit = bool(data.grids[i][j][int(best[j])] > 0)
            hits_all += hit
            n_all += 1
            hits_t += hit and n == data.targets[i]
    return {
        "n_images": len(data.reports),
        "retrieval_r1": float((rank < 1).float().mean()),
        "retrieval_r5": float((rank < 5).float().mean()),
        "pointing_target": hits_t / len(data.reports),
        "pointing_all": hits_all / max(n_all, 1),
        "mask_cover": float(np.mean([(g > 0).mean() for gs in data.grids for g in gs])),
    }


def load_trained(path: str | Path) -> tuple[Any, Any]:
    """A saved tiny MedSigLIP (SiglipModel, tokenizer) from its directory."""
    from transformers import SiglipModel

    from vital_core.tokenizer import load_tokenizer

    return SiglipModel.from_pretrained(str(path), local_files_only=True).eval(), load_tokenizer(path)


def bench_encoder(
    encoder_dir: str | Path,
    manifest: str | Path,
    out_dir: str | Path,
    *,
    split: str = "test",
    limit: int | None = 500,
    phantom_seed: int = 0,
) -> dict[str, Any]:
    """Score the trained encoder and a random-init one of the same architecture on a split; write JSON + md."""
    import platform

    from vital_core.presets import TINY_ENCODER_ARCH

    grid = TINY_ENCODER_ARCH["image_size"] // TINY_ENCODER_ARCH["patch_size"]
    data = load_pairs(manifest, split, phantom_seed, grid, limit)
    model, tok = load_trained(encoder_dir)
    trained = evaluate_encoder(model, tok, data)
    random = evaluate_encoder(build_model(len(tok), 0), tok, data)
    import os

    info = Path(encoder_dir) / "encoder_train.json"
    training = (
        {k: v for k, v in json.loads(info.read_text()).items() if k != "history"} if info.is_file() else {}
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    result = {
        "machine": f"{platform.machine()} CPU ({torch.get_num_threads()} threads, {os.cpu_count()} cores, "
        f"load average {load:.1f}), torch {torch.__version__}",
        "training": training,
        "encoder": str(encoder_dir),
        "manifest": str(manifest),
        "split": split,
        "trained": trained,
        "random_init": random,
        "ratio": {
            k: round(trained[k] / random[k], 2) if random[k] else None for k in trained if k != "n_images"
        },
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "encoder-tiny.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = ["| metric | trained | random init | ratio |", "|---|---|---|---|"]
    for k in ("retrieval_r1", "retrieval_r5", "pointing_target", "pointing_all", "mask_cover"):
        rows.append(f"| {k} | {trained[k]:.3f} | {random[k]:.3f} | {result['ratio'][k]} |")
    md = [
        "# Tiny MedSigLIP (vital-tiny's frozen encoder) on the phantom",
        "",
        f"Split `{split}` of `{manifest}`, {trained['n_images']} images; machine: {result['machine']}.",
        f"Training: {training.get('steps')} steps of {training.get('batch_size')} pairs from {training.get('images')}"
        f" train images, lr {training.get('lr')}, {training.get('minutes')} min (same machine).",
        "Retrieval: report → image among all the split's images. Pointing: the patch most similar to",
        '"the {target}" lies in a patch cell the target covers; `mask_cover` is the share of cells an object',
        "covers (what a random patch would hit). Made by `vital train-encoder --bench-out`.",
        "",
        *rows,
        "",
    ]
    (out / "encoder-tiny.md").write_text("\n".join(md))
    return result
