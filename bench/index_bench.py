"""FAISS patch-index benchmark: recall@10 vs exact search, bytes/vector, build and /explain query time.

    python bench/index_bench.py --out bench/results            # 1M x 1152 (about 15 min on 2 cores)
    python bench/index_bench.py --n 100000 --out /tmp/bench    # quick look

Data: synthetic "patch-like" unit vectors. Real ViT patch features are strongly anisotropic (a few
hundred directions carry most of the energy) and patches of one image share an image-level component,
so each vector is  normalise( B^T (a*z_image + z_patch) + sigma*noise )  with B a random [r, D] basis,
z_patch drawn with a power-law spectrum over r latent directions, and isotropic noise in all D dims.
Queries are held-out vectors from the same distribution (like VP(h_k) outputs, which regress ROI
means of such patches). recall@10 = |top-10 returned ∩ exact top-10| / 10 (the strict 10-recall@10).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import faiss
import numpy as np

FACTORIES = ("IVF1024,PQ144x8", "IVF1024,PQ288x8", "IVF1024,PQ144x8,RFlat")
TARGET_VECTORS = 63_000_000  # 61,411 samples x 1,024 patches


def make_data(n: int, dim: int, rank: int, seed: int, patches_per_image: int = 1024) -> np.ndarray:
    """float32 [n, dim] unit vectors with image-level clusters and a decaying spectrum."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((rank, dim), dtype=np.float32) / np.sqrt(dim)  # (r, D)
    spectrum = (1.0 + np.arange(rank, dtype=np.float32)) ** -0.5  # (r,) power-law std per direction
    out = np.empty((n, dim), dtype=np.float32)
    chunk = 65536
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        n_img = max(1, m // patches_per_image)
        z_img = rng.standard_normal((n_img, rank), dtype=np.float32) * spectrum  # (n_img, r)
        owner = rng.integers(0, n_img, m)  # (m,)
        z = 0.8 * z_img[owner] + rng.standard_normal((m, rank), dtype=np.float32) * spectrum  # (m, r)
        x = z @ basis * float(np.sqrt(dim / rank)) + 0.02 * rng.standard_normal(
            (m, dim), dtype=np.float32
        )  # (m, D)
        x = np.ascontiguousarray(x, dtype=np.float32)
        faiss.normalize_L2(x)
        out[start : start + m] = x
    return out


def _no_polysemous(index: faiss.Index) -> None:
    """Polysemous training is unused by these searches and costs minutes at D=1152 (same as IndexBuilder)."""
    for part in (index, getattr(index, "base_index", None)):
        ivf = faiss.try_extract_index_ivf(part) if part is not None else None
        if ivf is not None and hasattr(faiss.downcast_index(ivf), "do_polysemous_training"):
            faiss.downcast_index(ivf).do_polysemous_training = False


def index_bytes(index: faiss.Index) -> int:
    """Serialised size of an index in bytes."""
    return int(faiss.serialize_index(index).size)


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean |found[:, :k] ∩ truth[:, :k]| / k."""
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth, strict=True)]))


def explain_query_ms(index: faiss.Index, queries: np.ndarray, k: int = 10, reps: int = 50) -> float:
    """Median latency (ms) of one /explain search: K=4 latent vectors at once."""
    times = []
    for i in range(reps):
        q = queries[(4 * i) % (len(queries) - 4) :][:4]  # (4, D)
        t = time.perf_counter()
        index.search(q, k)
        times.append(time.perf_counter() - t)
    return 1000.0 * float(np.median(times))


def bench_factory(
    factory: str, xb: np.ndarray, xq: np.ndarray, gt: np.ndarray, n_train: int, nprobes
) -> dict:
    """Train, add, then sweep nprobe; returns figures for one factory."""
    d = xb.shape[1]
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    _no_polysemous(index)
    t0 = time.perf_counter()
    index.train(xb[np.random.default_rng(1).choice(len(xb), n_train, replace=False)])
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    for start in range(0, len(xb), 131072):
        index.add(xb[start : start + 131072])
    t_add = time.perf_counter() - t0
    nbytes = index_bytes(index)
    space = faiss.ParameterSpace()
    sweep = []
    for nprobe in nprobes:
        space.set_index_parameter(index, "nprobe", nprobe)
        if "Refine" in factory or "RFlat" in factory:
            space.set_index_parameter(index, "k_factor", 4)
        t0 = time.perf_counter()
        _, ids = index.search(xq, 10)
        t_batch = time.perf_counter() - t0
        sweep.append(
            {
                "nprobe": nprobe,
                "recall_at_10": recall_at(ids, gt),
                "recall_1_at_10": float(np.mean([t[0] in f for f, t in zip(ids, gt, strict=True)])),
                "batch_search_ms_per_query": 1000.0 * t_batch / len(xq),
                "explain_query_ms": explain_query_ms(index, xq),
            }
        )
        print(f"  {factory} nprobe={nprobe}: recall@10={sweep[-1]['recall_at_10']:.4f}", flush=True)
    return {
        "factory": factory,
        "bytes_per_vector": nbytes / len(xb),
        "train_s": t_train,
        "add_s": t_add,
        "build_s": t_train + t_add,
        "n_train": n_train,
        "sweep": sweep,
    }


def machine() -> dict:
    """CPU model and core count of this machine."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "ram_gib": round(mem, 1),
        "python": platform.python_version(),
        "faiss": faiss.__version__,
    }


def markdown(res: dict) -> str:
    """A markdown report of the results."""
    m, n, d = res["machine"], res["n"], res["dim"]
    flat_b = 4 * d
    lines = [
        "# FAISS patch-index benchmark",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, faiss {m['faiss']} (CPU).",
        f"Corpus: {n:,} synthetic patch-like unit vectors, D={d} (latent rank {res['rank']}); "
        f"{res['n_queries']} held-out queries; exact ground truth by IndexFlatIP "
        f"(flat: {flat_b} B/vector, exact search {res['flat']['batch_search_ms_per_query']:.2f} ms/query batched, "
        f"one /explain query (K=4) {res['flat']['explain_query_ms']:.1f} ms).",
        "",
        "| factory | nprobe | recall@10 | 1-recall@10 | bytes/vector | vs flat | build s (train+add) "
        "| /explain query ms (K=4) | batched ms/query |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in res["factories"]:
        for s in f["sweep"]:
            lines.append(
                f"| `{f['factory']}` | {s['nprobe']} | {s['recall_at_10']:.4f} | {s['recall_1_at_10']:.3f} "
                f"| {f['bytes_per_vector']:.1f} | 1/{flat_b / f['bytes_per_vector']:.1f} "
                f"| {f['build_s']:.0f} ({f['train_s']:.0f}+{f['add_s']:.0f}) | {s['explain_query_ms']:.2f} "
                f"| {s['batch_search_ms_per_query']:.3f} |"
            )
    lines += [
        "",
        f"## Extrapolation to {TARGET_VECTORS / 1e6:.0f}M vectors (61,411 samples x 1,024 patches)",
        "",
    ]
    lines += ["| factory | index size GiB | build time (add scales linearly, train fixed) |", "|---|---|---|"]
    lines.append(f"| Flat | {flat_b * TARGET_VECTORS / 1024**3:.0f} | - |")
    for f in res["factories"]:
        size = f["bytes_per_vector"] * TARGET_VECTORS / 1024**3
        build = f["train_s"] + f["add_s"] * TARGET_VECTORS / n
        lines.append(f"| `{f['factory']}` | {size:.1f} | {build / 60:.0f} min on this CPU |")
    lines += ["", res.get("notes", "")]
    return "\n".join(lines) + "\n"


def main() -> int:
    """Run the benchmark and write index_bench.json + index_bench.md."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1152)
    ap.add_argument("--rank", type=int, default=256, help="latent rank of the synthetic data")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--n-train", type=int, default=65536)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--factories", nargs="+", default=list(FACTORIES))
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args()
    t_all = time.perf_counter()
    print(f"threads: {faiss.omp_get_max_threads()}", flush=True)
    t0 = time.perf_counter()
    data = make_data(args.n + args.queries, args.dim, args.rank, seed=0)
    xb, xq = data[: args.n], np.ascontiguousarray(data[args.n :])
    rng = np.random.default_rng(2)
    xq = np.ascontiguousarray(xq[rng.permutation(len(xq))])
    print(f"data {xb.shape} in {time.perf_counter() - t0:.0f}s", flush=True)
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(xb)
    t0 = time.perf_counter()
    _, gt = flat.search(xq, 10)
    flat_res = {
        "batch_search_ms_per_query": 1000 * (time.perf_counter() - t0) / len(xq),
        "explain_query_ms": explain_query_ms(flat, xq, reps=10),
    }
    print(f"ground truth in {time.perf_counter() - t0:.0f}s", flush=True)
    del flat
    results = []
    for factory in args.factories:
        results.append(bench_factory(factory, xb, xq, gt, min(args.n_train, args.n), args.nprobe))
        print(
            f"{factory}: {results[-1]['bytes_per_vector']:.1f} B/vec, build {results[-1]['build_s']:.0f}s",
            flush=True,
        )
    res = {
        "machine": machine(),
        "n": args.n,
        "dim": args.dim,
        "rank": args.rank,
        "n_queries": args.queries,
        "flat": flat_res,
        "factories": results,
        "total_s": time.perf_counter() - t_all,
        "notes": "Timings share 2 CPU cores; single runs, not averaged over repeats (query times are medians).",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "index_bench.json").write_text(json.dumps(res, indent=1))
    (args.out / "index_bench.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
