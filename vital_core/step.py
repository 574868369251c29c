"""The one step function: embeddings in, last hidden state out, on a KV cache.

A latent step (`inputs_embeds = h_{k-1}`) and a decode step (`inputs_embeds = embed(token)`) are the
same call. Training runs it on a `DynamicCache` with autograd; serving runs it on the preallocated
static cache of `vital_core.static_cache` (optionally inside a CUDA graph). Positions are always
explicit 3-D M-RoPE positions, never the module's `rope_deltas` state.
"""

from __future__ import annotations

import torch
from transformers import Cache


def step(
    text: torch.nn.Module,
    embeds: torch.Tensor,
    positions: torch.Tensor,
    mask: torch.Tensor,
    cache: Cache,
) -> torch.Tensor:
    """One forward of the language model on `cache`, returning the last layer's (normed) hidden states.

    Args:
        text: the Qwen3-VL text model (`core.model.language_model`).
        embeds: (B, T, H) input embeddings (T = 1 for latent and decode steps).
        positions: (3, B, T) M-RoPE positions.
        mask: (B, seen + T) 2-D padding mask (dynamic cache), or a prepared (B, 1, T, S) 4-D mask
            (static cache: `step_mask`).
        cache: the KV cache the step appends to.
    """
    return text(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
    ).last_hidden_state  # (B, T, H)


def positions3(pos: torch.Tensor) -> torch.Tensor:
    """(B,) or (B, T) text positions → (3, B, T) M-RoPE positions (text tokens share all three axes)."""
    if pos.ndim == 1:
        pos = pos[:, None]
    return pos.unsqueeze(0).expand(3, -1, -1)


def step_mask(
    mask2d: torch.Tensor, col: torch.Tensor, attn_implementation: str, dtype: torch.dtype
) -> torch.Tensor:
    """The 4-D mask of one single-position step on a static cache, built on the device (no host sync).

    Args:
        mask2d: (B, S) padding mask over every cache column (latent columns past a sample's K are 0).
        col: () long tensor, the cache column this step writes; later columns are not yet valid.
        attn_implementation: "sdpa" (boolean mask) or "eager" (additive float mask).
        dtype: the model's compute dtype (eager masks).
    """
    s = mask2d.shape[1]
    valid = mask2d.bool() & (torch.arange(s, device=mask2d.device) <= col)  # (B, S)
    valid = valid[:, None, None, :]  # (B, 1, 1, S)
    if attn_implementation == "sdpa":
        return valid
    zero = torch.zeros((), dtype=dtype, device=mask2d.device)
    return torch.where(valid, zero, torch.finfo(dtype).min)
