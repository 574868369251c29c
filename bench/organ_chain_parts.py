"""Score the written organ-hop chains of E27 (v4) and E28 (v5) part by part.

    python bench/organ_chain_parts.py PRED.predictions.jsonl MANIFEST

PRED: `vital eval --mode cot` predictions; MANIFEST: the manifest the questions came from (its folder's
scenes.jsonl gives each lesion's host). Per question: hop 1 exact (sentence 1 as the truth writes it), the
organ → lesion read (the lesion sentence 2 names lies, by the scene's facts, in the organ the chain resolved:
sentence 2's own organ in v4 "The liver is the organ with the abscess.", sentence 1's in v5 "It is the organ
with the abscess."), the answer equal to sentence 2's lesion, and the answer right. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

V4 = re.compile(r"The ([a-z ]+?) is the [a-z]+ with the ([a-z ]+?)\.")
V5 = re.compile(r"It is the [a-z]+ with the ([a-z ]+?)\.")
HOP1 = re.compile(r"The [a-z]+ [a-z]+ is the ([a-z ]+?)\.")


def parts(pred: list[dict], manifest: Path) -> dict:
    man = {json.loads(x)["id"]: json.loads(x) for x in manifest.read_text().splitlines() if x.strip()}
    scenes = {}
    for x in (manifest.parent / "scenes.jsonl").read_text().splitlines():
        if x.strip():
            r = json.loads(x)
            scenes[r["id"]] = {o["name"]: o for o in r["objects"]}
    n = hop1 = read = follows = right = 0
    for p in pred:
        truth = man[p["id"]]
        written = p.get("written", "")
        n += 1
        first = re.split(r"(?<=\.) ", written)[0].strip() if written else ""
        hop1 += first == truth["reasoning"][0]
        m4, m5, h = V4.search(written), V5.search(written), HOP1.match(first)
        organ, lesion = (
            (m4.group(1), m4.group(2)) if m4 else ((h.group(1) if h else None), m5.group(1) if m5 else None)
        )
        if lesion is not None:
            read += scenes[p["id"]].get(lesion, {}).get("host") == organ
            follows += p["prediction"].lower().rstrip(".").endswith(lesion)
        right += bool(p["correct"])
    return {
        "n": n,
        "hop1_exact": round(hop1 / n, 3),
        "read_true": round(read / n, 3),
        "answer_follows_read": round(follows / n, 3),
        "answer": round(right / n, 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pred")
    p.add_argument("manifest")
    a = p.parse_args()
    pred = [json.loads(x) for x in Path(a.pred).read_text().splitlines() if x.strip()]
    print(json.dumps(parts(pred, Path(a.manifest)), indent=2))


if __name__ == "__main__":
    main()
