"""Five-tuple samples → K-bucketed training batches (prompts, answers, step sentences, ROI targets)."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from training.dataset import Sample


@dataclass
class Batch:
    """One training batch; every sample shares the same K."""

    samples: list[Sample]
    k: int
    images: list[Image.Image]
    targets: torch.Tensor | None  # (B, D) ROI features, or None without a store
    globals_: torch.Tensor | None  # (B, D) global image features (per-step target variant)


def sample_k(sample: Sample, k_override: int | None = None) -> int:
    """A sample's latent depth: its number of reasoning steps (or the forced K of an ablation)."""
    return len(sample.reasoning) if k_override is None else k_override


def in_phase(
    samples: Sequence[Sample], min_k: int, max_k: int, k_override: int | None = None
) -> list[Sample]:
    """Samples whose K lies in [min_k, max_k]."""
    return [s for s in samples if min_k <= sample_k(s, k_override) <= max_k]


def k_batches(
    samples: Sequence[Sample],
    batch_size: int,
    seed: int,
    *,
    k_override: int | None = None,
    rank: int = 0,
    world: int = 1,
) -> list[list[int]]:
    """Deterministic, shuffled batches of sample indices, each with one K; this rank's share.

    The order depends only on (seed, samples), so a resumed run replays it exactly. Every rank gets
    the same number of batches (the remainder is dropped) so collective ops never wait forever.
    """
    rng = random.Random(seed)
    by_k: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_k[sample_k(s, k_override)].append(i)
    batches = []
    for k in sorted(by_k):
        idx = by_k[k]
        rng.shuffle(idx)
        batches += [idx[j : j + batch_size] for j in range(0, len(idx), batch_size)]
    rng.shuffle(batches)
    per_rank = len(batches) // world if world > 1 else len(batches)
    return batches[rank::world][:per_rank]


def steps_per_epoch(n_batches: int, grad_accum: int) -> int:
    """Optimizer steps in one pass over `n_batches`."""
    return math.ceil(n_batches / grad_accum)


class RoiTargets:
    """ROI features by sample key from an index_builder feature store (loaded once into memory)."""

    def __init__(self, root: str, keys: Sequence[str]):
        from index_builder.store import FeatureStore

        store = FeatureStore(root)
        missing = [k for k in keys if k not in store]
        if missing:
            raise KeyError(
                f"{len(missing)} sample(s) have no ROI feature in {root} (e.g. {missing[:3]}); "
                "run `vital extract-roi` on this manifest, or set loss.visual=false"
            )
        self.features = {k: torch.as_tensor(np.asarray(store.load(k)[0]), dtype=torch.float32) for k in keys}

    def __call__(self, keys: Sequence[str]) -> torch.Tensor:
        return torch.stack([self.features[k] for k in keys])  # (B, D)


def load_batch(
    samples: Sequence[Sample],
    indices: Sequence[int],
    k: int,
    targets: RoiTargets | None,
    global_features: dict[str, torch.Tensor] | None = None,
) -> Batch:
    """Read the images of one batch and gather its targets."""
    chosen = [samples[i] for i in indices]
    images = []
    for s in chosen:
        with Image.open(s.image) as im:
            images.append(im.convert("RGB"))
    keys = [s.roi_key or s.id for s in chosen]
    tgt = targets(keys) if targets is not None else None
    glob = torch.stack([global_features[k] for k in keys]) if global_features else None
    return Batch(chosen, k, images, tgt, glob)


def per_step_targets(roi: torch.Tensor, glob: torch.Tensor, k: int) -> torch.Tensor:
    """Paper §C.5: t_k = normalize((1 - k/K)·g + (k/K)·r) for k = 1..K → (B, K, D)."""
    alphas = torch.arange(1, k + 1, dtype=roi.dtype, device=roi.device) / max(k, 1)  # (K,)
    mix = (1 - alphas)[None, :, None] * glob[:, None] + alphas[None, :, None] * roi[:, None]  # (B, K, D)
    return torch.nn.functional.normalize(mix, dim=-1)


def iterate(batches: list[list[int]], start: int = 0) -> Iterator[tuple[int, list[int]]]:
    """(position, batch) from `start` on (resume skips what was done)."""
    for i in range(start, len(batches)):
        yield i, batches[i]
