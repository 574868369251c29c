"""Serving's static KV cache: preallocated per (batch bucket, length bucket), one step function.

The prefix is prefilled eagerly (variable shapes, images) on a `DynamicCache`; `StaticRunner.open`
copies it into a preallocated `StaticCache` of the bucket that fits, and every latent and decode step
then runs `vital_core.step.step` on fixed-shape buffers: embeddings, positions and the 2-D mask are
copied into them, the cache's write column is a device tensor, and the 4-D mask is built on the
device. Nothing in a step depends on a host value, so on CUDA each bucket's step is captured once
as a CUDA graph and replayed (`mode="graphs"`), or handed to `torch.compile` (`mode="compile"`).

The runner owns its buffers: one request batch uses it at a time (a lock), which is how the
server's single model thread runs anyway.

Buckets are bounded by count (`max_buckets`) and by bytes (`max_bytes`, the server's
`VITAL_STATIC_CACHE_BYTES`; default a quarter of the device's free memory when the runner is made, or of
the available RAM on CPU): the least recently used bucket goes first. A batch whose bucket alone is
larger than `max_bytes` is not given one (`fits` is False) and runs on the dynamic cache instead.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import DynamicCache, StaticCache

from vital_core.step import step, step_mask

log = logging.getLogger("vital.static_cache")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MODES = ("eager", "graphs", "compile")
DEFAULT_MEMORY_FRACTION = 0.25
"""Default byte cap: this share of the device's free memory (CPU: available RAM) when the runner is made.
The rest stays for the prefill's dynamic cache, activations, the prefix cache and /explain's modules."""


def available_bytes(device: torch.device) -> int:
    """Free memory on `device`: CUDA's free bytes, or the host's available RAM (MemAvailable) on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def default_max_bytes(device: torch.device) -> int:
    """The default bucket byte cap on `device` (DEFAULT_MEMORY_FRACTION of its free memory now)."""
    return int(DEFAULT_MEMORY_FRACTION * available_bytes(device))


@dataclass
class _Bucket:
    """Fixed-shape buffers of one (batch, length) bucket."""

    batch: int
    length: int
    cache: StaticCache
    embeds: torch.Tensor  # (b, 1, H)
    pos: torch.Tensor  # (3, b, 1) long
    mask2d: torch.Tensor  # (b, S) long
    out: torch.Tensor | None = None  # (b, 1, H) graph output
    graph: object | None = None  # torch.cuda.CUDAGraph

    @property
    def nbytes(self) -> int:
        """Bytes of the bucket's preallocated tensors (the KV cache dominates)."""
        kv = sum(t.nbytes for layer in self.cache.layers for t in (layer.keys, layer.values))
        io = [self.embeds, self.pos, self.mask2d, *([self.out] if self.out is not None else [])]
        return kv + sum(t.nbytes for t in io)


class StaticRunner:
    """Static-cache steps for one model: buckets of preallocated caches, eager / CUDA graphs / compiled.

    Args:
        core: the Qwen3-VL model (merged weights; inference only).
        mode: "eager", "graphs" (CUDA only; eager elsewhere) or "compile" (`torch.compile`).
        length_multiple: the shortest cache length; longer ones double from it, so few buckets
            cover every prompt and answer length (masked columns cost little next to the weights).
        max_buckets: buckets kept (least recently used dropped beyond).
        max_bytes: bytes the buckets may hold together (least recently used dropped beyond; a bucket
            larger on its own is never made). Default: `default_max_bytes(device)`.
        stop_every: decode checks the stop condition on the host every this many tokens.
        compile_backend: `torch.compile` backend for mode "compile" (default: inductor; on CUDA
            with `mode="reduce-overhead"`, i.e. CUDA graphs).
    """

    def __init__(
        self,
        core: torch.nn.Module,
        *,
        mode: str = "eager",
        length_multiple: int = 64,
        max_buckets: int = 8,
        max_bytes: int | None = None,
        stop_every: int = 1,
        compile_backend: str | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"static cache mode must be one of {MODES}, got {mode!r}")
        if length_multiple < 1 or max_buckets < 1 or stop_every < 1:
            raise ValueError("length_multiple, max_buckets and stop_every must be >= 1")
        self.core = core
        self.text = core.model.language_model
        self.device = core.lm_head.weight.device
        self.dtype = core.lm_head.weight.dtype
        self.graphs = mode == "graphs" and self.device.type == "cuda"
        self.mode = "graphs" if self.graphs else ("compile" if mode == "compile" else "eager")
        self.length_multiple = length_multiple
        self.max_buckets = max_buckets
        self.max_bytes = default_max_bytes(self.device) if max_bytes is None else max_bytes
        if self.max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        self.stop_every = stop_every
        cfg = self.text.config
        self._heads = cfg.num_key_value_heads
        self._head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self._attn = cfg._attn_implementation
        self._layers = len(self.text.layers)
        self._buckets: OrderedDict[tuple[int, int], _Bucket] = OrderedDict()
        self._too_big: set[tuple[int, int]] = set()  # shapes already reported as over the cap
        self._lock = threading.Lock()
        self._fn = self._eager
        if self.mode == "compile":
            kw = {"mode": "reduce-overhead"} if self.device.type == "cuda" and not compile_backend else {}
            if compile_backend:
                kw["backend"] = compile_backend
            self._fn = torch.compile(self._eager, dynamic=False, **kw)

    # -- buckets ---------------------------------------------------------------------------------
    def bucket_shape(self, batch: int, length: int) -> tuple[int, int]:
        """The (batch, cache length) bucket serving `batch` rows and `length` cache columns."""
        b = next((x for x in BATCH_BUCKETS if x >= batch), batch)
        s = self.length_multiple
        while s < length:  # powers of two above the minimum: few buckets whatever max_new_tokens asks
            s *= 2
        return b, s

    def bucket_bytes(self, batch: int, length: int) -> int:
        """Bytes the bucket for (`batch` rows, `length` columns) preallocates (`_Bucket.nbytes`)."""
        b, s = self.bucket_shape(batch, length)
        item = torch.empty((), dtype=self.dtype).element_size()
        kv = 2 * self._layers * b * self._heads * s * self._head_dim * item  # keys + values, every layer
        hidden = self.text.config.hidden_size
        io = b * hidden * item * (2 if self.graphs else 1) + 3 * b * 8 + b * s * 8  # embeds (+out), pos, mask
        return kv + io

    @property
    def nbytes(self) -> int:
        """Bytes held by the buckets now."""
        return sum(b.nbytes for b in self._buckets.values())

    def fits(self, batch: int, length: int) -> bool:
        """Whether a batch of this shape gets a bucket (else the caller runs it on the dynamic cache)."""
        need = self.bucket_bytes(batch, length)
        if need <= self.max_bytes:
            return True
        key = self.bucket_shape(batch, length)
        if key not in self._too_big:
            self._too_big.add(key)
            log.warning(
                "static-cache bucket %s needs %d bytes, over the cap of %d: such batches run on the "
                "dynamic cache",
                key,
                need,
                self.max_bytes,
            )
        return False

    def _bucket(self, batch: int, length: int) -> _Bucket:
        key = self.bucket_shape(batch, length)
        if key in self._buckets:
            self._buckets.move_to_end(key)
            return self._buckets[key]
        need = self.bucket_bytes(batch, length)
        if need > self.max_bytes:
            raise ValueError(f"bucket {key} needs {need} bytes, over max_bytes={self.max_bytes}")
        while self._buckets and (
            len(self._buckets) >= self.max_buckets or self.nbytes + need > self.max_bytes
        ):
            self._buckets.popitem(last=False)  # least recently used first
        b, s = key
        cache = StaticCache(config=self.text.config, max_cache_len=s)
        cache.early_initialization(b, self._heads, self._head_dim, self.dtype, self.device)
        hidden = self.text.config.hidden_size
        bucket = _Bucket(
            batch=b,
            length=s,
            cache=cache,
            embeds=torch.zeros(b, 1, hidden, dtype=self.dtype, device=self.device),
            pos=torch.zeros(3, b, 1, dtype=torch.long, device=self.device),
            mask2d=torch.ones(b, s, dtype=torch.long, device=self.device),
        )
        if self.graphs:
            self._capture(bucket)
        self._buckets[key] = bucket
        return bucket

    def _eager(self, embeds, pos, mask2d, cache) -> torch.Tensor:
        col = cache.layers[0].cumulative_length  # () long on the device: the column this step writes
        mask = step_mask(mask2d, col, self._attn, self.dtype)  # (b, 1, 1, S)
        return step(self.text, embeds, pos, mask, cache)  # (b, 1, H)

    def _capture(self, bucket: _Bucket) -> None:
        """Record the bucket's step as a CUDA graph (warm-up on a side stream first, as CUDA requires)."""
        args = (bucket.embeds, bucket.pos, bucket.mask2d, bucket.cache)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._eager(*args)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            bucket.out = self._eager(*args)
        bucket.graph = graph

    # -- one request batch -----------------------------------------------------------------------
    @contextmanager
    def open(self, cache: DynamicCache, mask: torch.Tensor) -> Iterator[StaticSequence]:
        """Take the bucket for this batch, load the prefilled `cache`, and yield its step runner.

        Args:
            cache: the prefilled dynamic cache, (B, kv_heads, L, head_dim) per layer.
            mask: (B, S_needed) 2-D mask over every column the request will use (prefix, latents,
                answer), S_needed ≥ L.
        """
        bsz, need = mask.shape
        with self._lock, torch.inference_mode():
            bucket = self._bucket(bsz, need)
            seen = cache.get_seq_length()
            for src, dst in zip(cache.layers, bucket.cache.layers):
                dst.keys[:bsz, :, :seen].copy_(src.keys)  # (B, kv_heads, L, head_dim)
                dst.values[:bsz, :, :seen].copy_(src.values)
                dst.cumulative_length.fill_(seen)
            bucket.mask2d.fill_(1)  # padding rows of the bucket attend to anything finite
            bucket.mask2d[:bsz].zero_()
            bucket.mask2d[:bsz, :need].copy_(mask)
            yield StaticSequence(self, bucket, bsz)


class StaticSequence:
    """Single-position steps of one request batch on its bucket (same interface as the dynamic one)."""

    def __init__(self, runner: StaticRunner, bucket: _Bucket, batch: int):
        self.runner = runner
        self.bucket = bucket
        self.batch = batch
        self.stop_every = runner.stop_every

    def step(self, embeds: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """(B, 1, H) embeddings at (B,) positions → (B, 1, H) last hidden state."""
        bk, n = self.bucket, self.batch
        with torch.inference_mode():
            bk.embeds[:n].copy_(embeds)
            bk.pos[:, :n, 0].copy_(pos)
            if bk.graph is not None:
                bk.graph.replay()
                out = bk.out
            else:
                out = self.runner._fn(bk.embeds, bk.pos, bk.mask2d, bk.cache)
            return out[:n].clone()
