"""The ROI feature store: sharded safetensors files plus a JSON manifest, built resumably and in parallel.

Layout of a store directory:

    manifest.json                 spec + fingerprint, shard list with the keys (sample ids) of each shard,
                                  skipped samples with the reason; written last, by rank 0
    shard-00000.safetensors       features [n, D] f32, top_pos [n, k, 2] i16, top_scores [n, k] f32,
    shard-00001.safetensors       pathway [n] u8 (0 full, 1 crop), mask_ratio [n] f32, n_pooled [n] i32;
    ...                           metadata: keys, planned ids, skipped, fingerprint

Shard i holds manifest rows [i*S, (i+1)*S) and is built by rank i % world. Every file is written to a
temporary name and moved into place with os.replace, so a shard either exists complete or not at all;
a re-run skips shards whose planned ids and fingerprint match, and recomputes the others.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from index_builder.encoder import PatchEncoderLike
from index_builder.roi import ROIError, ROIParams, ROIResult, extract_rois, plan_roi
from index_builder.samples import SampleError, SampleRef, load_image, load_mask

if TYPE_CHECKING:
    from tqdm import tqdm

log = logging.getLogger(__name__)

STORE_VERSION = 1
PATHWAY_CODE = {"full": 0, "crop": 1}


class StoreError(RuntimeError):
    """A feature store that is missing, incomplete or asked for a key it does not hold."""


def shard_name(i: int) -> str:
    """File name of shard i."""
    return f"shard-{i:05d}.safetensors"


def fingerprint(spec: dict) -> str:
    """Short stable hash of everything that determines the features (encoder, ROI params)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _atomic_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def write_shard(
    path: Path,
    planned: Sequence[str],
    results: dict[str, ROIResult],
    skipped: dict[str, str],
    fp: str,
    dim: int,
    k: int,
) -> None:
    """Write one shard atomically (tmp file + os.replace); rows follow `planned` minus skipped ids."""
    keys = [sid for sid in planned if sid in results]
    rs = [results[s] for s in keys]
    tensors = {
        "features": np.stack([r.feature for r in rs]) if rs else np.zeros((0, dim), np.float32),  # (n, D)
        "top_pos": np.stack([r.top_pos for r in rs]) if rs else np.zeros((0, k, 2), np.int16),  # (n, k, 2)
        "top_scores": np.stack([r.top_scores for r in rs]) if rs else np.zeros((0, k), np.float32),  # (n, k)
        "pathway": np.array([PATHWAY_CODE[r.pathway] for r in rs], dtype=np.uint8),  # (n,)
        "mask_ratio": np.array([r.mask_ratio for r in rs], dtype=np.float32),  # (n,)
        "n_pooled": np.array([r.n_pooled for r in rs], dtype=np.int32),  # (n,)
    }
    meta = {
        "keys": json.dumps(keys),
        "planned": json.dumps(list(planned)),
        "skipped": json.dumps(skipped),
        "fingerprint": fp,
        "version": str(STORE_VERSION),
    }
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def shard_metadata(path: Path) -> dict[str, str] | None:
    """A shard's metadata, or None when the file is missing or unreadable."""
    try:
        with safe_open(str(path), framework="numpy") as fh:
            return fh.metadata() or {}
    except Exception:  # a torn or foreign file counts as not done
        return None


def shard_done(path: Path, planned: Sequence[str], fp: str) -> bool:
    """True when the shard exists, was planned for exactly these ids and has the same fingerprint."""
    meta = shard_metadata(path)
    return (
        bool(meta)
        and meta.get("fingerprint") == fp
        and json.loads(meta.get("planned", "null")) == list(planned)
    )


def extract_shard(
    encoder: PatchEncoderLike,
    refs: Sequence[SampleRef],
    params: ROIParams,
    batch_size: int,
    bar: tqdm | None = None,
) -> tuple[dict[str, ROIResult], dict[str, str]]:
    """ROI features for one shard's samples -> (results by id, skipped {id: reason})."""
    results: dict[str, ROIResult] = {}
    skipped: dict[str, str] = {}
    for start in range(0, len(refs), batch_size):
        plans, ids = [], []
        for ref in refs[start : start + batch_size]:
            try:
                if ref.mask is None:
                    raise SampleError("no mask given")
                plans.append(plan_roi(load_image(ref.image), load_mask(ref.mask), encoder.grid, params))
                ids.append(ref.id)
            except (ROIError, SampleError) as exc:
                log.warning("skipping %s: %s", ref.id, exc)
                skipped[ref.id] = str(exc)
        for sid, res in zip(ids, extract_rois(encoder, plans, params.top_k), strict=True):
            results[sid] = res
        if bar is not None:
            bar.update(min(batch_size, len(refs) - start))
    return results, skipped


@dataclass
class ExtractionReport:
    """What one rank did."""

    written: list[int]
    skipped_shards: list[int]
    manifest: Path | None


def extract_to_store(
    encoder: PatchEncoderLike,
    refs: Sequence[SampleRef],
    out_dir: str | Path,
    params: ROIParams,
    spec: dict,
    shard_size: int = 1000,
    rank: int = 0,
    world: int = 1,
    batch_size: int = 16,
    progress: bool = True,
    barrier: Callable[[], object] | None = None,
) -> ExtractionReport:
    """Build this rank's shards (shard i -> rank i % world), skip finished ones; rank 0 writes the manifest."""
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = {**spec, "roi": params.to_dict(), "version": STORE_VERSION}
    fp = fingerprint(spec)
    n_shards = (len(refs) + shard_size - 1) // shard_size
    mine = [i for i in range(n_shards) if i % world == rank]
    todo = [i for i in mine if not shard_done(out / shard_name(i), _ids(refs, i, shard_size), fp)]
    total = sum(len(refs[i * shard_size : (i + 1) * shard_size]) for i in todo)
    bar = tqdm(total=total, desc=f"roi[{rank}]", unit="img", disable=not progress or rank != 0)
    for i in todo:
        chunk = refs[i * shard_size : (i + 1) * shard_size]
        results, skipped = extract_shard(encoder, chunk, params, batch_size, bar)
        write_shard(
            out / shard_name(i),
            _ids(refs, i, shard_size),
            results,
            skipped,
            fp,
            encoder.hidden_size,
            params.top_k,
        )
    bar.close()
    if barrier is not None:
        barrier()
    manifest = (
        write_manifest(out, refs, shard_size, spec, fp, encoder.hidden_size, params.top_k)
        if rank == 0
        else None
    )
    return ExtractionReport(todo, sorted(set(mine) - set(todo)), manifest)


def _ids(refs: Sequence[SampleRef], i: int, shard_size: int) -> list[str]:
    return [r.id for r in refs[i * shard_size : (i + 1) * shard_size]]


def write_manifest(
    out: Path, refs: Sequence[SampleRef], shard_size: int, spec: dict, fp: str, dim: int, k: int
) -> Path:
    """Collect every shard's keys and skips into manifest.json; fails if a shard is missing or stale."""
    n_shards = (len(refs) + shard_size - 1) // shard_size
    shards, skipped, count = [], {}, 0
    for i in range(n_shards):
        meta = shard_metadata(out / shard_name(i))
        if (
            not meta
            or meta.get("fingerprint") != fp
            or json.loads(meta["planned"]) != _ids(refs, i, shard_size)
        ):
            raise StoreError(f"shard {shard_name(i)} is missing or stale; re-run the extraction")
        keys = json.loads(meta["keys"])
        skipped.update(json.loads(meta["skipped"]))
        shards.append({"file": shard_name(i), "keys": keys})
        count += len(keys)
    manifest = {
        "version": STORE_VERSION,
        "fingerprint": fp,
        "spec": spec,
        "dim": dim,
        "top_k": k,
        "shard_size": shard_size,
        "count": count,
        "skipped": skipped,
        "shards": shards,
    }
    _atomic_json(out / "manifest.json", manifest)
    return out / "manifest.json"


class FeatureStore:
    """Read access to a finished store: `load(key)` -> (feature [D], top-k positions [k, 2])."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        try:
            self.manifest = json.loads((self.root / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"{self.root} is not a finished feature store (manifest.json: {exc})") from exc
        self.dim = int(self.manifest["dim"])
        self._where: dict[str, tuple[int, int]] = {
            key: (s, row)
            for s, shard in enumerate(self.manifest["shards"])
            for row, key in enumerate(shard["keys"])
        }
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def keys(self) -> list[str]:
        """Sample ids in store order."""
        return list(self._where)

    @property
    def skipped(self) -> dict[str, str]:
        """Samples that were skipped at extraction, with the reason."""
        return dict(self.manifest["skipped"])

    def _shard(self, s: int) -> dict[str, np.ndarray]:
        if s not in self._cache:
            if len(self._cache) >= 8:  # keep a few shards in memory
                self._cache.pop(next(iter(self._cache)))
            path = self.root / self.manifest["shards"][s]["file"]
            with safe_open(str(path), framework="numpy") as fh:
                self._cache[s] = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
        return self._cache[s]

    def record(self, key: str) -> dict[str, np.ndarray]:
        """Every stored field of one sample (feature, top_pos, top_scores, pathway, mask_ratio, n_pooled)."""
        if key not in self._where:
            raise StoreError(f"key {key!r} is not in the store at {self.root}")
        s, row = self._where[key]
        return {name: arr[row] for name, arr in self._shard(s).items()} | {
            "feature": self._shard(s)["features"][row]
        }

    def load(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """The ROI feature [D] (unit norm) and its top-k grid positions [k, 2] (row, col) for a sample id."""
        rec = self.record(key)
        return rec["feature"], rec["top_pos"]

    def features(self) -> tuple[list[str], np.ndarray]:
        """All keys and their features stacked [N, D] (store order)."""
        feats = [self._shard(s)["features"] for s in range(len(self.manifest["shards"]))]
        return self.keys(), (np.concatenate(feats) if feats else np.zeros((0, self.dim), np.float32))
