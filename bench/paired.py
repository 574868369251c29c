"""Paired difference of two `vital eval` predictions files on their common multi-hop closed questions (the
issue-30 log's "A − B" rows): mean of a − b with its 95 % interval (training.eval.stats.paired_difference).

Usage: python bench/paired.py A.predictions.jsonl B.predictions.jsonl [--all-closed] [--exact]

--exact scores every `reasoning` row by exact match of its answer (closed_correct), for question sets the
evaluator does not know as multi-hop (`e20-*`'s organ-hop questions are scored as open by `vital eval`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.eval.metrics import closed_correct
from training.eval.stats import accuracy, fmt_acc, fmt_diff, paired_difference


def hits(path: Path, all_closed: bool, exact: bool = False) -> dict[str, bool]:
    rows = map(json.loads, path.read_text().splitlines())
    if exact:
        return {
            r["id"]: closed_correct(r["prediction"], r["gold"], "exact")
            for r in rows
            if r.get("question_type") == "reasoning"
        }
    return {
        r["id"]: bool(r["correct"])
        for r in rows
        if r.get("type") == "closed" and (all_closed or r.get("question_type") == "reasoning")
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--all-closed", action="store_true", help="every closed question, not only multi-hop")
    p.add_argument("--exact", action="store_true", help="score reasoning rows by exact answer match")
    args = p.parse_args()
    a, b = hits(args.a, args.all_closed, args.exact), hits(args.b, args.all_closed, args.exact)
    ids = sorted(set(a) & set(b))
    if not ids:
        raise SystemExit("no common questions")
    for name, h in ((args.a.name, a), (args.b.name, b)):
        print(f"{name}: {fmt_acc(accuracy([h[i] for i in ids]))}")
    r = paired_difference([a[i] for i in ids], [b[i] for i in ids])
    print(
        f"{args.a.name} - {args.b.name}: {fmt_diff(r)} (n = {r['n']}; only a right {r['a_only']}, only b {r['b_only']})"
    )


if __name__ == "__main__":
    main()
