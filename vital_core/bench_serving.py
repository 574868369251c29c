"""`vital bench` serving arms: step modes (dynamic cache vs static cache vs CUDA graphs) and the prefix
cache (cold vs warm for ten questions on one image), each a ratio measured in one run.

Arms are interleaved repetition by repetition, so a busy machine slows every arm alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from PIL import Image

from vital_core.latent import latent_forward
from vital_core.prefix_cache import PrefixCache
from vital_core.static_cache import StaticRunner
from vital_core.timing import StageTimer, null_timer

QUESTIONS = (
    "Is there a lesion in this image?",
    "Where is the abnormality located?",
    "Describe the appearance of the bright region.",
    "Which organ is shown in the image?",
    "How large is the lesion compared with the organ?",
    "Is the finding more likely benign or malignant, and why?",
    "What imaging modality is this?",
    "Are the margins of the lesion smooth or irregular?",
    "Is there more than one lesion?",
    "Analyze the visual findings in the upper left region of the image.",
)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step_modes(
    model, image: Image.Image, question: str, *, k: int, tokens: int, repeats: int, warmup: int, device: str
) -> list[dict]:
    """Dynamic vs static vs graphs at one K: end to end (no per-step sync) and per-step medians."""
    runners: dict[str, StaticRunner | None] = {"dynamic": None, "static": StaticRunner(model.core)}
    if device.startswith("cuda"):
        runners["graphs"] = StaticRunner(model.core, mode="graphs")
    e2e: dict[str, list[float]] = {m: [] for m in runners}
    stages: dict[str, list[dict]] = {m: [] for m in runners}

    def once(runner: StaticRunner | None, timer: Callable) -> None:
        batch = model.encode([image], [question])
        latent_forward(model.core, batch, k, max_new_tokens=tokens, stop_ids=[], timer=timer, runner=runner)

    with torch.inference_mode():
        for rep in range(warmup + repeats):
            for mode, runner in runners.items():
                _sync(device)
                t0 = time.perf_counter()
                once(runner, null_timer)
                _sync(device)
                dt = time.perf_counter() - t0
                timer = StageTimer(device)
                once(runner, timer)
                if rep >= warmup:
                    e2e[mode].append(dt)
                    stages[mode].append(timer.stages)
    rows = []
    for mode in runners:
        steps = [x for s in stages[mode] for x in s.get("latent", [])]
        toks = [x for s in stages[mode] for x in s.get("decode", [])]
        rows.append(
            {
                "mode": mode,
                "e2e_ms": 1000 * statistics.median(e2e[mode]),
                "e2e_p99_ms": 1000 * max(e2e[mode])
                if len(e2e[mode]) < 100
                else 1000 * statistics.quantiles(e2e[mode], n=100)[98],
                "latent_step_ms": 1000 * statistics.median(steps) if steps else 0.0,
                "decode_token_ms": 1000 * statistics.median(toks) if toks else 0.0,
            }
        )
    base = rows[0]
    for r in rows:
        r["e2e_vs_dynamic"] = r["e2e_ms"] / base["e2e_ms"]
        r["decode_token_vs_dynamic"] = (
            r["decode_token_ms"] / base["decode_token_ms"] if base["decode_token_ms"] else None
        )
    return rows


def prefix_arm(
    model,
    image: Image.Image,
    *,
    k: int,
    tokens: int,
    repeats: int,
    warmup: int,
    device: str,
    questions: tuple[str, ...] = QUESTIONS,
) -> dict:
    """Ten questions on one image, cold (no prefix cache) vs warm (first misses, the rest hit)."""
    mode = "graphs" if device.startswith("cuda") else "eager"
    runner = StaticRunner(model.core, mode=mode)
    totals: dict[str, list[float]] = {"cold": [], "warm": []}
    per_q: dict[str, list[float]] = {"cold": [], "miss": [], "hit": []}
    with torch.inference_mode():
        for rep in range(warmup + repeats):
            for arm in ("cold", "warm"):
                pc = PrefixCache(1 << 40, "bench") if arm == "warm" else None
                times = []
                for q in questions:
                    _sync(device)
                    t0 = time.perf_counter()
                    batch = model.encode([image], [q])
                    keys = [pc.key(image)] if pc is not None else None
                    latent_forward(
                        model.core,
                        batch,
                        k,
                        max_new_tokens=tokens,
                        stop_ids=[],
                        runner=runner,
                        prefix_cache=pc,
                        image_keys=keys,
                    )
                    _sync(device)
                    times.append(time.perf_counter() - t0)
                if rep < warmup:
                    continue
                totals[arm].append(sum(times))
                if arm == "cold":
                    per_q["cold"] += times
                else:
                    per_q["miss"].append(times[0])
                    per_q["hit"] += times[1:]
    med = statistics.median
    out = {
        "questions": len(questions),
        "step_mode": runner.mode,
        "cold_total_ms": 1000 * med(totals["cold"]),
        "warm_total_ms": 1000 * med(totals["warm"]),
        "cold_question_ms": 1000 * med(per_q["cold"]),
        "warm_miss_ms": 1000 * med(per_q["miss"]),
        "warm_hit_ms": 1000 * med(per_q["hit"]),
    }
    out["warm_vs_cold"] = out["warm_total_ms"] / out["cold_total_ms"]
    out["hit_vs_cold_question"] = out["warm_hit_ms"] / out["cold_question_ms"]
    return out


def serving_markdown(res: dict) -> list[str]:
    """Markdown lines for the serving arms."""
    lines = [
        "",
        f"## Serving arms (K = {res['k']}, batch 1, {res['answer_tokens']} forced answer tokens, "
        f"median of {res['repeats']} interleaved runs)",
        "",
        "End to end = one request in-process without per-stage syncs; per-step figures from a second, "
        "stage-timed run.",
        "",
        "| step mode | e2e ms | e2e max/p99 ms | latent/step ms | decode/token ms | e2e vs dynamic | token vs dynamic |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["step_modes"]:
        tok = f"{r['decode_token_vs_dynamic']:.3f}×" if r["decode_token_vs_dynamic"] else "–"
        lines.append(
            f"| {r['mode']} | {r['e2e_ms']:.2f} | {r['e2e_p99_ms']:.2f} | {r['latent_step_ms']:.3f} | "
            f"{r['decode_token_ms']:.3f} | {r['e2e_vs_dynamic']:.3f}× | {tok} |"
        )
    if not any(r["mode"] == "graphs" for r in res["step_modes"]):
        lines += ["", "CUDA graphs: not measured (no CUDA device in this run)."]
    p = res.get("prefix")
    if p:
        lines += [
            "",
            f"Prefix cache, {p['questions']} questions on one image (step mode {p['step_mode']}): cold "
            f"{p['cold_total_ms']:.1f} ms, warm {p['warm_total_ms']:.1f} ms = **{p['warm_vs_cold']:.3f}×**; "
            f"per question: cold {p['cold_question_ms']:.2f} ms, warm miss {p['warm_miss_ms']:.2f} ms, "
            f"warm hit {p['warm_hit_ms']:.2f} ms ({p['hit_vs_cold_question']:.3f}× cold).",
        ]
    return lines
