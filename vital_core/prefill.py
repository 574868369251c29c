"""The prefix pass: image + prompt → KV cache, h_0 and where the latent steps start.

Images go in here and only here (Qwen3-VL's DeepStack features are injected in this call). The
result is a `Prefill`, whichever way it was made: one full forward (`prefill`), or the image part
from `vital_core.prefix_cache` and only the question's tokens computed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from vital_core.preprocess import PromptBatch
from vital_core.timing import null_timer


@dataclass
class Prefill:
    """A batch's prefix on a cache; columns are aligned across rows (padding masked)."""

    cache: DynamicCache  # (B, kv_heads, L, head_dim) per layer
    mask: torch.Tensor  # (B, L) 1 on real tokens
    h0: torch.Tensor  # (B, 1, H) last hidden state of the prompt
    next_pos: torch.Tensor  # (B,) long, the first M-RoPE position after the prompt
    hits: list[bool] | None = None  # per row: prefix from the prefix cache (None: cache not used)


def prefill(vl: torch.nn.Module, batch: PromptBatch, timer: Callable = null_timer) -> Prefill:
    """One forward over the left-padded prompts, images included; positions never stored on the module."""
    ids, attn = batch.input_ids, batch.attention_mask
    cache = DynamicCache(config=vl.language_model.config)
    with timer("vision"):
        # (3, B, L) M-RoPE positions; 0 on padding.
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
    h0 = out.last_hidden_state[:, -1:]  # (B, 1, H) — left padding: last column is real for every row
    return Prefill(cache=cache, mask=attn, h0=h0, next_pos=pos.amax(dim=(0, 2)) + 1)
