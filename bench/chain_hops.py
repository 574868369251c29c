"""Read written chains hop by hop: for the multi-hop closed questions of a `vital eval --mode cot` predictions
file, how often the written sentence k equals the reference chain's sentence k, overall and (for hop 1) by the
hop-1 selector ("The largest lesion is ...", "The leftmost lesion is ..."). Hop 1's sentence is the reference's
first sentence of that form: sentence 1 in the generated chains, sentence 2 in the read-then-compare chains of
`bench/reasoning_arms.py e18-*` (whose manifest is then the reference).

Usage: python bench/chain_hops.py PREDICTIONS.jsonl MANIFEST.jsonl (issue 30, bench/results/reasoning-experiments.md)."""

import collections
import json
import re
import sys
from pathlib import Path


def sentences(text: str | None) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=\.)\s+", text or "") if s.strip()]


def selector(first: str) -> str:
    m = re.match(r"The (largest|smallest|leftmost|rightmost|uppermost|lowest) \w+ is the ", first)
    return m.group(1) if m else "other"


def main(pred_path: str, manifest_path: str) -> dict:
    reference = {
        r["id"]: r for r in map(json.loads, Path(manifest_path).read_text().splitlines()) if r.get("id")
    }
    rows = [json.loads(x) for x in Path(pred_path).read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r.get("question_type") == "reasoning" and r.get("type") == "closed"]
    if not rows:
        raise SystemExit(f"{pred_path}: no multi-hop closed questions")
    hits, totals = [0] * 4, [0] * 4
    by = collections.defaultdict(lambda: [0, 0, 0])
    for r in rows:
        ref, got = reference[r["id"]]["reasoning"], sentences(r.get("written"))
        for i, s in enumerate(ref[:4]):
            totals[i] += 1
            hits[i] += int(i < len(got) and got[i] == s.strip())
        h1 = next((i for i, s in enumerate(ref) if selector(s) != "other"), 0)
        b = by[selector(ref[h1])]
        b[0] += 1
        b[1] += int(h1 < len(got) and got[h1] == ref[h1].strip())
        b[2] += int(bool(r.get("correct")))
    out = {
        "n": len(rows),
        "hop_exact": [round(h / t, 3) if t else None for h, t in zip(hits, totals)],
        "hop1_by_selector": {
            k: {"n": n, "hop1_exact": round(h / n, 3), "answer": round(c / n, 3)}
            for k, (n, h, c) in sorted(by.items(), key=lambda kv: -kv[1][0])
        },
    }
    print(json.dumps(out, indent=2))
    return out


def run_cli(main, doc: str) -> None:
    """`SCRIPT PREDICTIONS MANIFEST`, or its docstring on -h / a wrong argument count (exit 2)."""
    if len(sys.argv) != 3 or sys.argv[1] in ("-h", "--help"):
        print(doc)
        raise SystemExit(0 if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help") else 2)
    main(sys.argv[1], sys.argv[2])


if __name__ == "__main__":
    run_cli(main, __doc__)
