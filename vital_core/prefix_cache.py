"""Prefix cache: the KV of a prompt up to the end of its image, reused for the next question on it.

A radiologist asks several questions about one study. The chat prompt is
`<|im_start|>user\\n<|vision_start|>[image tokens]<|vision_end|>` + question + assistant header, so
everything up to `<|vision_end|>` depends on the image alone: the vision tower's output and the
DeepStack features enter the model only there, and their effect lives entirely in those tokens' KV.
One entry therefore holds that KV (it subsumes the vision features; the features themselves are
not needed again) plus the position where the question's text starts.

Keys: the image's content hash and a model key (bundle, dtype, device) — an entry never crosses
models. Entries live in an LRU bounded in bytes; an entry larger than the bound is not kept.
Thread-safe: lookups and inserts hold a lock.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import DynamicCache

from vital_core.prefill import Prefill, prefill
from vital_core.preprocess import PromptBatch
from vital_core.step import positions3, step
from vital_core.timing import null_timer


@dataclass
class PrefixEntry:
    """One image's prompt prefix (up to and including `<|vision_end|>`) on the model's device."""

    ids: torch.Tensor  # (P,) long: the prefix tokens (checked on reuse)
    keys: list[torch.Tensor]  # per layer (kv_heads, P, head_dim)
    values: list[torch.Tensor]  # per layer (kv_heads, P, head_dim)
    next_pos: int  # M-RoPE position of the first token after the image

    @property
    def nbytes(self) -> int:
        """Device bytes held by the entry."""
        tensors = [self.ids, *self.keys, *self.values]
        return sum(t.numel() * t.element_size() for t in tensors)


def image_key(image: Image.Image, model_key: str = "") -> str:
    """Content hash of a decoded image (mode, size, pixels) under a model key."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{model_key}|{image.mode}|{image.size}|".encode())
    h.update(image.tobytes())
    return h.hexdigest()


class PrefixCache:
    """LRU of `PrefixEntry`, bounded in bytes.

    Args:
        max_bytes: upper bound on the bytes held by all entries (0 disables storing).
        model_key: identifies the model; part of every key made by `key`.
    """

    def __init__(self, max_bytes: int, model_key: str = ""):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.model_key = model_key
        self.hits = 0
        self.misses = 0
        self.bytes = 0
        self._entries: OrderedDict[str, PrefixEntry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def key(self, image: Image.Image) -> str:
        """This cache's key for an image."""
        return image_key(image, self.model_key)

    def get(self, key: str) -> PrefixEntry | None:
        """The entry for `key` (now most recently used), or None; counts a hit or a miss."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: str, entry: PrefixEntry) -> None:
        """Insert (or refresh) an entry, evicting least recently used ones beyond `max_bytes`."""
        size = entry.nbytes
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old.nbytes
            if size > self.max_bytes:
                return
            while self._entries and self.bytes + size > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= evicted.nbytes
            self._entries[key] = entry
            self.bytes += size

    def clear(self) -> None:
        """Drop every entry (counters stay)."""
        with self._lock:
            self._entries.clear()
            self.bytes = 0


def prefix_lengths(batch: PromptBatch) -> tuple[list[int], list[int]]:
    """Per row: left padding, and prefix length up to and including `<|vision_end|>`."""
    pad = (batch.attention_mask == 0).sum(1).tolist()
    mm = batch.mm_token_type_ids.bool()
    width = mm.shape[1]
    last_image = (width - 1 - mm.flip(1).int().argmax(1)).tolist()  # index of the last image token
    return pad, [li + 2 - p for li, p in zip(last_image, pad)]  # +1 → vision_end, +1 → length


def _sub_batch(batch: PromptBatch, rows: list[int], pad: list[int], plen: list[int]) -> PromptBatch:
    """The image prefixes of `rows` as their own left-padded batch (pixels sliced per image)."""
    n_patch = batch.image_grid_thw.prod(-1).tolist()
    starts = [sum(n_patch[:i]) for i in range(len(n_patch))]
    width = max(plen[r] for r in rows)
    dev = batch.input_ids.device
    ids = torch.zeros(len(rows), width, dtype=batch.input_ids.dtype, device=dev)
    attn = torch.zeros(len(rows), width, dtype=batch.attention_mask.dtype, device=dev)
    mm = torch.zeros(len(rows), width, dtype=batch.mm_token_type_ids.dtype, device=dev)
    for j, r in enumerate(rows):
        src = slice(pad[r], pad[r] + plen[r])
        ids[j, width - plen[r] :] = batch.input_ids[r, src]
        attn[j, width - plen[r] :] = 1
        mm[j, width - plen[r] :] = batch.mm_token_type_ids[r, src]
    pixels = torch.cat([batch.pixel_values[starts[r] : starts[r] + n_patch[r]] for r in rows])
    return PromptBatch(ids, attn, mm, pixels, batch.image_grid_thw[rows])


def _compute_entries(vl, batch, rows, pad, plen, timer) -> list[PrefixEntry]:
    """Prefill the image prefixes of `rows` in one batch; one entry per row, padding stripped."""
    sub = _sub_batch(batch, rows, pad, plen)
    pre = prefill(vl, sub, timer)
    width = sub.input_ids.shape[1]
    entries = []
    for j, r in enumerate(rows):
        cut = width - plen[r]
        entries.append(
            PrefixEntry(
                ids=sub.input_ids[j, cut:].clone(),
                keys=[layer.keys[j, :, cut:].clone() for layer in pre.cache.layers],
                values=[layer.values[j, :, cut:].clone() for layer in pre.cache.layers],
                next_pos=int(pre.next_pos[j]),
            )
        )
    return entries


def prefill_cached(
    vl: torch.nn.Module,
    batch: PromptBatch,
    pcache: PrefixCache,
    keys: Sequence[str],
    timer: Callable = null_timer,
) -> Prefill:
    """Prefill with image prefixes from `pcache` (computed once per missing image, then stored).

    Rows are laid out as [image prefix, right-aligned to the longest][question, right-aligned], the
    gaps masked; positions are explicit, so each row equals its own unpadded computation.
    """
    if len(keys) != len(batch):
        raise ValueError(f"need one image key per row, got {len(keys)} for {len(batch)} rows")
    pad, plen = prefix_lengths(batch)
    entries: dict[str, PrefixEntry] = {}
    hits = []
    first_row: dict[str, int] = {}
    for r, key in enumerate(keys):
        if key in entries or key in first_row:
            hits.append(True)  # a repeat within the batch shares the one prefix
            continue
        entry = pcache.get(key)
        own = batch.input_ids[r, pad[r] : pad[r] + plen[r]]
        if entry is not None and entry.ids.shape == own.shape and torch.equal(entry.ids, own):
            entries[key] = entry
        hits.append(key in entries)
        if key not in entries:
            first_row[key] = r
    if first_row:
        computed = _compute_entries(vl, batch, list(first_row.values()), pad, plen, timer)
        for key, entry in zip(first_row, computed):
            entries[key] = entry
            pcache.put(key, entry)
    with timer("prefill"):
        return _suffix(vl.language_model, batch, [entries[k] for k in keys], pad, plen, hits)


def _suffix(text, batch, rows: list[PrefixEntry], pad, plen, hits) -> Prefill:
    """Load the prefixes into one cache and run the question tokens on it."""
    ids = batch.input_ids
    bsz, width = ids.shape
    slen = [width - p - q for p, q in zip(pad, plen)]
    pw, sw = max(plen), max(slen)
    dev = ids.device
    cache = DynamicCache(config=text.config)
    for layer in range(len(rows[0].keys)):
        k0 = rows[0].keys[layer]
        kk = k0.new_zeros(bsz, k0.shape[0], pw, k0.shape[2])  # (B, kv_heads, Pw, head_dim)
        vv = torch.zeros_like(kk)
        for i, e in enumerate(rows):
            kk[i, :, pw - plen[i] :] = e.keys[layer]
            vv[i, :, pw - plen[i] :] = e.values[layer]
        cache.update(kk, vv, layer)
    mask = torch.zeros(bsz, pw + sw, dtype=batch.attention_mask.dtype, device=dev)
    sids = torch.zeros(bsz, sw, dtype=ids.dtype, device=dev)
    spos = torch.zeros(bsz, sw, dtype=torch.long, device=dev)
    for i, e in enumerate(rows):
        mask[i, pw - plen[i] : pw] = 1
        mask[i, pw + sw - slen[i] :] = 1
        sids[i, sw - slen[i] :] = ids[i, width - slen[i] :]
        spos[i, sw - slen[i] :] = torch.arange(e.next_pos, e.next_pos + slen[i], device=dev)
    hid = step(text, text.embed_tokens(sids), positions3(spos), mask, cache)  # (B, Sw, H)
    next_pos = spos[:, -1] + 1  # (B,)
    return Prefill(cache=cache, mask=mask, h0=hid[:, -1:], next_pos=next_pos, hits=hits)
