"""`vital bench --questions FILE`: what answering real questions costs — explicit chain of thought against
K latent steps — in generated tokens and end-to-end latency, one question at a time (batch 1).

Arms, in one run, on the same questions: the bundle at K = 0 (its direct answer) and at each K asked for,
and, with `--cot-bundle`, a model that writes its reasoning before answering (K = 0, up to
`--cot-max-tokens`). Tokens are what each arm actually generated (the chain included), not a forced length.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from vital_core.cli import CLIError


def read_questions(path: str | Path, n: int, split: str | None = None) -> list[tuple[Path, str]]:
    """(image path, question) of the first n rows of a JSONL file with `image` and `question` fields
    (a five-tuple manifest; image paths relative to the file), optionally only rows of one `split`."""
    path = Path(path)
    if not path.is_file():
        raise CLIError(f"--questions {path}: not found")
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image, question = path.parent / row["image"], str(row["question"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CLIError(f"--questions {path} line {i}: needs image and question ({exc})") from exc
        if split is not None and row.get("split") != split:
            continue
        out.append((image, question))
        if len(out) == n:
            break
    if not out:
        raise CLIError(f"--questions {path}: no questions" + (f" in split {split!r}" if split else ""))
    return out


def time_arm(
    model: Any, questions: list[tuple[Path, str]], k: int, max_new_tokens: int, warmup: int = 2
) -> dict:
    """Median and p90 latency (ms) and mean generated tokens of answering each question alone."""
    import torch
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p, _ in questions]
    for img, (_, q) in list(zip(images, questions))[:warmup]:
        model.answer([img], [q], k=k, max_new_tokens=max_new_tokens)
    ms, tokens = [], []
    for img, (_, q) in zip(images, questions):
        t0 = time.perf_counter()
        a = model.answer([img], [q], k=k, max_new_tokens=max_new_tokens)[0]
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        ms.append(1000 * (time.perf_counter() - t0))
        tokens.append(len(a.tokens))
    ms.sort()
    return {
        "k": k,
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 3),
        "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 3),
        "mean_ms": round(sum(ms) / len(ms), 3),
        "generated_tokens": round(sum(tokens) / len(tokens), 2),
    }


def question_arms(
    model: Any, cot: Any | None, questions: list[tuple[Path, str]], ks: list[int], cot_max: int
) -> dict:
    """Every arm on the same questions; ratios against the largest latent K."""
    rows = [
        {"arm": f"latent K={k}" if k else "direct (K=0)", **time_arm(model, questions, k, 24)} for k in ks
    ]
    if cot is not None:
        rows.append({"arm": "explicit CoT (K=0)", **time_arm(cot, questions, 0, cot_max)})
    ref = next((r for r in rows if r["k"] == max(ks)), rows[-1])
    for r in rows:
        r["tokens_vs_ref"] = round(r["generated_tokens"] / max(ref["generated_tokens"], 1e-9), 3)
        r["p50_vs_ref"] = round(r["p50_ms"] / ref["p50_ms"], 3)
    return {"reference": ref["arm"], "rows": rows}


def questions_markdown(result: dict) -> list[str]:
    """The arms as a markdown table."""
    q = result["questions"]
    lines = [
        "",
        f"Real questions ({q['n']} from {q['file']}, batch 1; tokens = what each arm generated; ratios vs "
        f"{q['reference']}):",
        "",
        "| arm | generated tokens | p50 ms | p90 ms | tokens vs ref | p50 vs ref |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['arm']} | {r['generated_tokens']:.1f} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | "
        f"{r['tokens_vs_ref']:.2f}× | {r['p50_vs_ref']:.2f}× |"
        for r in q["rows"]
    ]
    return lines
