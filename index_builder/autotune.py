"""Auto-tuning of the two-stage patch index: the cheapest (nprobe, candidate count) reaching a recall.

Ground truth is an exact scan of the on-disk vector store for held-out queries. For each nprobe the
resident index is searched once with the largest candidate count; the top-C prefix of that list is the
top-C list, so every candidate count C is scored from the same search (re-ranked exactly, strict
10-recall@10). Among the settings that reach the target, the one with the lowest measured /explain
latency (K = 4 queries) wins; when none does, the most accurate one is kept and `reached` is False.
The result is saved in index.json (`PatchIndex.save`) and applied on load.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import faiss
import numpy as np

from index_builder.vector_store import VectorStore, exact_topk

log = logging.getLogger(__name__)

CANDIDATES = (16, 32, 64, 128, 256, 512, 1024)
"""Candidate counts tried (capped at the corpus size)."""
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""nprobe values tried for IVF indexes (capped at nlist)."""


@dataclass
class TuneResult:
    """The chosen search parameters and the recall table they were chosen from."""

    nprobe: int
    k_candidates: int
    recall: float
    """Strict recall@k of the chosen setting on the tuning queries."""
    target: float
    k: int
    n_queries: int
    reached: bool
    explain_ms: float
    """Median latency of one K = 4 search at the chosen setting on the tuning machine."""
    table: list[dict] = field(default_factory=list)
    """Every (nprobe, k_candidates, recall) tried."""

    def to_dict(self) -> dict:
        """JSON-ready form (stored in index.json under "tuning")."""
        return asdict(self)


def block_mean_queries(store: VectorStore, grid: int, n: int, seed: int = 0) -> np.ndarray:
    """n held-out-like queries [n, D]: means of a random 2x2 patch block of a random indexed image.

    /explain queries are VP(h_k) outputs, which regress ROI means of patches; a block mean is the
    smallest such mean. Vector ids are image-major (id = image * G^2 + row * G + col).
    """
    per_img = grid * grid
    n_img = len(store) // per_img
    rng = np.random.default_rng(seed)
    side = 2 if grid >= 2 else 1
    img = rng.integers(0, n_img, n)
    r, c = rng.integers(0, grid - side + 1, n), rng.integers(0, grid - side + 1, n)
    out = np.empty((n, store.dim), np.float32)
    for i in range(n):
        ids = [img[i] * per_img + (r[i] + a) * grid + c[i] + b for a in range(side) for b in range(side)]
        out[i] = store.gather(np.array(ids, np.int64)).mean(0)
    faiss.normalize_L2(out)
    return out


def strict_recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean |found[:, :k] ∩ truth[:, :k]| / k (the strict k-recall@k)."""
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth, strict=True)]))


def _prefix_recalls(
    queries: np.ndarray, cand: np.ndarray, store: VectorStore, truth: np.ndarray, counts, k: int
) -> list[float]:
    """Recall after exact re-ranking of each top-C prefix of the candidate lists, for C in counts."""
    hits = np.zeros(len(counts))
    for qi in range(len(queries)):
        ids = cand[qi]
        valid = ids >= 0
        order = np.argsort(ids[valid])
        vecs = store.gather(ids[valid][order])  # (c, D)
        sims = np.full(len(ids), -np.inf, np.float32)
        sims[np.flatnonzero(valid)[order]] = np.einsum("cd,d->c", vecs, queries[qi])  # no BLAS threads
        want = set(truth[qi, :k].tolist())
        for j, c in enumerate(counts):
            top = ids[np.argsort(-sims[:c], kind="stable")[:k]]
            hits[j] += len(want & set(top.tolist())) / k
    return (hits / len(queries)).tolist()


def _explain_ms(index, queries: np.ndarray, k: int, reps: int = 15) -> float:
    times = []
    for i in range(reps):
        q = queries[(4 * i) % max(1, len(queries) - 4) :][:4]  # (4, D): one /explain call
        t = time.perf_counter()
        index.search_arrays(q, k)
        times.append(time.perf_counter() - t)
    return 1000.0 * float(np.median(times))


def tune(
    index,  # a PatchIndex with a vector store
    queries: np.ndarray,
    target_recall: float = 0.95,
    k: int = 10,
    candidates=CANDIDATES,
    nprobes=NPROBES,
) -> TuneResult:
    """Choose and apply (nprobe, k_candidates) for `index` on held-out unit queries [Q, D]."""
    store = index.store
    if store is None:
        raise ValueError("auto-tuning needs an index with a vector store (two-stage)")
    q = np.ascontiguousarray(queries, dtype=np.float32)  # (Q, D)
    truth = exact_topk(store, q, k)[1]  # (Q, k)
    counts = sorted({min(max(c, k), len(store)) for c in candidates})
    ivf = faiss.try_extract_index_ivf(index.index)
    probes = sorted({min(p, ivf.nlist) for p in nprobes}) if ivf is not None else [index.nprobe]
    table, best_per_probe = [], []
    for p in probes:
        index.set_nprobe(p)
        _, cand = index.index.search(q, counts[-1])  # (Q, Cmax): resident stage only
        recalls = _prefix_recalls(q, cand, store, truth, counts, k)
        rows = [{"nprobe": p, "k_candidates": c, "recall": r} for c, r in zip(counts, recalls, strict=True)]
        table += rows
        ok = [r for r in rows if r["recall"] >= target_recall]
        best_per_probe.append(ok[0] if ok else rows[-1])
        log.info("tune nprobe=%d: recall %s", p, " ".join(f"{c}:{r:.3f}" for c, r in zip(counts, recalls)))
        prev = best_per_probe[-2] if len(best_per_probe) > 1 else None
        if ok and (
            ok[0]["k_candidates"] == counts[0]
            or (prev and prev["recall"] >= target_recall and prev["k_candidates"] == ok[0]["k_candidates"])
        ):
            break  # more lists no longer lower the candidate count needed
    feasible = [r for r in best_per_probe if r["recall"] >= target_recall]
    timed = []
    for r in feasible or [max(best_per_probe, key=lambda r: r["recall"])]:
        index.set_nprobe(r["nprobe"])
        index.k_candidates = r["k_candidates"]
        timed.append((_explain_ms(index, q, k), r))
    ms, pick = min(timed, key=lambda t: t[0])
    index.set_nprobe(pick["nprobe"])
    index.k_candidates = pick["k_candidates"]
    result = TuneResult(
        nprobe=pick["nprobe"],
        k_candidates=pick["k_candidates"],
        recall=pick["recall"],
        target=target_recall,
        k=k,
        n_queries=len(q),
        reached=bool(feasible),
        explain_ms=ms,
        table=table,
    )
    index.tuning = result.to_dict()
    return result
