"""Where is an organ-hop answer lost: at hop 1, or after it? Answer accuracy split by whether hop 1 is right.

    python bench/hop1_conditional.py PREDICTIONS.jsonl VAL_MANIFEST [--bundle B --k K]

PREDICTIONS is a `vital eval` predictions file on VAL_MANIFEST's organ-hop questions. Without --bundle, hop 1
is the written chain's sentence 1 (a `--mode cot` run; right when it equals the reference's sentence 1). With
--bundle, hop 1 is what the latent h_1 says through the backbone's LM head: the hop-1 structure whose first
token it ranks first among all of them (what `latent.feed: soft` feeds; `bench/latent_probe.py`'s readout).
Prints the counts and rates; issue 30's log §15 uses it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from latent_probe import loop_states, says_hop1


def _latent_hop1(bundle: str, rows: list[dict], root: Path, k: int) -> list[bool]:
    from vital_core.bundle import load_bundle

    model = load_bundle(bundle).eval()
    states = loop_states(model, rows, root, k, 32)[:, 1:2]  # h_1
    return says_hop1(model, states, rows, rows)[1][:, 0].tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("predictions", type=Path)
    p.add_argument("manifest", type=Path)
    p.add_argument("--bundle", help="read hop 1 from this bundle's h_1 (else from the written chain)")
    p.add_argument("--k", type=int, default=2, help="latent steps to run with --bundle")
    a = p.parse_args()
    rows = [json.loads(x) for x in a.manifest.read_text().splitlines() if x.strip()]
    preds = {}
    for x in a.predictions.read_text().splitlines():
        if x.strip():
            r = json.loads(x)
            preds[r["id"]] = r
    rows = [r for r in rows if r["id"] in preds]
    if not rows:
        raise SystemExit(f"{a.predictions}: no prediction for any row of {a.manifest}")
    if a.bundle:
        hop = _latent_hop1(a.bundle, rows, a.manifest.parent, a.k)
    else:
        hop = [
            (preds[r["id"]].get("written") or "").split(".")[0].strip() + "." == r["reasoning"][0]
            for r in rows
        ]
    ok = [bool(preds[r["id"]]["correct"]) for r in rows]
    given = {True: [o for h, o in zip(hop, ok) if h], False: [o for h, o in zip(hop, ok) if not h]}
    print(f"hop 1 right: {sum(hop)} / {len(hop)} ({100 * sum(hop) / len(hop):.1f} %)")
    for cond, name in ((True, "right"), (False, "wrong")):
        g = given[cond]
        rate = f"{100 * sum(g) / len(g):.1f} %" if g else "-"
        print(f"answer right given hop 1 {name}: {sum(g)} / {len(g)} ({rate})")


if __name__ == "__main__":
    main()
