"""Is hop 1's result in the fed-back states at all? A linear probe on h_0..h_K of organ-hop questions.

    python bench/latent_probe.py BUNDLE --train MANIFEST --val VAL_MANIFEST [--k 4] [--n-train 1200]
        [--labels hop1 answer direction modality] [--out F]

The latent route needs the state fed back to hold what the written chain would have said: for an organ-hop
question ("which lesion ... lies in the leftmost organ?") hop 1's result is the structure sentence 1 names
("The leftmost organ is the kidney."). This runs the bundle's latent loop on the first N compositional
train questions of MANIFEST and on VAL_MANIFEST, fits one multinomial logistic regression per state h_s
(standardised on the train states; L2-regularised, full-batch L-BFGS) to two labels, hop 1's structure and
the final answer (`--labels`; the direction word and the modality are controls, both stated by the question),
and reports validation accuracy with a 95 % Wilson interval next to two baselines fitted on
the same train rows: the majority label, and the most frequent label per question text (what the question
alone gives). A state whose probe beats the question-only baseline holds image-specific hop information;
one at the baseline holds none that a linear read can find.

It also reports what each state *says* about hop 1 through the backbone's own LM head, with no probe
trained (what `latent.feed: soft` feeds): how often the first token of hop 1's structure (" kidney") is
among the head's top 3 tokens, and how often it ranks first among the first tokens of every hop-1 structure
in the sets (`says_hop1`).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from training.eval.stats import wilson


def _hop1(row: dict) -> str:
    """Sentence 1's resolved structure: "The leftmost organ is the kidney." → "kidney"."""
    first = row["reasoning"][0]
    if " is the " not in first:
        raise SystemExit(f"{row['id']}: sentence 1 does not resolve a structure: {first!r}")
    return first.split(" is the ", 1)[1].rstrip(".").strip()


LABELS = {
    "hop1": _hop1,
    "answer": lambda r: r["answer"],
    "direction": lambda r: r["reasoning"][0].split()[1],  # "The leftmost organ is …" → "leftmost"
    "modality": lambda r: r["modality"],
}


def compositional_rows(path: Path, split: str | None, n: int | None) -> list[dict]:
    from training.phantom.compose import is_compositional

    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if (split is None or r["split"] == split) and is_compositional(r["question"])]
    if not rows:
        raise SystemExit(f"{path}: no compositional questions" + (f" in split {split}" if split else ""))
    return rows[:n] if n else rows


def loop_states(model, rows: list[dict], root: Path, k: int, batch: int) -> torch.Tensor:
    """(N, K+1, H) fp32 states h_0..h_K of the bundle's own latent loop."""
    from tqdm import tqdm

    out = []
    with torch.inference_mode():
        for i in tqdm(range(0, len(rows), batch), desc="states", unit="batch"):
            part = rows[i : i + batch]
            images = [Image.open(root / r["image"]).convert("RGB") for r in part]
            enc = model.encode(images, [r["question"] for r in part])
            out.append(model(enc, k, max_new_tokens=1).latents.float())
    return torch.cat(out)


def _probe(xtr: torch.Tensor, ytr: torch.Tensor, xva: torch.Tensor, classes: int, l2: float) -> torch.Tensor:
    """Predicted validation labels of a multinomial logistic regression fitted on (xtr, ytr)."""
    mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
    xtr, xva = (xtr - mu) / sd, (xva - mu) / sd
    w = torch.zeros(xtr.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ w + b, ytr) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (xva @ w + b).argmax(-1)


def says_hop1(
    model, states: torch.Tensor, rows: list[dict], names: list[dict]
) -> tuple[torch.Tensor, torch.Tensor]:
    """What each state of `states` (N, S, H) says about hop 1 through the LM head, with no training: (N, S) bool,
    hop 1's structure's first token in the head's top 3, and (N, S) bool, that token ranked first among the
    first tokens of every hop-1 structure of `names` (rows whose structures are the candidates)."""
    tok = model.tokenizer
    first = {n: tok.encode(" " + n, add_special_tokens=False)[0] for n in {_hop1(r) for r in names}}
    cand = torch.tensor(sorted(set(first.values())))
    want = torch.tensor([first[_hop1(r)] for r in rows])
    top3, best = [], []
    with torch.inference_mode():
        for s in range(states.shape[1]):
            logits = model.core.lm_head(states[:, s].to(model.device)).float().cpu()  # (N, V)
            top3.append((logits.topk(3, dim=-1).indices == want[:, None]).any(-1))
            best.append(cand[logits[:, cand].argmax(-1)] == want)
    return torch.stack(top3, 1), torch.stack(best, 1)


def _says(model, states: torch.Tensor, val: list[dict], train: list[dict]) -> dict:
    """Per state, the top-3 and ranked-first rates of `says_hop1` on the val rows."""
    top3, first = says_hop1(model, states, val, train + val)
    return {
        f"h{s}": {
            "top3": _pct(int(top3[:, s].sum()), len(val)),
            "first": _pct(int(first[:, s].sum()), len(val)),
        }
        for s in range(states.shape[1])
    }


def _pct(hits: int, n: int) -> dict:
    lo, hi = wilson(hits, n)
    return {"acc": round(100 * hits / n, 1), "ci95": [round(100 * lo, 1), round(100 * hi, 1)], "n": n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--train", required=True, type=Path, help="manifest whose train-split rows fit the probe")
    p.add_argument("--val", required=True, type=Path, help="manifest of the questions the probe is scored on")
    p.add_argument("--k", type=int, default=4, help="latent steps to run (states h_0..h_K are probed)")
    p.add_argument("--n-train", type=int, default=1200)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--l2", type=float, default=1e-3)
    p.add_argument(
        "--labels",
        nargs="+",
        choices=sorted(LABELS),
        default=["hop1", "answer"],
        help="what to probe for (direction and modality: what the question states, a control)",
    )
    p.add_argument("--out", type=Path, help="write the report here as JSON")
    a = p.parse_args()
    from vital_core.bundle import load_bundle

    train = compositional_rows(a.train, "train", a.n_train)
    val = compositional_rows(a.val, None, None)
    model = load_bundle(a.bundle).eval()
    xtr = loop_states(model, train, a.train.parent, a.k, a.batch)
    xva = loop_states(model, val, a.val.parent, a.k, a.batch)
    report: dict = {"bundle": a.bundle, "k": a.k, "n_train": len(train), "n_val": len(val), "labels": {}}
    for name in a.labels:
        get = LABELS[name]
        names = sorted({get(r) for r in train + val})
        idx = {s: i for i, s in enumerate(names)}
        ytr = torch.tensor([idx[get(r)] for r in train])
        yva = torch.tensor([idx[get(r)] for r in val])
        majority = Counter(ytr.tolist()).most_common(1)[0][0]
        by_q: dict[str, Counter] = {}
        for r, y in zip(train, ytr.tolist()):
            by_q.setdefault(r["question"], Counter())[y] += 1
        q_only = [
            by_q[r["question"]].most_common(1)[0][0] if r["question"] in by_q else majority for r in val
        ]
        entry = {
            "classes": len(names),
            "majority": _pct(int((yva == majority).sum()), len(val)),
            "question_only": _pct(sum(int(q == y) for q, y in zip(q_only, yva.tolist())), len(val)),
            "states": {},
        }
        for s in range(a.k + 1):
            pred = _probe(xtr[:, s], ytr, xva[:, s], len(names), a.l2)
            entry["states"][f"h{s}"] = _pct(int((pred == yva).sum()), len(val))
        report["labels"][name] = entry
    if "hop1" in a.labels:
        report["says_hop1"] = _says(model, xva, val, train)
    for name, e in report["labels"].items():
        print(
            f"{name} ({e['classes']} classes): majority {e['majority']['acc']} %, question only "
            f"{e['question_only']['acc']} %"
        )
        for s, v in e["states"].items():
            print(f"  probe on {s}: {v['acc']} % [{v['ci95'][0]}, {v['ci95'][1]}]")
    for s, v in report.get("says_hop1", {}).items():
        print(
            f"  LM head at {s}: hop 1's structure in its top 3 {v['top3']['acc']} %, first among the "
            f"structures {v['first']['acc']} % [{v['first']['ci95'][0]}, {v['first']['ci95'][1]}]"
        )
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
