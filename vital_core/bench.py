"""`vital bench`: time per stage of the latent loop — preprocessing, vision, prefill, each latent
step, each decoded token — for K = 0..4; explicit chain-of-thought (the same backbone generating its
reasoning as text before answering) in the same run, as ratios; batch-size scaling; each step beside
the memory-bandwidth bound (weight bytes / bandwidth); serving arms: dynamic cache vs static cache vs
CUDA graphs, and the prefix cache cold vs warm for ten questions on one image (`--serving`).

A benchmark, not a test: it prints and saves measured figures (JSON + markdown) naming the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

from vital_core.cli import CLIError

if TYPE_CHECKING:  # heavy modules load inside the functions: registering `vital bench` stays light
    from PIL import Image

    from vital_core.model import VitalModel

# Peak HBM bandwidth (bytes/s) by GPU name fragment, from vendor datasheets.
GPU_BANDWIDTH = {"H200": 4.8e12, "H100 PCIe": 2.0e12, "H100": 3.35e12, "A100": 2.0e12, "L40": 0.864e12}


def register(sub: argparse._SubParsersAction) -> None:
    """Add `vital bench`."""
    p = sub.add_parser(
        "bench",
        help="latency per stage for K = 0..4, against explicit chain-of-thought, and batch scaling",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", default="tiny", help="tiny (default) or qwen3-vl-8b (random weights)")
    p.add_argument("--bundle", help="time a bundle instead of a preset")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    p.add_argument("--dtype", default=None, help="float32 / bfloat16 / float16 (default: the config's)")
    p.add_argument(
        "--image-size", type=int, default=None, help="square input side (default 128 tiny, 448 8B)"
    )
    p.add_argument("--answer-tokens", type=int, default=16, help="decoded tokens per answer (forced, no EOS)")
    p.add_argument("--k", default="0,1,2,3,4", help="comma-separated K values")
    p.add_argument(
        "--cot-tokens",
        type=int,
        default=256,
        help="explicit chain-of-thought: reasoning tokens generated before the answer (0: skip)",
    )
    p.add_argument(
        "--batch-sizes", default="1,4,16", help="batch-size scaling (comma-separated; empty: skip)"
    )
    p.add_argument("--scaling-k", type=int, default=4, help="K used for batch-size scaling")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's; 1 on a busy machine)",
    )
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--serving",
        choices=("on", "off", "only"),
        default="on",
        help="serving arms (step modes, prefix cache): with the rest, skipped, or alone (own result file)",
    )
    p.add_argument(
        "--questions",
        metavar="FILE",
        help="instead of the timing rows: answer the questions of a JSONL manifest one at a time and compare "
        "generated tokens and latency of the bundle at K = 0 and --k against --cot-bundle (vital_core.bench_questions)",
    )
    p.add_argument("--questions-split", default="test", help="only rows of this split (default test)")
    p.add_argument("--questions-n", type=int, default=50, help="how many questions (default 50)")
    p.add_argument(
        "--cot-bundle", help="a bundle that writes its reasoning before answering (explicit CoT arm)"
    )
    p.add_argument("--cot-max-tokens", type=int, default=160, help="token cap of the explicit CoT arm")
    p.add_argument("--out", default="bench/results", help="directory for JSON + markdown results")
    p.set_defaults(func=run)


def machine() -> dict:
    """What this ran on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": torch.get_num_threads(), "torch": torch.__version__, "gpu": None}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def cpu_copy_bandwidth(nbytes: int = 256 << 20) -> float:
    """Measured bytes/s of a large tensor copy (read + write) on this CPU."""
    import torch

    a = torch.empty(nbytes // 4, dtype=torch.float32)
    b = torch.empty_like(a)
    b.copy_(a)
    t0 = time.perf_counter()
    for _ in range(5):
        b.copy_(a)
    return 2 * nbytes * 5 / (time.perf_counter() - t0)


def weight_bytes(model) -> dict[str, int]:
    """Bytes a single-position step must read: the LM layers (+ final norm), and the LM head."""
    text = model.core.model.language_model
    layers = sum(
        p.numel() * p.element_size() for n, p in text.named_parameters() if not n.startswith("embed")
    )
    head = sum(p.numel() * p.element_size() for p in model.core.lm_head.parameters())
    return {"latent_step": layers, "decode_token": layers + head}


def _load(args: argparse.Namespace) -> tuple[VitalModel, str]:
    from vital_core.bundle import load_bundle
    from vital_core.model import build_model
    from vital_core.presets import preset

    if args.bundle:
        return load_bundle(args.bundle, device=args.device, dtype=args.dtype).eval(), Path(args.bundle).name
    cfg = preset(args.preset)
    if args.dtype:
        cfg.backbone.dtype = args.dtype
    return build_model(cfg, device=args.device).eval(), args.preset


def _time(
    model: VitalModel,
    images: list[Image.Image],
    questions: list[str],
    k: int,
    new_tokens: int,
    repeats: int,
    warmup: int,
    device: str,
) -> list[dict]:
    """Per-stage durations of `repeats` runs (after `warmup`) of one forward pass."""
    import torch

    from vital_core.latent import latent_forward
    from vital_core.timing import StageTimer

    samples = []
    for rep in range(warmup + repeats):
        timer = StageTimer(device)
        with torch.inference_mode(), timer("total"):
            with timer("preprocess"):
                batch = model.encode(images, questions)
            # stop_ids=[] forces exactly new_tokens tokens (latency does not depend on content)
            latent_forward(model.core, batch, k, max_new_tokens=new_tokens, stop_ids=[], timer=timer)
        if rep >= warmup:
            samples.append(timer.stages)
    return samples


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and save results."""
    import numpy as np
    import torch
    from PIL import Image

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError("--device cuda but CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    ks = [int(x) for x in args.k.split(",")]
    batches = [int(x) for x in args.batch_sizes.split(",")] if args.batch_sizes else []
    if args.questions:
        return _run_questions(args, ks)
    model, name = _load(args)
    side = args.image_size or (448 if model.hidden_size >= 1024 else 128)
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
        for _ in range(max([1, *batches]))
    ]
    question = "Analyze the visual findings of the lesion in the upper left region of the image."
    wb, bw = weight_bytes(model), _bandwidth(args.device)

    def timed(k: int, n: int, b: int = 1) -> list[dict]:
        return _time(model, images[:b], [question] * b, k, n, args.repeats, args.warmup, args.device)

    serving = _serving(args, model, images[0], question) if args.serving != "off" else None
    if args.serving == "only":
        _save_serving(serving, name, model, side, wb, bw, args, Path(args.out))
        return 0
    rows = []
    for k in ks:
        rows.append(_summarise(k, timed(k, args.answer_tokens), wb, bw))
        r = rows[-1]
        print(
            f"K={k}: total {r['total_ms']:.2f} ms | vision {r['vision_ms']:.2f} | prefill {r['prefill_ms']:.2f} | "
            f"latent/step {r['latent_step_ms']:.3f} | decode/token {r['decode_token_ms']:.3f}"
        )
    cot = None
    if args.cot_tokens:
        cot = _summarise(0, timed(0, args.cot_tokens + args.answer_tokens), wb, bw)
        cot["generated_tokens"] = args.cot_tokens + args.answer_tokens
        print(f"explicit CoT ({cot['generated_tokens']} tokens): total {cot['total_ms']:.1f} ms")
    scaling = []
    for b in batches:
        r = _summarise(args.scaling_k, timed(args.scaling_k, args.answer_tokens, b), wb, bw)
        scaling.append({"batch": b, "total_ms": r["total_ms"], "samples_per_s": 1000 * b / r["total_ms"]})
        print(f"batch {b}: {r['total_ms']:.1f} ms, {scaling[-1]['samples_per_s']:.2f} samples/s")
    result = {
        "benchmark": "latency",
        "model": name,
        "hidden_size": model.hidden_size,
        "device": args.device,
        "dtype": str(next(model.core.parameters()).dtype).replace("torch.", ""),
        "image_size": side,
        "answer_tokens": args.answer_tokens,
        "repeats": args.repeats,
        "machine": machine(),
        "weight_bytes": wb,
        "bandwidth_bytes_per_s": bw,
        "bandwidth_source": "datasheet" if args.device.startswith("cuda") else "measured CPU copy",
        "rows": rows,
        "cot": cot,
        "batch_scaling": {"k": args.scaling_k, "rows": scaling},
        "serving": serving,
    }
    _save(result, Path(args.out))
    return 0


def _run_questions(args: argparse.Namespace, ks: list[int]) -> int:
    """The real-question arms (`--questions`): their own JSON + markdown."""
    from vital_core.bench_questions import question_arms, questions_markdown, read_questions
    from vital_core.bundle import load_bundle

    if not args.bundle:
        raise CLIError("--questions needs --bundle (the latent model to time)")
    questions = read_questions(args.questions, args.questions_n, args.questions_split or None)
    model, name = _load(args)
    cot = load_bundle(args.cot_bundle, device=args.device).eval() if args.cot_bundle else None
    arms = question_arms(model, cot, questions, sorted({0, *ks}), args.cot_max_tokens)
    m = machine()
    m["load_avg_1m_end"] = os.getloadavg()[0]
    result = {
        "benchmark": "questions",
        "model": name,
        "cot_bundle": args.cot_bundle,
        "device": args.device,
        "machine": m,
        "questions": {"file": args.questions, "split": args.questions_split, "n": len(questions), **arms},
    }
    for r in arms["rows"]:
        print(
            f"{r['arm']}: {r['generated_tokens']:.1f} tokens, p50 {r['p50_ms']:.1f} ms ({r['p50_vs_ref']:.2f}×)"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"questions-{name}-{args.device.split(':')[0]}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    head = [
        f"# vital bench --questions — {name} on {args.device}",
        "",
        f"Machine: {m['gpu'] or m['cpu']} ({m['cores']} CPU threads), torch {m['torch']}, load average "
        f"{m['load_avg_1m_end']:.1f} at the end.",
    ]
    stem.with_suffix(".md").write_text("\n".join(head + questions_markdown(result)) + "\n")
    print(f"saved {stem}.json and .md")
    return 0


def _serving(args: argparse.Namespace, model, image, question: str) -> dict:
    """Step-mode and prefix-cache arms at K = `--scaling-k`."""
    from vital_core.bench_serving import prefix_arm, step_modes

    kw = {
        "k": args.scaling_k,
        "tokens": args.answer_tokens,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "device": args.device,
    }
    modes = step_modes(model, image, question, **kw)
    for r in modes:
        print(
            f"step mode {r['mode']}: {r['e2e_ms']:.2f} ms e2e ({r['e2e_vs_dynamic']:.3f}× dynamic), "
            f"decode/token {r['decode_token_ms']:.3f} ms"
        )
    prefix = prefix_arm(model, image, **kw)
    print(
        f"prefix cache, {prefix['questions']} questions: cold {prefix['cold_total_ms']:.1f} ms, warm "
        f"{prefix['warm_total_ms']:.1f} ms ({prefix['warm_vs_cold']:.3f}×)"
    )
    return {
        "k": args.scaling_k,
        "answer_tokens": args.answer_tokens,
        "repeats": args.repeats,
        "step_modes": modes,
        "prefix": prefix,
    }


def _save_serving(serving: dict, name: str, model, side: int, wb: dict, bw: float, args, out: Path) -> None:
    """Serving arms alone: their own JSON + markdown (the full latency file is left as it is)."""
    from vital_core.bench_serving import serving_markdown

    m = machine()
    dtype = str(next(model.core.parameters()).dtype).replace("torch.", "")
    m["load_avg_1m_end"] = os.getloadavg()[0]  # other work on the machine (ratios are interleaved)
    result = {
        "benchmark": "serving",
        "model": name,
        "device": args.device,
        "dtype": dtype,
        "image_size": side,
        "machine": m,
        "weight_bytes": wb,
        "bandwidth_bytes_per_s": bw,
        **serving,
    }
    out.mkdir(parents=True, exist_ok=True)
    tag = (m["gpu"] or "cpu").replace(" ", "-").lower()
    stem = out / f"serving-{name}-{args.device.split(':')[0]}-{tag}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    head = [
        f"# vital bench --serving only — {name} on {args.device} ({dtype})",
        "",
        f"Machine: {m['gpu'] or m['cpu']} ({m['cores']} CPU threads), torch {m['torch']}, load average "
        f"{m['load_avg_1m_end']:.1f} at the end (shared machine). Image {side}². "
        f"Step bound = {1000 * wb['latent_step'] / bw:.3f} ms, token bound = {1000 * wb['decode_token'] / bw:.3f} ms "
        f"(weight bytes / {bw / 1e9:.0f} GB/s).",
    ]
    stem.with_suffix(".md").write_text("\n".join(head + serving_markdown(serving)) + "\n")
    print(f"saved {stem}.json and .md")


def _bandwidth(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(0)
        for frag, bw in GPU_BANDWIDTH.items():
            if frag in name:
                return bw
        return float("nan")
    return cpu_copy_bandwidth()


def _summarise(k: int, samples: list[dict], wb: dict, bw: float) -> dict:
    med = statistics.median

    def stage(name: str) -> float:
        return 1000 * med([sum(s.get(name, [0.0])) for s in samples])

    steps = [x for s in samples for x in s.get("latent", [])]
    toks = [x for s in samples for x in s.get("decode", [])]
    step_ms = 1000 * med(steps) if steps else 0.0
    tok_ms = 1000 * med(toks) if toks else 0.0
    return {
        "k": k,
        "total_ms": stage("total"),
        "preprocess_ms": stage("preprocess"),
        "vision_ms": stage("vision"),
        "prefill_ms": stage("prefill"),
        "latent_total_ms": stage("latent"),
        "latent_step_ms": step_ms,
        "decode_total_ms": stage("decode"),
        "decode_token_ms": tok_ms,
        "latent_step_bound_ms": 1000 * wb["latent_step"] / bw,
        "decode_token_bound_ms": 1000 * wb["decode_token"] / bw,
    }


def _save(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tag = (result["machine"]["gpu"] or "cpu").replace(" ", "-").lower()
    stem = out / f"latency-{result['model']}-{result['device'].split(':')[0]}-{tag}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    stem.with_suffix(".md").write_text(_markdown(result))
    _plot(result, stem.with_suffix(".png"))
    print(f"saved {stem}.json, .md and .png")


def _markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"# vital bench — {result['model']} on {result['device']} ({result['dtype']})",
        "",
        f"Machine: {m['gpu'] or m['cpu']} ({m['cores']} CPU threads), torch {m['torch']}. "
        f"Image {result['image_size']}², batch 1, {result['answer_tokens']} answer tokens (forced), "
        f"median of {result['repeats']} runs.",
        f"Bound = weight bytes read per step / bandwidth ({result['bandwidth_bytes_per_s'] / 1e9:.0f} GB/s, "
        f"{result['bandwidth_source']}).",
        "",
        "| K | total ms | preprocess | vision | prefill | latent total | latent/step | step bound | "
        "decode total | decode/token | token bound | vs K=0 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = next((r["total_ms"] for r in result["rows"] if r["k"] == 0), None)
    for r in result["rows"]:
        rel = f"{r['total_ms'] / base:.3f}×" if base else "–"
        lines.append(
            f"| {r['k']} | {r['total_ms']:.2f} | {r['preprocess_ms']:.2f} | {r['vision_ms']:.2f} | "
            f"{r['prefill_ms']:.2f} | {r['latent_total_ms']:.2f} | {r['latent_step_ms']:.3f} | "
            f"{r['latent_step_bound_ms']:.3f} | {r['decode_total_ms']:.2f} | {r['decode_token_ms']:.3f} | "
            f"{r['decode_token_bound_ms']:.3f} | {rel} |"
        )
    cot = result.get("cot")
    k4 = next((r for r in result["rows"] if r["k"] == 4), result["rows"][-1])
    if cot:
        lines += [
            "",
            f"Explicit chain-of-thought (K = 0, {cot['generated_tokens']} generated tokens: reasoning + answer): "
            f"{cot['total_ms']:.1f} ms = **{cot['total_ms'] / k4['total_ms']:.1f}×** VITAL at K = {k4['k']} "
            f"({k4['total_ms']:.1f} ms)"
            + (f", {cot['total_ms'] / base:.1f}× direct answer." if base else "."),
        ]
    sc = result.get("batch_scaling", {}).get("rows") or []
    if sc:
        lines += [
            "",
            f"Batch-size scaling at K = {result['batch_scaling']['k']}:",
            "",
            "| batch | total ms | samples/s | vs batch 1 |",
            "|---|---|---|---|",
        ]
        for r in sc:
            lines.append(
                f"| {r['batch']} | {r['total_ms']:.1f} | {r['samples_per_s']:.2f} | "
                f"{r['samples_per_s'] / sc[0]['samples_per_s']:.2f}× |"
            )
    if result.get("serving"):
        from vital_core.bench_serving import serving_markdown

        lines += serving_markdown(result["serving"])
    return "\n".join(lines) + "\n"


def _plot(result: dict, path: Path) -> None:
    import numpy as np

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is a dev extra; the JSON and markdown are the results
        return
    rows = result["rows"]
    stages = ["preprocess", "vision", "prefill", "latent_total", "decode_total"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    bottom = np.zeros(len(rows))
    labels = [f"K={r['k']}" for r in rows]
    for st in stages:
        vals = np.array([r[f"{st}_ms"] for r in rows])
        ax1.bar(labels, vals, bottom=bottom, label=st.replace("_total", ""))
        bottom += vals
    ax1.set_ylabel("ms")
    ax1.set_title(f"{result['model']} on {result['device']}: latency per stage")
    ax1.legend(fontsize=8)
    names, totals = [*labels], [r["total_ms"] for r in rows]
    if result.get("cot"):
        names.append("CoT")
        totals.append(result["cot"]["total_ms"])
    ax2.bar(names, totals, color=["tab:blue"] * len(rows) + ["tab:red"] * (len(names) - len(rows)))
    ax2.set_yscale("log")
    ax2.set_title("end to end (log scale)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
