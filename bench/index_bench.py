"""Two-stage patch-index benchmark: recall vs exact search, resident / on-disk bytes, build and /explain time.

    nice python bench/index_bench.py --data synthetic --n 1000000 --out bench/results
    nice python bench/index_bench.py --data encoder --encoder bundles/vital-tiny/encoder \\
        --images data/phantom/manifest.jsonl --n 1000000 --out bench/results
    taskset -c 1 python bench/index_bench.py --arm explain --n 1000000 --out bench/results

`--arm explain` (bench/explain_search.py) times one /explain search — K = 4 queries, top 10 — on the 1M
synthetic index at a fixed (nprobe, candidates): the search before issue 27, per query, and batched,
interleaved in one run.

Two kinds of data (the report says which):
- `synthetic`: "patch-like" unit vectors, D = 1152 (MedSigLIP's width): normalise( B^T (a*z_image +
  z_patch) + sigma*noise ) with B a random [r, D] basis and a power-law spectrum over r latent
  directions. Queries are held-out vectors of the same distribution.
- `encoder`: patch features of a SigLIP vision tower (`--encoder`, a HF SiglipVisionModel folder, e.g.
  the bundle's encoder or the one issue 15 trains) over phantom images (`vital phantom`). The first
  n / G^2 images are indexed; queries are ROI means (mean of the patches a target mask covers, what
  the visual projector regresses) of the held-out images, so they are /explain-like and not in the index.
Each index variant is auto-tuned (index_builder.autotune) on one query set for a target recall and
evaluated on another. recall@10 = |top-10 returned ∩ exact top-10| / 10 (strict); recall@1 = top-1
returned is the exact top-1; 1-recall@10 = the exact top-1 is in the returned top 10.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import faiss
import numpy as np

from index_builder.autotune import strict_recall, tune
from index_builder.faiss_index import IndexBuilder

VARIANTS = ("IVF1024,PQ288x4fs", "IVF1024,PQ144x8")
TARGET_VECTORS = 62_884_864  # 61,411 samples x 1,024 patches
TARGET_DIM = 1152


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


def encoder_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, dict]:
    """(indexed grids [n_img, G, G, D], ROI-mean queries of held-out images [m, D], info)."""
    from dataclasses import replace

    from index_builder.encoder import load_encoder
    from index_builder.roi import grid_coverage
    from index_builder.samples import load_image, load_mask, read_manifest
    from vital_core.presets import tiny

    refs = read_manifest(args.images, require_mask=True)
    enc = load_encoder(replace(tiny().encoder, path=str(args.encoder)), device="cpu")
    g, d = enc.grid, enc.hidden_size
    n_img = -(-args.n // (g * g))
    if len(refs) <= n_img:
        raise SystemExit(f"need more than {n_img} images for {args.n} vectors + held-out queries")
    cache = args.work / f"features-{len(refs)}-{g}-{d}.npy"
    if not cache.exists():
        feats = np.lib.format.open_memmap(
            cache.with_suffix(".tmp.npy"), "w+", np.float32, (len(refs), g, g, d)
        )
        t0 = time.perf_counter()
        for s in range(0, len(refs), 64):
            feats[s : s + 64] = enc.encode([load_image(r.image) for r in refs[s : s + 64]]).numpy()
            print(
                f"  encoded {min(s + 64, len(refs))}/{len(refs)} images ({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
        feats.flush()
        os.replace(cache.with_suffix(".tmp.npy"), cache)
    feats = np.load(cache, mmap_mode="r")
    queries = []
    for i in range(n_img, len(refs)):
        cov, _ = grid_coverage(load_mask(refs[i].mask), g)
        cov = cov / max(cov.max(), 1e-9)  # cell coverage as a fraction of the best-covered cell
        q = np.asarray(feats[i], np.float32)[cov >= 0.3].mean(0)  # (D,)
        queries.append(q)
    q = np.stack(queries).astype(np.float32)
    faiss.normalize_L2(q)
    info = {"encoder": str(args.encoder), "images": str(args.images), "grid": g, "indexed_images": n_img}
    return np.asarray(feats[:n_img], np.float32), q, info


def cold_ms(index, queries: np.ndarray, k: int, reps: int = 10) -> float:
    """Median K=4 search latency with the store's pages evicted from the page cache before each call."""
    times = []
    fd = os.open(index.store.path, os.O_RDONLY)
    try:
        for i in range(reps):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            q = queries[4 * i : 4 * i + 4]
            t = time.perf_counter()
            index.search_arrays(q, k)
            times.append(time.perf_counter() - t)
    finally:
        os.close(fd)
    return 1000.0 * float(np.median(times))


def warm_ms(index, queries: np.ndarray, k: int, reps: int = 50) -> float:
    """Median latency of one /explain search (K = 4 queries at once), store pages cached."""
    times = []
    for i in range(reps):
        q = queries[(4 * i) % (len(queries) - 4) :][:4]  # (4, D)
        index.search_arrays(q, k)  # the same queries twice: the second call times warm pages
        t = time.perf_counter()
        index.search_arrays(q, k)
        times.append(time.perf_counter() - t)
    return 1000.0 * float(np.median(times))


def bench_variant(
    factory: str, grids: np.ndarray, tq: np.ndarray, eq: np.ndarray, gt: np.ndarray, args
) -> dict:
    """Build, auto-tune and evaluate one two-stage index."""
    n_img, g, _, d = grids.shape
    work = args.work / factory.replace(",", "_")
    shutil.rmtree(work, ignore_errors=True)
    b = IndexBuilder(factory, d, g, store_dir=work, store_dtype=args.store_dtype)
    flat = grids.reshape(-1, d)
    t0 = time.perf_counter()
    b.train(flat[np.random.default_rng(1).choice(len(flat), min(args.n_train, len(flat)), replace=False)])
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    step = max(1, 131072 // (g * g))
    for s in range(0, n_img, step):
        b.add_grids([f"i{i}" for i in range(s, min(n_img, s + step))], grids[s : s + step])
    index = b.finish()
    t_add = time.perf_counter() - t0
    t0 = time.perf_counter()
    tr = tune(index, tq, target_recall=args.target)
    t_tune = time.perf_counter() - t0
    _, ids = index.search_arrays(eq, 10)
    _, one = index.index.search(eq, 10)  # resident stage alone, same nprobe (what a one-stage index returns)
    n = len(index)
    res = {
        "factory": factory,
        "store": args.store_dtype,
        "nprobe": tr.nprobe,
        "k_candidates": tr.k_candidates,
        "tune_recall_at_10": tr.recall,
        "target_reached_on_tuning": tr.reached,
        "recall_at_1": float(np.mean(ids[:, 0] == gt[:, 0])),
        "recall_at_10": strict_recall(ids, gt, 10),
        "recall_1_at_10": float(np.mean([t[0] in f for f, t in zip(ids, gt, strict=True)])),
        "one_stage_recall_at_10": strict_recall(one, gt, 10),
        "resident_bytes_per_vector": index.resident_bytes() / n,
        "disk_bytes_per_vector": index.disk_bytes() / n,
        "train_s": t_train,
        "add_s": t_add,
        "tune_s": t_tune,
        "explain_ms_warm": warm_ms(index, eq, 10),
        "explain_ms_cold": cold_ms(index, eq, 10),
    }
    print(json.dumps({k: v for k, v in res.items()}), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return res


def machine() -> dict:
    """CPU model, cores, RAM and faiss version of this machine."""
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
        "faiss_gpus": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0,
    }


def extrapolate(v: dict, n: int, dim: int) -> dict:
    """63M-vector figures from one variant's per-vector bytes (scaled to D = 1152) and build times."""
    scale = TARGET_DIM / dim
    resident = v["resident_bytes_per_vector"] * scale * TARGET_VECTORS / 1024**3
    disk = v["disk_bytes_per_vector"] * scale * TARGET_VECTORS / 1024**3
    add_min = v["add_s"] * scale * TARGET_VECTORS / n / 60
    return {"resident_gib": resident, "disk_gib": disk, "add_min_cpu": add_min}


def markdown(res: dict) -> str:
    """A readable report of one run."""
    m, n, d = res["machine"], res["n"], res["dim"]
    lines = [
        f"# Two-stage patch index — {res['data']} features",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores (shared), {m['ram_gib']} GiB RAM, faiss {m['faiss']} "
        f"(CPU{'' if not m['faiss_gpus'] else ', GPUs present'}). Command: `{res['command']}`.",
        f"Data: {res['data_note']}",
        f"Corpus {n:,} vectors, D = {d}; flat float32 = {4 * d} B/vector. Ground truth: exact IndexFlatIP. "
        f"Tuned on {res['n_tune']} queries for strict recall@10 ≥ {res['target']}, evaluated on "
        f"{res['n_eval']} other queries. Mean gap between the exact 10th and 11th scores: {res['gap_10_11']:.4f}; "
        f"mean exact 10th score {res['score_10']:.3f}.",
        "",
        "| resident index | store | nprobe | candidates | recall@1 | recall@10 | 1-recall@10 | recall@10 one-stage "
        "| resident B/vec (vs flat) | disk B/vec | build s (train+add+tune) | /explain ms K=4 warm | cold |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in res["variants"]:
        lines.append(
            f"| `{v['factory']}` | {v['store']} | {v['nprobe']} | {v['k_candidates']} | {v['recall_at_1']:.3f} "
            f"| **{v['recall_at_10']:.3f}** | {v['recall_1_at_10']:.3f} | {v['one_stage_recall_at_10']:.3f} "
            f"| {v['resident_bytes_per_vector']:.1f} (1/{4 * d / v['resident_bytes_per_vector']:.1f}) "
            f"| {v['disk_bytes_per_vector']:.0f} | {v['train_s'] + v['add_s'] + v['tune_s']:.0f} "
            f"({v['train_s']:.0f}+{v['add_s']:.0f}+{v['tune_s']:.0f}) | {v['explain_ms_warm']:.1f} "
            f"| {v['explain_ms_cold']:.1f} |"
        )
    lines += [
        "",
        "Warm: store pages in the page cache; cold: the store file evicted (`posix_fadvise DONTNEED`) before "
        "each call, so every candidate row is read from disk. Single runs on a shared CPU; latencies are medians.",
        "",
        f"## Extrapolation to {TARGET_VECTORS / 1e6:.0f}M vectors x D = {TARGET_DIM} (61,411 samples x 1,024 patches)",
        "",
        f"Flat float32 would be {4 * TARGET_DIM * TARGET_VECTORS / 1024**3:.0f} GiB. Per-vector bytes scaled to "
        f"D = {TARGET_DIM} as the same fraction of flat (only indicative when D < {TARGET_DIM}: the 8-byte ids "
        "do not grow with D); add time scales linearly in N and D (training is fixed); an nlist of about "
        "4·sqrt(N) = 32k lists (`default_factory`) keeps the scanned lists as short as here.",
        "",
        "| resident index | resident GiB | store on disk GiB | add time, this CPU | one 24 GB machine | one 80 GB GPU |",
        "|---|---|---|---|---|---|",
    ]
    for v in res["variants"]:
        e = extrapolate(v, n, d)
        fits = "resident fits; store on SSD" if e["resident_gib"] < 20 else "resident does not fit"
        gpu = (
            "resident fits in memory; speed not measured (no GPU)"
            if e["resident_gib"] < 70
            else "does not fit"
        )
        lines.append(
            f"| `{v['factory']}` | {e['resident_gib']:.1f} | {e['disk_gib']:.0f} | {e['add_min_cpu']:.0f} min "
            f"| {fits} | {gpu} |"
        )
    if res.get("notes"):
        lines += ["", res["notes"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    """Run the benchmark and write index_bench_<data>.json / .md."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=("synthetic", "encoder"), default="synthetic")
    ap.add_argument("--encoder", type=Path, default=Path("bundles/vital-tiny/encoder"), help="SigLIP folder")
    ap.add_argument("--images", type=Path, help="phantom manifest.jsonl (with masks) for --data encoder")
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors indexed")
    ap.add_argument("--dim", type=int, default=1152, help="synthetic dimension")
    ap.add_argument("--rank", type=int, default=256, help="latent rank of the synthetic data")
    ap.add_argument("--queries", type=int, default=1000, help="evaluation queries")
    ap.add_argument("--tune-queries", type=int, default=200)
    ap.add_argument("--target", type=float, default=0.95, help="recall@10 the tuning aims for")
    ap.add_argument("--n-train", type=int, default=65536)
    ap.add_argument("--store-dtype", choices=("float16", "float32"), default="float16")
    ap.add_argument("--factories", nargs="+", default=list(VARIANTS))
    ap.add_argument("--work", type=Path, default=Path("/tmp/index_bench"), help="scratch folder (stores)")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--tag", default="", help="suffix of the result files")
    ap.add_argument("--render", type=Path, help="only re-write the .md next to this result JSON")
    ap.add_argument(
        "--arm", choices=("build", "explain"), default="build", help="explain: /explain search time"
    )
    ap.add_argument("--nprobe", type=int, default=64, help="--arm explain: lists visited")
    ap.add_argument("--candidates", type=int, default=128, help="--arm explain: candidates re-ranked")
    ap.add_argument(
        "--reps", type=int, default=200, help="--arm explain: timed /explain searches per variant"
    )
    ap.add_argument(
        "--retune", action="store_true", help="--arm explain: also time the setting tune() picks now"
    )
    args = ap.parse_args()
    if args.render:
        args.render.with_suffix(".md").write_text(markdown(json.loads(args.render.read_text())))
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    if args.arm == "explain":
        from explain_search import run_explain_arm

        return run_explain_arm(args, make_data, machine)
    t0 = time.perf_counter()
    if args.data == "synthetic":
        data = make_data(args.n + args.queries + args.tune_queries, args.dim, args.rank, seed=0)
        grids = data[: args.n].reshape(args.n, 1, 1, args.dim)
        q = data[args.n :][np.random.default_rng(2).permutation(args.queries + args.tune_queries)]
        info = {"rank": args.rank}
        note = (
            f"synthetic patch-like unit vectors (latent rank {args.rank}, image-level clusters); queries are "
            "held-out vectors of the same distribution."
        )
    else:
        if args.images is None:
            raise SystemExit("--data encoder needs --images MANIFEST")
        grids, q, info = encoder_data(args)
        q = q[np.random.default_rng(2).permutation(len(q))]
        note = (
            f"patch features of the SigLIP encoder at `{args.encoder}` over phantom images (`{args.images}`), "
            f"{info['indexed_images']} images indexed; queries are ROI means of held-out images (not in the index)."
        )
    tq, eq = (
        np.ascontiguousarray(q[: args.tune_queries]),
        np.ascontiguousarray(q[args.tune_queries :][: args.queries]),
    )
    xb = grids.reshape(-1, grids.shape[-1])
    print(
        f"data {xb.shape}, {len(tq)} tuning + {len(eq)} eval queries in {time.perf_counter() - t0:.0f}s",
        flush=True,
    )
    flat = faiss.IndexFlatIP(xb.shape[1])
    flat.add(xb)
    gs, gt = flat.search(eq, 11)
    del flat
    variants = [bench_variant(f, grids, tq, eq, gt[:, :10], args) for f in args.factories]
    res = {
        "data": args.data,
        "data_note": note,
        "command": "python bench/index_bench.py " + " ".join(os.sys.argv[1:]),
        "machine": machine(),
        "n": len(xb),
        "dim": xb.shape[1],
        "n_tune": len(tq),
        "n_eval": len(eq),
        "target": args.target,
        "gap_10_11": float(np.mean(gs[:, 9] - gs[:, 10])),
        "score_10": float(np.mean(gs[:, 9])),
        "info": info,
        "variants": variants,
        "total_s": time.perf_counter() - t0,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"index_bench_{args.data}{args.tag}"
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=1))
    (args.out / f"{stem}.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
