"""Are the latent steps used? Accuracy when the fed latents are replaced, and the scale of what is fed.

Alignment of a latent with its target says nothing about whether the answer depends on it (PRISM,
arXiv 2606.05753); a corruption test does. For every batch of closed questions the model answers three
times at the same K, on the same images and questions:

* natural: the latent loop as served;
* donor: every latent step is fed another sample's natural state instead of its own (the batch rolled by
  one: sample i gets sample i+1's h_0..h_{K-1}), so the steps carry the wrong image's reasoning;
* noise: every fed state is replaced by Gaussian noise of the same L2 norm.

A model that uses its latents loses accuracy under both; one that ignores them does not. Also reported:
||h|| / ||token embedding|| of the fed states (hidden states fed back can be many times a token
embedding's norm; `latent.feed: embed_rms` rescales them), and, with `latent.feed: soft`, of the expected
token embeddings actually fed (`fed_input_norm`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from training.data.manifest import Sample
from training.eval.items import from_sample
from training.eval.metrics import item_correct
from training.eval.stats import accuracy, paired_difference


def latent_usage(
    model: Any,
    samples: Sequence[Sample],
    k: int,
    batch_size: int = 16,
    seed: int = 0,
    max_new_tokens: int | None = None,
) -> dict:
    """Natural, donor-swapped and noise-fed accuracy of closed questions at K = k (k >= 1), each decoded up to
    `max_new_tokens` (None: the bundle's default), the cap the evaluation itself used: at a K that leaves
    reasoning sentences written, a shorter cap would cut the chain before its answer."""
    if k < 1:
        raise ValueError("the latent-usage test needs k >= 1")
    items = [from_sample(s) for s in samples]
    items = [it for it in items if it.kind != "open"]
    if len(items) < 2:
        raise ValueError("the latent-usage test needs at least two closed questions")
    gen = torch.Generator().manual_seed(seed)
    hits: dict[str, list[bool]] = {"natural": [], "donor": [], "noise": []}
    norms: list[float] = []
    inputs: list[float] = []  # feed: soft, the norms of what is fed
    model.eval()
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        if len(chunk) < 2:  # a donor needs another sample: fold a lone last item into the previous batch
            chunk = items[start - 1 : start + 1]
            for key in hits:
                hits[key].pop()
            norms.pop()
            if inputs:
                inputs.pop()
        images, prompts = [it.load_image() for it in chunk], [it.prompt for it in chunk]
        natural = model.answer(images, prompts, k=k, max_new_tokens=max_new_tokens)
        lat = torch.stack([a.latents[:k] for a in natural])  # (B, K, H): h_0..h_{K-1}, the fed states
        donor_lat = lat.roll(1, dims=0)

        def donor(i: int, h: torch.Tensor, d: torch.Tensor = donor_lat) -> torch.Tensor:
            return d[:, i : i + 1].to(h.device, h.dtype)

        def noise(i: int, h: torch.Tensor) -> torch.Tensor:
            z = torch.randn(h.shape, generator=gen, dtype=torch.float32).to(h.device, h.dtype)
            return z * (h.float().norm(dim=-1, keepdim=True) / z.float().norm(dim=-1, keepdim=True)).to(
                h.dtype
            )

        runs = {
            "natural": natural,
            "donor": model.answer(images, prompts, k=k, max_new_tokens=max_new_tokens, feed_override=donor),
            "noise": model.answer(images, prompts, k=k, max_new_tokens=max_new_tokens, feed_override=noise),
        }
        for key, answers in runs.items():
            hits[key] += [item_correct(a.text, it) for a, it in zip(answers, chunk)]
        norms += lat.float().norm(dim=-1).mean(1).tolist()
        if model.config.latent.feed == "soft":
            with torch.inference_mode():
                inputs += model.soft_feed(lat.to(model.device)).float().norm(dim=-1).mean(1).tolist()
    emb = model.feed_norm()
    report: dict[str, Any] = {"k": k, **{key: accuracy(v) for key, v in hits.items()}}
    report["drop_donor"] = paired_difference(hits["natural"], hits["donor"])
    report["drop_noise"] = paired_difference(hits["natural"], hits["noise"])
    report["fed_norm"] = round(sum(norms) / len(norms), 4)
    report["embedding_norm"] = round(emb, 4)
    report["norm_ratio"] = round(report["fed_norm"] / emb, 2)
    report["feed"] = model.config.latent.feed
    if inputs:
        report["fed_input_norm"] = round(sum(inputs) / len(inputs), 4)
    return report
