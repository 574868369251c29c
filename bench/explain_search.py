"""`index_bench.py --arm explain`: the time of one /explain patch search (K = 4 queries, top 10) on the
1M × 1152 synthetic two-stage index, before and after issue 27, in one run.

The index (`IVF1024,PQ288x4fs` + float16 store, the data of `index_bench_synthetic.md`) is built once
into `--work` and reused. It is searched at a fixed (nprobe, candidates) — by default 64 / 128, what the
tuning chose for that run — so every variant does the same work and returns the same patches:

- `before`: the search as it was — one FAISS call for the K queries, one read of every distinct
  candidate row, numpy's float16 → float32 cast, each query scored against the union of all candidates;
- `per_query`: today's search called once per latent step;
- `after`: today's search (`PatchIndex.search_arrays`) for the K queries at once: one FAISS call, one
  read, torch's float16 cast, each query scored against its own candidates only;
- with `--retune`, `after, re-tuned`: today's search at the (nprobe, candidates) that `autotune.tune`
  picks now for strict recall@10 ≥ `--target` on the tuning queries (the cheaper re-rank can move its
  choice), with recall@10 of every variant against the exact top 10 of the store.

Variants take turns query group by query group (a busy machine slows them alike); each group is searched
twice and the second call timed (store pages warm). Stage times split the same calls' work.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import numpy as np

from index_builder.autotune import strict_recall, tune
from index_builder.faiss_index import IndexBuilder, PatchIndex, _normalized
from index_builder.vector_store import VectorStore, exact_topk, rerank

FACTORY = "IVF1024,PQ288x4fs"
K = 4


def rerank_before(queries: np.ndarray, candidates: np.ndarray, store: VectorStore, k: int):
    """The re-rank before issue 27 (kept here as the baseline): union scoring, numpy float16 cast."""
    q_n, c_n = candidates.shape
    uniq, inverse = np.unique(candidates, return_inverse=True)  # (U,), (Q*C,)
    inverse = inverse.reshape(q_n, c_n)
    ids_ = uniq[uniq >= 0]
    vecs = np.asarray(store.vectors[ids_], dtype=np.float32) if len(ids_) else np.zeros((0, store.dim))
    offset = int(uniq[0] < 0) if len(uniq) else 0
    sims = np.einsum("qd,ud->qu", queries.astype(np.float32), vecs)  # (Q, U)
    cand_scores = np.full((q_n, c_n), np.finfo(np.float32).min, np.float32)
    valid = candidates >= 0
    rows = np.broadcast_to(np.arange(q_n)[:, None], (q_n, c_n))
    cand_scores[valid] = sims[rows[valid], inverse[valid] - offset]
    top = np.argpartition(-cand_scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(-cand_scores, top, 1).argsort(axis=1, kind="stable")
    top = np.take_along_axis(top, order, 1)
    scores = np.take_along_axis(cand_scores, top, 1)
    return scores, np.where(np.take_along_axis(valid, top, 1), np.take_along_axis(candidates, top, 1), -1)


def build_or_load(args, make_data) -> tuple[PatchIndex, np.ndarray, np.ndarray]:
    """The 1M index in args.work (built on the first run), the tuning and the evaluation queries (kept
    next to it, so later runs skip generating the data)."""
    work = args.work / f"explain-{FACTORY.replace(',', '_')}-{args.n}"
    saved = work / "queries.npz"
    if (work / "index.json").is_file() and saved.is_file():
        with np.load(saved) as z:
            tq, queries = z["tune"], z["eval"]
        index = PatchIndex.load(work)
    else:
        data = make_data(args.n + args.queries + args.tune_queries, args.dim, args.rank, seed=0)
        q = data[args.n :][np.random.default_rng(2).permutation(args.queries + args.tune_queries)]
        tq, queries = (np.ascontiguousarray(x) for x in (q[: args.tune_queries], q[args.tune_queries :]))
        if (work / "index.json").is_file():
            index = PatchIndex.load(work)
        else:
            b = IndexBuilder(FACTORY, args.dim, 1, store_dir=work, store_dtype="float16")
            xb = data[: args.n]
            b.train(xb[np.random.default_rng(1).choice(args.n, min(args.n_train, args.n), replace=False)])
            for s in range(0, args.n, 131072):
                chunk = xb[s : s + 131072]
                b.add_grids([f"i{i}" for i in range(s, s + len(chunk))], chunk.reshape(len(chunk), 1, 1, -1))
            index = b.finish()
            index.save(work)
        np.savez(saved, tune=tq, eval=queries)
        del data
    index.set_nprobe(args.nprobe)
    index.k_candidates = args.candidates
    return index, tq, queries[: args.queries]


def _at(index: PatchIndex, setting: tuple[int, int], fn):
    """`fn` run with the index at (nprobe, candidates)."""

    def run(q):
        index.set_nprobe(setting[0])
        index.k_candidates = setting[1]
        return fn(q)

    return run


def _variants(index: PatchIndex, fixed: tuple[int, int], tuned: tuple[int, int] | None):
    def before(q):
        qn = _normalized(q)
        return rerank_before(qn, index.index.search(qn, index.k_candidates)[1], index.store, 10)

    def per_query(q):
        parts = [index.search_arrays(row[None], 10) for row in q]
        return np.vstack([p[0] for p in parts]), np.vstack([p[1] for p in parts])

    after = lambda q: index.search_arrays(q, 10)  # noqa: E731
    out = {"before": _at(index, fixed, before), "per_query": _at(index, fixed, per_query)}
    out["after"] = _at(index, fixed, after)
    if tuned is not None:
        out["after_retuned"] = _at(index, tuned, after)
    return out


def _clock() -> np.ndarray:
    """(wall, this thread's CPU) seconds: on a shared machine the CPU time is what the work costs, the
    wall time adds the waits for a core."""
    return np.array([time.perf_counter(), time.thread_time()])


def _stages(index: PatchIndex, q: np.ndarray) -> dict[str, np.ndarray]:
    qn = _normalized(q)
    t0 = _clock()
    cand = index.index.search(qn, index.k_candidates)[1]
    t1 = _clock()
    rerank_before(qn, cand, index.store, 10)
    t2 = _clock()
    rerank(qn, cand, index.store, 10)
    t3 = _clock()
    return {"resident": t1 - t0, "rerank_before": t2 - t1, "rerank_after": t3 - t2}


def time_variants(index: PatchIndex, queries: np.ndarray, reps: int, fns: dict) -> tuple[dict, dict, dict]:
    """Median [wall, CPU] ms per variant and per stage, and whether the variants returned the same patches."""
    fixed = (index.nprobe, index.k_candidates)
    times: dict[str, list[np.ndarray]] = {name: [] for name in fns}
    stages: dict[str, list[np.ndarray]] = {"resident": [], "rerank_before": [], "rerank_after": []}
    same = {"per_query_ids_equal": True, "before_ids_equal": True, "before_max_score_diff": 0.0}
    groups = len(queries) // K
    for i in range(reps):
        q = queries[K * (i % groups) :][:K]  # (K, D): one /explain
        out = {}
        for name, fn in fns.items():
            fn(q)  # pages of this group's candidates now cached
            t = _clock()
            out[name] = fn(q)
            times[name].append(_clock() - t)
        index.set_nprobe(fixed[0])
        index.k_candidates = fixed[1]
        _stages(index, q)
        for key, v in _stages(index, q).items():
            stages[key].append(v)
        same["per_query_ids_equal"] &= bool(np.array_equal(out["per_query"][1], out["after"][1]))
        same["before_ids_equal"] &= bool(np.array_equal(out["before"][1], out["after"][1]))
        diff = float(np.max(np.abs(out["before"][0] - out["after"][0])))
        same["before_max_score_diff"] = max(same["before_max_score_diff"], diff)
    med = lambda v: [1000 * statistics.median(x[j] for x in v) for j in (0, 1)]  # noqa: E731
    return {k: med(v) for k, v in times.items()}, {k: med(v) for k, v in stages.items()}, same


def run_explain_arm(args, make_data, machine) -> int:
    """Build or load the index, time the variants, write index_bench_explain.{json,md}."""
    t0 = time.perf_counter()
    index, tq, queries = build_or_load(args, make_data)
    print(f"index {len(index):,} x {index.dim} ready in {time.perf_counter() - t0:.0f}s", flush=True)
    fixed, tuned, table = (index.nprobe, index.k_candidates), None, []
    if args.retune:
        res = tune(index, tq, target_recall=args.target)
        tuned, table = (res.nprobe, res.k_candidates), res.table
        print(
            f"re-tuned: nprobe {res.nprobe}, {res.k_candidates} candidates, recall {res.recall:.3f}",
            flush=True,
        )
    fns = _variants(index, fixed, tuned)
    truth = exact_topk(index.store, queries, 10)[1]  # (m, 10) exact over the stored vectors
    groups = range(0, len(queries) - len(queries) % K, K)  # recall over /explain-sized calls
    found = {
        n: np.vstack([fn(queries[g : g + K])[1] for g in groups]) for n, fn in fns.items() if n != "per_query"
    }
    recall = {n: strict_recall(ids, truth[: len(ids)], 10) for n, ids in found.items()}
    index.set_nprobe(fixed[0])
    index.k_candidates = fixed[1]
    ms, stages, same = time_variants(index, queries, args.reps, fns)
    res = {
        "arm": "explain",
        "command": "python bench/index_bench.py " + " ".join(os.sys.argv[1:]),
        "machine": machine(),
        "pinned_cpus": sorted(os.sched_getaffinity(0)),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "load_avg_1min_at_end": os.getloadavg()[0],
        "n": len(index),
        "dim": index.dim,
        "factory": FACTORY,
        "nprobe": fixed[0],
        "k_candidates": fixed[1],
        "retuned": {"nprobe": tuned[0], "k_candidates": tuned[1], "target": args.target, "table": table}
        if tuned
        else None,
        "recall_at_10": recall,
        "reps": args.reps,
        "ms": ms,
        "stage_ms": stages,
        "ratio_before_over_after": [b / a for b, a in zip(ms["before"], ms["after"])],
        "ratio_per_query_over_after": [b / a for b, a in zip(ms["per_query"], ms["after"])],
        "same_results": same,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "index_bench_explain.json").write_text(json.dumps(res, indent=1))
    (args.out / "index_bench_explain.md").write_text(markdown(res))
    print(markdown(res))
    return 0


def markdown(res: dict) -> str:
    """The report of one run: wall and CPU medians, ratios to `after` (as wall / CPU)."""
    m, ms, st, same = res["machine"], res["ms"], res["stage_ms"], res["same_results"]
    cpus = ",".join(map(str, res["pinned_cpus"]))

    def row(label: str, name: str) -> str:
        wall, cpu = ms[name]
        ratio = " / ".join(f"{x / a:.2f}×" for x, a in zip(ms[name], ms["after"]))
        return f"| {label} | {wall:.2f} | {cpu:.2f} | {ratio} |"

    rows = [
        row("before: one FAISS call; re-rank scores the union, numpy float16 cast", "before"),
        row("per query: K calls of today's search", "per_query"),
        row("**after**: one FAISS call, one read, each query scored on its own candidates", "after"),
    ]
    if res.get("retuned"):
        r = res["retuned"]
        rows.append(
            row(f"after, re-tuned now (picked nprobe {r['nprobe']} / {r['k_candidates']})", "after_retuned")
        )
    return "\n".join(
        [
            f"# /explain patch search, {res['n'] / 1e6:.0f}M x {res['dim']} — before and after issue 27",
            "",
            f"Machine: {m['cpu']}, {m['cores']} cores shared with other jobs; this process **pinned to 1 core** "
            f"(CPU {cpus}), OMP_NUM_THREADS={res['omp_num_threads']}, faiss {m['faiss']} (CPU); 1-min load "
            f"average {res['load_avg_1min_at_end']:.1f} at the end. Command: `{res['command']}`.",
            f"Index `{res['factory']}` + float16 store (the synthetic data of `index_bench_synthetic.md`), "
            f"nprobe {res['nprobe']}, {res['k_candidates']} candidates re-ranked per query, top 10. One "
            f"/explain = K = {K} held-out queries; medians of {res['reps']} searches per variant, variants "
            "interleaved, store pages warm. Wall = elapsed; CPU = the searching thread's CPU time (on a "
            "busy machine the wall time adds the waits for the core).",
            "",
            "| variant | wall ms | CPU ms | vs after (wall / CPU) |",
            "|---|---|---|---|",
            *rows,
            "",
            "Strict recall@10 against the exact top 10 of the stored vectors, evaluation queries: "
            + ", ".join(f"{k} {v:.3f}" for k, v in res["recall_at_10"].items())
            + ".",
            "Stages, wall / CPU ms (same queries): resident FAISS stage "
            f"{st['resident'][0]:.2f} / {st['resident'][1]:.2f}; re-rank before {st['rerank_before'][0]:.2f} / "
            f"{st['rerank_before'][1]:.2f}, after {st['rerank_after'][0]:.2f} / {st['rerank_after'][1]:.2f}.",
            f"Same patches: per-query = batched ids {'yes' if same['per_query_ids_equal'] else 'NO'}; "
            f"before = after ids {'yes' if same['before_ids_equal'] else 'NO'} (largest score difference "
            f"{same['before_max_score_diff']:.1e}).",
            "",
        ]
    )


if __name__ == "__main__":
    raise SystemExit("run through bench/index_bench.py --arm explain")
