"""Read-then-compare chains (`bench/reasoning_arms.py e18-*`), split into their two parts: how well sentence 1
reads every lesion's number ("Lesion positions from the left: cyst 23 %, abscess 41 %, hemangioma 67 %."),
and whether sentence 2 ("The leftmost lesion is the cyst.") is the extreme of the numbers the model itself
wrote (compare) — against whether it is the true hop-1 lesion. A chain whose reading is wrong but whose
comparison is consistent shows the comparison was learned; the reverse shows it was not.

Usage: python bench/chain_reads.py PREDICTIONS.jsonl SCENES.jsonl [--json OUT]
(issue 30, bench/results/reasoning-experiments.md section 10)."""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

from training.eval.stats import accuracy, fmt_acc

_READ = re.compile(r"^Lesion (positions from the left|positions from the top|areas): (.+)\.$")
_ITEM = re.compile(r"^(.+?) (\d+(?:\.\d+)?) %$")
_HOP1 = re.compile(r"^The (largest|smallest|leftmost|uppermost) lesion is the (.+)\.$")
_SUP = re.compile(r"the (largest|smallest|leftmost|uppermost) lesion\?$")
_KEY = {"leftmost": "cx", "uppermost": "cy", "largest": "area", "smallest": "area"}


def _sentences(text: str | None) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=\.)\s+", text or "") if s.strip()]


def _truth(o: dict, key: str, size: int = 128) -> float:
    return 100 * o[key] if key != "area" else 100 * o["area"] / size**2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("predictions", type=Path)
    p.add_argument("scenes", type=Path)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    scenes = {}
    for line in a.scenes.read_text().splitlines():
        r = json.loads(line)
        scenes[r["id"]] = [o for o in r["objects"] if o["type"] == "lesion"]
    stats: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for line in a.predictions.read_text().splitlines():
        r = json.loads(line)
        if r.get("question_type") != "reasoning" or r.get("type") != "closed":
            continue
        q = _SUP.search(r["question"])
        if q is None:
            continue
        sup, s = q.group(1), stats[q.group(1)]
        lesions = {o["name"]: o for o in scenes[r["id"]]}
        key = _KEY[sup]
        extreme = (max if sup == "largest" else min)(lesions.values(), key=lambda o: o[key])["name"]
        got = _sentences(r.get("written"))
        read = _READ.match(got[0]) if got else None
        hop1 = next((m for m in map(_HOP1.match, got) if m), None)
        written: dict[str, float] = {}
        for it in read.group(2).split(", ") if read else ():
            m = _ITEM.match(it.strip())
            if m:
                written[m.group(1)] = float(m.group(2))
        s["read_sentence"].append(read is not None)
        s["names_right"].append(set(written) == set(lesions))
        for name, v in written.items():
            if name in lesions:
                s["abs_error"].append(abs(v - _truth(lesions[name], key)))
        truth_order = sorted(lesions, key=lambda n: lesions[n][key])
        s["order_right"].append(
            set(written) == set(lesions) and sorted(written, key=written.get) == truth_order
        )
        said = hop1.group(2) if hop1 else None
        s["hop1_right"].append(said == extreme)
        if written and said is not None:
            own = (max if sup == "largest" else min)(written, key=written.get)
            s["compare_consistent"].append(said == own)
    out: dict[str, dict] = {}
    print(
        "| selector | n | reads all three names | order of the written numbers right | mean abs error "
        "(points) | sentence 2 = extreme of its own numbers | hop 1 right |"
    )
    print("|---|---|---|---|---|---|---|")
    for sup in sorted(stats):
        s = stats[sup]
        n = len(s["hop1_right"])
        err = sum(s["abs_error"]) / max(len(s["abs_error"]), 1)
        out[sup] = {
            "n": n,
            "names_right": accuracy(s["names_right"]),
            "order_right": accuracy(s["order_right"]),
            "abs_error": round(err, 2),
            "compare_consistent": accuracy(s["compare_consistent"]) if s["compare_consistent"] else None,
            "hop1_right": accuracy(s["hop1_right"]),
        }
        cc = out[sup]["compare_consistent"]
        print(
            f"| {sup} | {n} | {fmt_acc(out[sup]['names_right'])} | {fmt_acc(out[sup]['order_right'])} | "
            f"{err:.2f} | {fmt_acc(cc) if cc else '-'} | {fmt_acc(out[sup]['hop1_right'])} |"
        )
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
