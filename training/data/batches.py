"""Five-tuple samples → K-bucketed training batches (prompts, answers, step sentences, ROI targets)."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from training.data.manifest import Sample


@dataclass
class Batch:
    """One training batch; every sample shares the same K."""

    samples: list[Sample]
    k: int
    images: list[Image.Image]
    targets: torch.Tensor | None  # (B, D) ROI features, (B, K, D) per-hop ones, or None without a store
    globals_: torch.Tensor | None  # (B, D) global image features (per-step target variant)


@dataclass(frozen=True)
class KRule:
    """How many latent steps each sample runs in one curriculum phase."""

    override: int | None = None
    """Every sample's K (the K ablation; 0 for stage 0)."""
    cap: int | None = None
    """At most this many (a Coconut stage: sentences 1..cap latent, the rest written)."""
    direct: frozenset[str] = frozenset()
    """Ids of samples trained at K = 0 on the answer alone in this phase (`Recipe.direct_share`)."""

    def __call__(self, sample: Sample) -> int:
        if sample.id in self.direct:
            return 0
        if self.override is not None:
            return self.override
        k = len(sample.reasoning)
        return k if self.cap is None else min(k, self.cap)


def sample_k(sample: Sample, k_override: int | KRule | None = None) -> int:
    """A sample's latent depth: its number of reasoning steps, the forced K of an ablation, or what a
    phase's `KRule` gives it."""
    if isinstance(k_override, KRule):
        return k_override(sample)
    return len(sample.reasoning) if k_override is None else k_override


def in_phase(
    samples: Sequence[Sample], min_k: int, max_k: int, k_override: int | KRule | None = None
) -> list[Sample]:
    """Samples whose K lies in [min_k, max_k]."""
    return [s for s in samples if min_k <= sample_k(s, k_override) <= max_k]


def k_batches(
    samples: Sequence[Sample],
    batch_size: int,
    seed: int,
    *,
    k_override: int | KRule | None = None,
    rank: int = 0,
    world: int = 1,
    group: int | None = None,
) -> list[list[int]]:
    """Deterministic, shuffled batches of sample indices, each with one K; this rank's share.

    Each K bucket is shuffled and cut into batches; runs of `group` consecutive batches (default
    `world`; the trainer uses world × grad_accum) share one K, a short last run being topped up from the
    start of its bucket, and the runs are shuffled. Rank r takes batches r, r + world, ... So the K of a
    step is the same on every rank (every rank runs the same collectives: gloo would abort and NCCL
    hang otherwise), and the whole sequence depends only on (seed, samples, group): 2 ranks × 1 batch
    see exactly the batches 1 rank × grad_accum 2 sees. A resumed run replays it exactly.
    """
    group = group or world
    if group % world:
        raise ValueError(f"group {group} must be a multiple of world {world}")
    rng = random.Random(seed)
    by_k: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_k[sample_k(s, k_override)].append(i)
    runs = []
    for k in sorted(by_k):
        idx = by_k[k]
        rng.shuffle(idx)
        batches = [idx[j : j + batch_size] for j in range(0, len(idx), batch_size)]
        batches += [batches[j % len(batches)] for j in range(-len(batches) % group)]  # top up the last run
        runs += [batches[j : j + group] for j in range(0, len(batches), group)]
    rng.shuffle(runs)
    flat = [b for run in runs for b in run]
    return flat[rank::world]


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

    def per_hop(self, samples: Sequence[Sample], k: int) -> torch.Tensor:
        """(B, k, D): step j's target is the ROI feature of step j's mask (`Sample.step_roi_keys`). A batch
        run at another K than a sample's own (ablations' forced K) repeats its last step or drops the rest."""
        rows = []
        for s in samples:
            keys = s.step_roi_keys()
            rows.append(torch.stack([self.features[keys[min(j, len(keys) - 1)]] for j in range(k)]))
        return torch.stack(rows)


def roi_keys(samples: Sequence[Sample], per_hop: bool = False) -> list[str]:
    """Every feature-store key a training run needs: each sample's ROI key, and its steps' with `per_hop`."""
    keys = [s.roi_key or s.id for s in samples]
    if per_hop:
        keys += [k for s in samples for k in s.step_roi_keys()]
    return list(dict.fromkeys(keys))


def load_batch(
    samples: Sequence[Sample],
    indices: Sequence[int],
    k: int,
    targets: RoiTargets | None,
    global_features: dict[str, torch.Tensor] | None = None,
    per_hop: bool = False,
) -> Batch:
    """Read the images of one batch and gather its targets."""
    chosen = [samples[i] for i in indices]
    images = []
    for s in chosen:
        with Image.open(s.image) as im:
            images.append(im.convert("RGB"))
    keys = [s.roi_key or s.id for s in chosen]
    tgt = _targets(targets, chosen, keys, k, per_hop)
    glob = torch.stack([global_features[k] for k in keys]) if global_features else None
    return Batch(chosen, k, images, tgt, glob)


def _targets(
    targets: RoiTargets | None, chosen: Sequence[Sample], keys: Sequence[str], k: int, per_hop: bool
) -> torch.Tensor | None:
    if targets is None:
        return None
    return targets.per_hop(chosen, max(k, 1)) if per_hop else targets(keys)


def per_step_targets(roi: torch.Tensor, glob: torch.Tensor, k: int) -> torch.Tensor:
    """Paper §C.5: t_k = normalize((1 - k/K)·g + (k/K)·r) for k = 1..K → (B, K, D)."""
    alphas = torch.arange(1, k + 1, dtype=roi.dtype, device=roi.device) / max(k, 1)  # (K,)
    mix = (1 - alphas)[None, :, None] * glob[:, None] + alphas[None, :, None] * roi[:, None]  # (B, K, D)
    return torch.nn.functional.normalize(mix, dim=-1)


class SampleImages(torch.utils.data.Dataset):
    """Sample index → (index, decoded RGB image): the part of a batch DataLoader workers prepare."""

    def __init__(self, samples: Sequence[Sample]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[int, Image.Image]:
        with Image.open(self.samples[i].image) as im:
            return i, im.convert("RGB")


class CollateBatch:
    """Decoded images of one index batch → a `Batch` with its K and targets (runs in the workers)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        k_override: int | KRule | None,
        targets: RoiTargets | None,
        global_features: dict[str, torch.Tensor] | None,
        per_hop: bool = False,
    ):
        self.samples, self.k_override = samples, k_override
        self.targets, self.global_features, self.per_hop = targets, global_features, per_hop

    def __call__(self, items: list[tuple[int, Image.Image]]) -> Batch:
        chosen = [self.samples[i] for i, _ in items]
        keys = [s.roi_key or s.id for s in chosen]
        k = sample_k(chosen[0], self.k_override)
        tgt = _targets(self.targets, chosen, keys, k, self.per_hop)
        glob = torch.stack([self.global_features[k] for k in keys]) if self.global_features else None
        return Batch(chosen, k, [im for _, im in items], tgt, glob)


def batch_loader(
    samples: Sequence[Sample],
    batches: Sequence[Sequence[int]],
    *,
    k_override: int | KRule | None = None,
    targets: RoiTargets | None = None,
    global_features: dict[str, torch.Tensor] | None = None,
    num_workers: int = 0,
    per_hop: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader over exactly `batches` in order (pass `seq[pos:]` to resume): `num_workers`
    processes decode images and gather targets while the model steps; 0 does it in this process."""
    return torch.utils.data.DataLoader(
        SampleImages(samples),
        batch_sampler=[list(b) for b in batches],
        collate_fn=CollateBatch(samples, k_override, targets, global_features, per_hop),
        num_workers=num_workers,
        prefetch_factor=2 if num_workers else None,
        # its own generator: drawing worker seeds from the global RNG would make a resumed run diverge
        generator=torch.Generator().manual_seed(0),
    )
