"""Score hop 1 asked alone ("Which is the largest lesion in this CT scan?" -> "The cyst."; rows written by
`bench/reasoning_arms.py`'s `_hop1_manifest`) per superlative: accuracy with a Wilson 95 % interval, and how
often the answer at least names a lesion present in the scene (then chance is 1/3: three lesions a scene).
With --hosts, the same for hop 1 over the host structures (`e19-hop1-hosts`: "Which is the leftmost organ?").

Usage: python bench/hop1_score.py PREDICTIONS.jsonl SCENES.jsonl [--hosts] [--json OUT]
(issue 30, bench/results/reasoning-experiments.md section 10)."""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

from training.eval.stats import accuracy, fmt_acc

_Q = re.compile(r"^Which is the (\w+) (\w+) in this ")
_A = re.compile(r"^the (.+?)\.?$", re.IGNORECASE)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("predictions", type=Path)
    p.add_argument("scenes", type=Path)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--hosts", action="store_true", help="the questions ask about host structures")
    a = p.parse_args()
    present = {}
    for line in a.scenes.read_text().splitlines():
        r = json.loads(line)
        present[r["id"]] = {o["name"] for o in r["objects"] if (o["type"] == "lesion") != a.hosts}
    hits: dict[str, list[bool]] = defaultdict(list)
    named: dict[str, list[bool]] = defaultdict(list)
    for line in a.predictions.read_text().splitlines():
        r = json.loads(line)
        m = _Q.match(r["question"])
        if m is None:
            continue
        sup = m.group(1)
        image_id = r["id"].rsplit("-h1", 1)[0]
        ans = _A.match(r["prediction"].strip())
        hits[sup].append(bool(r["correct"]))
        named[sup].append(bool(ans) and ans.group(1).strip().lower() in present[image_id])
    out = {}
    print("| superlative | n | accuracy [95 %] | names a present object of the kind asked |")
    print("|---|---|---|---|")
    for sup in [*sorted(hits), "all"]:
        h = hits[sup] if sup != "all" else [x for v in hits.values() for x in v]
        nm = named[sup] if sup != "all" else [x for v in named.values() for x in v]
        out[sup] = {"accuracy": accuracy(h), "present": sum(nm) / max(len(nm), 1)}
        print(f"| {sup} | {len(h)} | {fmt_acc(accuracy(h))} | {100 * out[sup]['present']:.1f} % |")
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
