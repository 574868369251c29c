"""The one latent loop (paper §3.2): prefix → K silent steps on the same cache → answer.

Training, evaluation, benchmarks and the server all call `latent_forward`. The caller picks the
mode: under `torch.inference_mode()` it serves; with autograd on it trains, gradients flowing
through every latent step (no teacher forcing of latents, no parallel shortcut).

Positions and masks are explicit at every call. Qwen3-VL otherwise keeps `rope_deltas` as module
state and rebuilds 3-D M-RoPE positions only on a fresh prefix; passing `position_ids` ourselves
means the module's state is never read or written, so concurrent/interleaved requests cannot
leak into each other.

Every latent step and every decode step is the same call, `vital_core.step.step`, on one of two
caches: training (and the default eager path) appends to a `DynamicCache` with autograd; serving
may pass a `StaticRunner`, which runs the very same step on a preallocated static cache (optionally
as a CUDA graph), and a `PrefixCache`, which reuses an image's prefix across questions. Both give
the same tokens (tests/vital_core/test_static_cache.py).

Per-sample K in one batch is done by masking: the batch runs max(K) steps; a sample whose K is
smaller gets its extra steps' cache columns masked out (attention mask 0), its answer starts
from its own h_K at its own position. Rows never interact, so a batch equals one-by-one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache, Qwen3VLForConditionalGeneration

from vital_core.prefill import prefill
from vital_core.prefix_cache import PrefixCache, prefill_cached
from vital_core.preprocess import PromptBatch
from vital_core.static_cache import StaticRunner
from vital_core.step import positions3, step
from vital_core.timing import null_timer

TokenCallback = Callable[[list[int | None]], object]
"""`on_tokens(step_tokens)`: one decode step's new token per batch row (None: row ended)."""
FeedOverride = Callable[[int, torch.Tensor], torch.Tensor]
"""`feed_override(i, h_i)`: the (B, 1, H) state fed to latent step i+1 instead of h_i."""


@dataclass
class LatentOutput:
    """What one pass of the loop returns."""

    latents: torch.Tensor  # (B, Kmax+1, H): h_0 (prefix) .. h_Kmax; rows past a sample's K are unused
    k: torch.Tensor  # (B,) long, each sample's K
    logits: torch.Tensor | None = None  # (B, T, V) teacher-forced answer logits (training)
    hidden: torch.Tensor | None = None  # (B, T, H) the states the logits come from: h_K, one per fed token
    loss: torch.Tensor | None = None  # scalar next-token CE over answer tokens (training)
    tokens: list[list[int]] | None = None  # greedy answer tokens without the stop token (inference)
    prefix_hits: list[bool] | None = None  # per sample: image prefix reused from the prefix cache

    @property
    def step_valid(self) -> torch.Tensor:
        """(B, Kmax) bool: latent step k (1-based column k-1) exists for the sample."""
        kmax = self.latents.shape[1] - 1
        steps = torch.arange(1, kmax + 1, device=self.k.device)
        return steps[None, :] <= self.k[:, None]


def as_k_tensor(k: int | Sequence[int] | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """Broadcast an int or per-sample K to a (B,) long tensor."""
    kt = torch.as_tensor(k, dtype=torch.long, device=device).flatten()
    if kt.numel() == 1:
        kt = kt.expand(batch)
    if kt.numel() != batch or bool((kt < 0).any()):
        raise ValueError(f"k must be one non-negative int or one per sample (batch {batch}), got {k}")
    return kt.contiguous()


def latent_forward(
    core: Qwen3VLForConditionalGeneration,
    batch: PromptBatch,
    k: int | Sequence[int] | torch.Tensor,
    *,
    answer_ids: torch.Tensor | None = None,
    answer_mask: torch.Tensor | None = None,
    max_new_tokens: int = 32,
    stop_ids: Sequence[int] | set[int] = (),
    pad_id: int = 0,
    timer: Callable = null_timer,
    runner: StaticRunner | None = None,
    prefix_cache: PrefixCache | None = None,
    image_keys: Sequence[str] | None = None,
    on_tokens: TokenCallback | None = None,
    feed_norm: float | None = None,
    feed_override: FeedOverride | None = None,
    feed_map: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> LatentOutput:
    """Run prefix → K latent steps → answer on one left-padded batch.

    Args:
        core: the (possibly LoRA-injected) Qwen3-VL model.
        batch: prompts from `encode_prompts` on the model's device.
        k: latent steps, one int or one per sample.
        answer_ids, answer_mask: (B, T) right-padded answer tokens (ending in the stop token). Given:
            teacher-forced training pass returning logits and loss. None: greedy decoding.
        max_new_tokens: decoding cap (inference).
        stop_ids: token ids that end an answer (inference), any iterable of ints.
        pad_id: token fed for already-finished rows while others decode.
        timer: `StageTimer` (or compatible) for per-stage timing.
        runner: serve the latent and decode steps on its static cache (greedy decoding without
            autograd only, and when the batch's bucket fits the runner's byte cap; ignored otherwise).
        prefix_cache: reuse image prefixes across calls (greedy decoding without autograd only).
        image_keys: one `prefix_cache.key(image)` per row; default: hashes of the pixel values.
        on_tokens: greedy decoding only: called on this thread with each decode step's new tokens,
            one entry per row (None once the row has ended; stop tokens are never passed), in order,
            so a row's entries concatenate to its `tokens`. Delivered at the host's stop check (no
            extra sync). A truthy return stops decoding early (every consumer went away).
        feed_norm: rescale every fed state to this L2 norm (`latent.feed: embed_rms`); None feeds h as is.
        feed_override: `(i, h) -> x`: what step i+1 is fed instead of h_i (the latent-usage tests: another
            sample's latents, or noise of equal norm); applied before `feed_norm` and `feed_map`.
        feed_map: `(B, 1, H) -> (B, 1, H)` applied to every fed state (`latent.feed: soft`, the expected token
            embedding); None feeds h as is.
    """
    vl = core.model
    text = vl.language_model
    bsz = batch.input_ids.shape[0]
    ks = as_k_tensor(k, bsz, batch.input_ids.device)
    kmax = int(ks.max())
    serving = answer_ids is None and not torch.is_grad_enabled()
    if serving and prefix_cache is not None:
        keys = list(image_keys) if image_keys is not None else _pixel_keys(batch, prefix_cache.model_key)
        pre = prefill_cached(vl, batch, prefix_cache, keys, timer)
    else:
        pre = prefill(vl, batch, timer)
    n_answer = answer_ids.shape[1] - 1 if answer_ids is not None else max_new_tokens
    plen = pre.mask.shape[1]
    # One mask over the whole sequence: prefix, latent columns (0 past a sample's K), answer.
    mask = torch.ones(bsz, plen + kmax + max(n_answer, 0), dtype=pre.mask.dtype, device=pre.mask.device)
    mask[:, :plen] = pre.mask
    steps = torch.arange(1, kmax + 1, device=mask.device)
    mask[:, plen : plen + kmax] = (steps[None, :] <= ks[:, None]).to(mask.dtype)

    if runner is not None and serving and runner.fits(bsz, mask.shape[1]):  # the same steps, static cache
        sequence = runner.open(pre.cache, mask)
    else:
        sequence = nullcontext(_DynamicSequence(text, pre.cache, mask))
    with sequence as seq:
        h = pre.h0  # (B, 1, H)
        latents = [h]
        for i in range(kmax):
            with timer("latent"):
                x = h if feed_override is None else feed_override(i, h)
                if feed_norm is not None:  # (B, 1, H) at the token embeddings' norm
                    x = x * (feed_norm / x.float().norm(dim=-1, keepdim=True).clamp_min(1e-6)).to(x.dtype)
                if feed_map is not None:
                    x = feed_map(x)
                h = seq.step(x, pre.next_pos + i)  # (B, 1, H)
                latents.append(h)
        lat = torch.cat(latents, dim=1)  # (B, Kmax+1, H)
        h_k = lat[torch.arange(bsz, device=lat.device), ks].unsqueeze(1)  # (B, 1, H): each sample's own h_K
        start = pre.next_pos + ks  # (B,) position of the first fed answer token
        if answer_ids is not None:
            return _teacher_forced(core, text, seq, h_k, start, lat, ks, answer_ids, answer_mask, timer)
        tokens = _greedy(core, text, seq, h_k, start, max_new_tokens, stop_ids, pad_id, timer, on_tokens)
    return LatentOutput(latents=lat, k=ks, tokens=tokens, prefix_hits=pre.hits)


class _DynamicSequence:
    """Single-position steps on a `DynamicCache` (training, and the eager path)."""

    stop_every = 1

    def __init__(self, text: torch.nn.Module, cache: DynamicCache, mask: torch.Tensor):
        self.text, self.cache, self.mask = text, cache, mask
        self.seen = cache.get_seq_length()

    def step(self, embeds: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """(B, T, H) embeddings at (B,) first positions → (B, T, H) last hidden state."""
        t = embeds.shape[1]
        p = positions3(pos[:, None] + torch.arange(t, device=pos.device)[None])  # (3, B, T)
        h = step(self.text, embeds, p, self.mask[:, : self.seen + t], self.cache)
        self.seen += t
        return h


def _pixel_keys(batch: PromptBatch, model_key: str) -> list[str]:
    """Prefix-cache keys from each row's pixel values and grid (when the caller has no image keys)."""
    import hashlib

    n_patch = batch.image_grid_thw.prod(-1).tolist()
    pixels = batch.pixel_values.detach().cpu()
    keys, start = [], 0
    for grid, n in zip(batch.image_grid_thw.tolist(), n_patch):
        h = hashlib.blake2b(f"{model_key}|pixels|{grid}".encode(), digest_size=16)
        h.update(pixels[start : start + n].contiguous().numpy().tobytes())
        keys.append(h.hexdigest())
        start += n
    return keys


def _teacher_forced(core, text, seq, h_k, start, lat, ks, answer_ids, answer_mask, timer):
    """All answer tokens in one pass; the first is predicted from h_K (paper eq. 2)."""
    bsz, t = answer_ids.shape
    if answer_mask is None:
        answer_mask = torch.ones_like(answer_ids)
    with timer("decode"):
        hidden = h_k  # (B, 1, H)
        if t > 1:
            seq.mask[:, seq.seen : seq.seen + t - 1] = answer_mask[:, :-1]
            hid = seq.step(text.embed_tokens(answer_ids[:, :-1]), start)  # (B, T-1, H)
            hidden = torch.cat([h_k, hid], dim=1)
        logits = core.lm_head(hidden)  # (B, T, V): state j predicts answer token j
        labels = answer_ids.masked_fill(answer_mask == 0, -100)
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
    return LatentOutput(latents=lat, k=ks, logits=logits, loss=loss, hidden=hidden)


def _greedy(core, text, seq, h_k, start, max_new_tokens, stop_ids, pad_id, timer, on_tokens=None):
    """Greedy decoding with a stop set; finished rows feed `pad_id` and are ignored.

    The host looks at the stop condition every `seq.stop_every` tokens (the only sync in the loop);
    with `on_tokens`, that one sync copies the tokens made since the last check instead of `done`.
    """
    stop_set = {int(s) for s in stop_ids}
    stops = torch.tensor(sorted(stop_set) or [-1], device=h_k.device)
    with timer("decode"):
        tok = core.lm_head(h_k[:, -1]).argmax(-1)  # (B,)
    done = torch.isin(tok, stops)
    out = [tok]
    stream = _Deliver(on_tokens, stop_set, len(tok)) if on_tokens is not None else None
    for i in range(1, max_new_tokens):
        if (i - 1) % seq.stop_every == 0 and (stream.flush(out) if stream else bool(done.all())):
            break
        with timer("decode"):
            hid = seq.step(text.embed_tokens(tok[:, None]), start + i - 1)  # (B, 1, H)
            tok = core.lm_head(hid[:, -1]).argmax(-1)
            tok = torch.where(done, torch.full_like(tok, pad_id), tok)
            done = done | torch.isin(tok, stops)
            out.append(tok)
    if stream:
        stream.flush(out)
    seqs = torch.stack(out, dim=1).tolist()  # (B, T)
    result = []
    for row in seqs:
        cut = next((j for j, t in enumerate(row) if t in stop_set), len(row))
        result.append(row[:cut])
    return result


class _Deliver:
    """Hands decode steps' tokens to an `on_tokens` callback as the host sees them."""

    def __init__(self, callback: TokenCallback, stop_set: set[int], batch: int):
        self.callback, self.stop_set = callback, stop_set
        self.ended = [False] * batch
        self.sent = 0  # steps already delivered

    def flush(self, out: list[torch.Tensor]) -> bool:
        """Deliver steps `out[sent:]` (one host copy); True when every row ended or the callback asks to stop."""
        if self.sent == len(out):
            return all(self.ended)
        steps = torch.stack(out[self.sent :], dim=0).tolist()  # (S, B): the loop's one sync
        self.sent = len(out)
        stop = False
        for row_tokens in steps:
            new: list[int | None] = []
            for r, t in enumerate(row_tokens):
                if not self.ended[r] and t in self.stop_set:
                    self.ended[r] = True
                new.append(None if self.ended[r] else t)
            stop = bool(self.callback(new)) or stop
        return stop or all(self.ended)
