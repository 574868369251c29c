"""The one latent loop (paper §3.2): prefix → K silent steps on the same cache → answer.

Training, evaluation, benchmarks and the server all call `latent_forward`. The caller picks the
mode: under `torch.inference_mode()` it serves; with autograd on it trains, gradients flowing
through every latent step (no teacher forcing of latents, no parallel shortcut).

Positions and masks are explicit at every call. Qwen3-VL otherwise keeps `rope_deltas` as module
state and rebuilds 3-D M-RoPE positions only on a fresh prefix; passing `position_ids` ourselves
means the module's state is never read or written, so concurrent/interleaved requests cannot
leak into each other.

Per-sample K in one batch is done by masking: the batch runs max(K) steps; a sample whose K is
smaller gets its extra steps' cache columns masked out (attention mask 0), its answer starts
from its own h_K at its own position. Rows never interact, so a batch equals one-by-one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache, Qwen3VLForConditionalGeneration

from vital_core.preprocess import PromptBatch
from vital_core.timing import null_timer


@dataclass
class LatentOutput:
    """What one pass of the loop returns."""

    latents: torch.Tensor  # (B, Kmax+1, H): h_0 (prefix) .. h_Kmax; rows past a sample's K are unused
    k: torch.Tensor  # (B,) long, each sample's K
    logits: torch.Tensor | None = None  # (B, T, V) teacher-forced answer logits (training)
    loss: torch.Tensor | None = None  # scalar next-token CE over answer tokens (training)
    tokens: list[list[int]] | None = None  # greedy answer tokens without the stop token (inference)

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
    stop_ids: Sequence[int] = (),
    pad_id: int = 0,
    timer: Callable = null_timer,
) -> LatentOutput:
    """Run prefix → K latent steps → answer on one left-padded batch.

    Args:
        core: the (possibly LoRA-injected) Qwen3-VL model.
        batch: prompts from `encode_prompts` on the model's device.
        k: latent steps, one int or one per sample.
        answer_ids, answer_mask: (B, T) right-padded answer tokens (ending in the stop token). Given:
            teacher-forced training pass returning logits and loss. None: greedy decoding.
        max_new_tokens: decoding cap (inference).
        stop_ids: token ids that end an answer (inference).
        pad_id: token fed for already-finished rows while others decode.
        timer: `StageTimer` (or compatible) for per-stage timing.
    """
    vl = core.model
    text = vl.language_model
    ids, attn = batch.input_ids, batch.attention_mask
    bsz, plen = ids.shape
    ks = as_k_tensor(k, bsz, ids.device)
    kmax = int(ks.max())
    n_answer = answer_ids.shape[1] - 1 if answer_ids is not None else max_new_tokens
    # One mask buffer for the whole sequence; each call sees the prefix of it that exists so far.
    mask = torch.ones(bsz, plen + kmax + max(n_answer, 0), dtype=attn.dtype, device=ids.device)
    mask[:, :plen] = attn
    steps = torch.arange(1, kmax + 1, device=ids.device)
    mask[:, plen : plen + kmax] = (steps[None, :] <= ks[:, None]).to(attn.dtype)
    cache = DynamicCache(config=text.config)

    with timer("vision"):
        # (3, B, L) M-RoPE positions; 0 on padding. Never stored on the module.
        pos, _ = vl.get_rope_index(ids, batch.mm_token_type_ids, batch.image_grid_thw, attention_mask=attn)
        image = vl.get_image_features(batch.pixel_values, batch.image_grid_thw, return_dict=True)
    with timer("prefill"):
        out = vl(
            input_ids=ids,
            attention_mask=attn,
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
            mm_encoder_outputs={"image": image},
        )
    h = out.last_hidden_state[:, -1:]  # (B, 1, H) — left padding: last column is real for every row
    next_pos = pos.amax(dim=(0, 2)) + 1  # (B,) first position after the prefix

    latents = [h]
    for step in range(1, kmax + 1):
        with timer("latent"):
            p = (next_pos + step - 1).view(1, bsz, 1).expand(3, bsz, 1)
            h = text(
                inputs_embeds=h,
                attention_mask=mask[:, : plen + step],
                position_ids=p,
                past_key_values=cache,
                use_cache=True,
            ).last_hidden_state  # (B, 1, H)
            latents.append(h)
    lat = torch.cat(latents, dim=1)  # (B, Kmax+1, H)
    h_k = lat[torch.arange(bsz, device=ids.device), ks].unsqueeze(1)  # (B, 1, H): each sample's own h_K
    start = next_pos + ks  # (B,) position of the first fed answer token
    seen = plen + kmax

    if answer_ids is not None:
        return _teacher_forced(
            core, text, cache, mask, seen, h_k, start, lat, ks, answer_ids, answer_mask, timer
        )
    tokens = _greedy(core, text, cache, mask, seen, h_k, start, max_new_tokens, stop_ids, pad_id, timer)
    return LatentOutput(latents=lat, k=ks, tokens=tokens)


def _teacher_forced(core, text, cache, mask, seen, h_k, start, lat, ks, answer_ids, answer_mask, timer):
    """All answer tokens in one pass; the first is predicted from h_K (paper eq. 2)."""
    bsz, t = answer_ids.shape
    if answer_mask is None:
        answer_mask = torch.ones_like(answer_ids)
    with timer("decode"):
        logits = [core.lm_head(h_k)]  # (B, 1, V)
        if t > 1:
            mask[:, seen : seen + t - 1] = answer_mask[:, :-1]
            p = (
                (start[:, None] + torch.arange(t - 1, device=start.device)[None])
                .unsqueeze(0)
                .expand(3, -1, -1)
            )
            hid = text(
                inputs_embeds=text.embed_tokens(answer_ids[:, :-1]),  # (B, T-1, H)
                attention_mask=mask[:, : seen + t - 1],
                position_ids=p,
                past_key_values=cache,
                use_cache=True,
            ).last_hidden_state
            logits.append(core.lm_head(hid))
        logits = torch.cat(logits, dim=1)  # (B, T, V)
        labels = answer_ids.masked_fill(answer_mask == 0, -100)
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
    return LatentOutput(latents=lat, k=ks, logits=logits, loss=loss)


def _greedy(core, text, cache, mask, seen, h_k, start, max_new_tokens, stop_ids, pad_id, timer):
    """Greedy decoding with a stop set; finished rows feed `pad_id` and are ignored."""
    bsz = h_k.shape[0]
    stops = torch.tensor(list(stop_ids) or [-1], device=h_k.device)
    with timer("decode"):
        tok = core.lm_head(h_k[:, -1]).argmax(-1)  # (B,)
    done = torch.isin(tok, stops)
    out = [tok]
    for i in range(1, max_new_tokens):
        if bool(done.all()):
            break
        with timer("decode"):
            p = (start + i - 1).view(1, bsz, 1).expand(3, bsz, 1)
            hid = text(
                inputs_embeds=text.embed_tokens(tok[:, None]),
                attention_mask=mask[:, : seen + i],
                position_ids=p,
                past_key_values=cache,
                use_cache=True,
            ).last_hidden_state
            tok = core.lm_head(hid[:, -1]).argmax(-1)
            tok = torch.where(done, torch.full_like(tok, pad_id), tok)
            done = done | torch.isin(tok, stops)
            out.append(tok)
    seqs = torch.stack(out, dim=1).tolist()  # (B, T)
    stop_set = set(stop_ids)
    result = []
    for row in seqs:
        cut = next((j for j, t in enumerate(row) if t in stop_set), len(row))
        result.append(row[:cut])
    return result
