"""Gates on a generated phantom set, before any training: do its multi-hop questions need their hops?

Computed from the data alone (manifest.jsonl and the per-object facts of scenes.jsonl), on the multi-hop
questions of the evaluated split, with every lookup fitted on a training split:

* **question-only**: the most frequent answer per (modality, question text), backed off to (modality,
  template), then to the majority answer. Gate: <= 55 %.
* **question + any one structure**: a reader that looks at one structure, picked by name (hop 1's object
  cannot be picked without looking), and at one attribute group of it (presence; area; brightness;
  brightness and margin; position; its relation — a lesion's host and nearest host, the lesion an organ
  holds; area or position *with* its relation), and answers the most frequent answer for what it sees. The
  structure and group are chosen per (modality, template) by cross-validation on the fit set. Gate: <= 65 %.
* **exact-fact oracle**: hop 1, hop 2 and the answer recomputed from the stored facts (areas, centroids,
  hosts, distances) by this module's own rule. Gate: 100 %.
* **written-hop oracle**: the answer parsed from the chain's sentences alone. Gate: 100 %.
* **size**: at least 1,000 multi-hop questions in the evaluated set.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from training.data.manifest import normalize_answer
from training.phantom.compose import parse_key

GATES = {"question_only": 0.55, "one_structure": 0.65, "exact_oracle": 1.0, "written_oracle": 1.0}
MIN_MULTIHOP = 1000
_BINS = 4


def load_set(root: str | Path) -> list[dict[str, Any]]:
    """Manifest rows joined with their scenes.jsonl facts (key "facts")."""
    root = Path(root)
    manifest, scenes = root / "manifest.jsonl", root / "scenes.jsonl"
    for f in (manifest, scenes):
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found (generate the set with `vital phantom`)")
    facts = {r["id"]: r for r in _jsonl(scenes)}
    rows = []
    for r in _jsonl(manifest):
        if r["id"] not in facts:
            raise ValueError(f"{scenes}: no facts for {r['id']}")
        rows.append({**r, "facts": facts[r["id"]]})
    return rows


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def multihop(rows: Sequence[dict[str, Any]], split: str | None = None) -> list[dict[str, Any]]:
    """The compositional multi-hop rows (optionally of one split)."""
    return [r for r in rows if r["facts"].get("template") and (split is None or r["split"] == split)]


def _q(row: dict[str, Any]) -> str:
    """The question with the image phrase normalised ("this CT scan" / "this abdominal CT slice" -> "this IMAGE")."""
    return re.sub(r"in this [^?]*\?$", "in this IMAGE?", " ".join(row["question"].lower().split()))


def _lookup(fit: Sequence[dict], test: Sequence[dict], keys: Sequence[Callable[[dict], Any]]) -> list[bool]:
    """Most frequent fit answer per key, backing off through `keys` in order, then the majority answer."""
    tables = []
    for key in keys:
        t: dict[Any, Counter] = defaultdict(Counter)
        for r in fit:
            t[key(r)][normalize_answer(r["answer"])] += 1
        tables.append(t)
    majority = Counter(normalize_answer(r["answer"]) for r in fit).most_common(1)[0][0]
    hits = []
    for r in test:
        guess = majority
        for key, t in zip(keys, tables):
            c = t.get(key(r))
            if c:
                guess = c.most_common(1)[0][0]
                break
        hits.append(guess == normalize_answer(r["answer"]))
    return hits


def question_only(fit: Sequence[dict], test: Sequence[dict]) -> list[bool]:
    """Per test question: does the question-only lookup get it right?"""
    return _lookup(
        fit,
        test,
        [lambda r: (r["modality"], _q(r)), lambda r: (r["modality"], r["facts"]["template"])],
    )


def _quantiles(fit: Sequence[dict], field: str) -> dict[str, list[float]]:
    """Per object type, the bin edges of a fact over the fit set's objects."""
    vals: dict[str, list[float]] = defaultdict(list)
    for r in fit:
        for o in r["facts"]["objects"]:
            vals[o["type"] == "lesion"].append(o[field])
    edges = {}
    for kind, v in vals.items():
        v = sorted(v)
        edges[kind] = [v[int(len(v) * q / _BINS)] for q in range(1, _BINS)]
    return edges


def _bin(x: float, edges: list[float]) -> int:
    return sum(x > e for e in edges)


def _nearest_host(facts: dict[str, Any], name: str) -> str | None:
    d = facts.get("distances", {}).get(name)
    return min(d, key=d.get) if d else None


ATTRIBUTE_GROUPS: tuple[str, ...] = (
    "presence",
    "area",
    "brightness",
    "look",
    "position",
    "relation",
    "area+relation",
    "position+relation",
)
"""What a one-structure read may see of its structure (one group at a time)."""


def _read(facts: dict[str, Any], name: str, group: str, edges: dict) -> tuple:
    """What a one-structure reader sees: attribute group `group` of the structure called `name`."""
    obj = next((o for o in facts["objects"] if o["name"] == name), None)
    if obj is None:
        return ("absent",)
    lesion = obj["type"] == "lesion"
    if lesion:
        rel: tuple = (obj["host"], _nearest_host(facts, name))
    else:  # the lesion(s) this organ holds
        rel = tuple(
            sorted(o["name"] for o in facts["objects"] if o["type"] == "lesion" and o["host"] == name)
        )
    parts = {
        "presence": (),
        "area": (_bin(obj["area"], edges["area"][lesion]),),
        "brightness": (_bin(obj["brightness"], edges["brightness"][lesion]),),
        "look": (obj["brighter"], obj["blurred"]),
        "position": (int(obj["cx"] * 3), int(obj["cy"] * 3)),
        "relation": rel,
        "area+relation": (_bin(obj["area"], edges["area"][lesion]), *rel),
        "position+relation": (int(obj["cx"] * 3), int(obj["cy"] * 3), *rel),
    }
    return ("present", *parts[group])


def one_structure(fit: Sequence[dict], test: Sequence[dict]) -> tuple[list[bool], dict[str, dict]]:
    """The best one-structure read per (modality, template), scored on the test rows.

    For every cell the read — a structure name of the modality and an attribute group — is chosen by
    two-fold cross-validation on the fit rows (fit on one half, score on the other), then fitted on all of
    them and scored on the test rows. Returns per test row whether its cell's read gets it right, and per
    template the test accuracy and the reads chosen."""
    edges = {"area": _quantiles(fit, "area"), "brightness": _quantiles(fit, "brightness")}
    cells: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, r in enumerate(test):
        cells[(r["modality"], r["facts"]["template"])].append(i)
    fit_cells: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in fit:
        fit_cells[(r["modality"], r["facts"]["template"])].append(r)
    hits = [False] * len(test)
    reads: dict[str, list] = defaultdict(list)
    for cell, idx in sorted(cells.items()):
        rows, fit_c = [test[i] for i in idx], fit_cells.get(cell, [])
        names = sorted({o["name"] for r in fit_c for o in r["facts"]["objects"]})
        halves = (fit_c[0::2], fit_c[1::2])
        best, best_score = ("", "presence"), -1.0
        for name in names:
            for group in ATTRIBUTE_GROUPS:
                key = lambda r, n=name, g=group: _read(r["facts"], n, g, edges)  # noqa: E731
                cv = _lookup(halves[0], halves[1], [key]) + _lookup(halves[1], halves[0], [key])
                score = sum(cv) / max(len(cv), 1)
                if score > best_score:
                    best, best_score = (name, group), score
        key = lambda r, n=best[0], g=best[1]: _read(r["facts"], n, g, edges)  # noqa: E731
        for i, h in zip(idx, _lookup(fit_c or fit, rows, [key])):
            hits[i] = h
        reads[cell[1]].append(f"{cell[0]}: {best[0]} ({best[1]})")
    chosen = {}
    for template in sorted(reads):
        t_hits = [hits[i] for (m, t), idx in cells.items() if t == template for i in idx]
        chosen[template] = {"n": len(t_hits), "accuracy": _mean(t_hits), "reads": reads[template]}
    return hits, chosen


def exact_oracle(row: dict[str, Any]) -> str:
    """The answer recomputed from the stored facts (hop 1 by area or centroid, hop 2 by host or distance)."""
    facts = row["facts"]
    t = parse_key(facts["template"])
    sup, rel, attr = t.sup, t.rel, t.attr
    lesions = [o for o in facts["objects"] if o["type"] == "lesion"]
    hosts = {o["name"]: o for o in facts["objects"] if o["type"] != "lesion"}
    if t.over == "organ":
        pick = {
            "leftmost": lambda o: o["cx"],
            "rightmost": lambda o: -o["cx"],
            "uppermost": lambda o: o["cy"],
            "lowest": lambda o: -o["cy"],
        }[sup]
        organ = min(hosts.values(), key=pick)
        held = [o["name"] for o in lesions if o["host"] == organ["name"]]
        return normalize_answer(f"The {held[0]}.") if len(held) == 1 else ""
    key = {
        "largest": lambda o: -o["area"],
        "smallest": lambda o: o["area"],
        "leftmost": lambda o: o["cx"],
        "uppermost": lambda o: o["cy"],
    }[sup]
    les = min(lesions, key=key)
    host = hosts[les["host"]] if rel == "host" else hosts[_nearest_host(facts, les["name"])]
    if attr == "name":
        return normalize_answer(f"The {host['name']}.")
    quad = f"{'upper' if host['cy'] < 0.5 else 'lower'} {'left' if host['cx'] < 0.5 else 'right'}"
    return normalize_answer(f"The {quad} quadrant.")


_HOST_RE = re.compile(r"^The .+? (?:holding|nearest to) it is the (.+)\.$")
_INSIDE_RE = re.compile(r"^The lesion inside the .+? is the (.+)\.$")
_QUAD_RE = re.compile(r"^The .+? lies in the ((?:upper|lower) (?:left|right)) quadrant\.$")


def written_oracle(row: dict[str, Any]) -> str | None:
    """The answer parsed from the written chain alone (hop 2's sentence names the host, the last reads it)."""
    steps = row["reasoning"]
    if row["facts"]["template"].startswith("organ-"):
        les = _INSIDE_RE.match(steps[2])
        return normalize_answer(f"The {les.group(1)}.") if les else None
    host = _HOST_RE.match(steps[2])
    if host is None:
        return None
    if row["facts"]["template"].endswith("-name"):
        return normalize_answer(f"The {host.group(1)}.")
    quad = _QUAD_RE.match(steps[3])
    return normalize_answer(f"The {quad.group(1)} quadrant.") if quad else None


def audit(root: str | Path, split: str = "test", fit: str | Path | None = None) -> dict[str, Any]:
    """Every gate on the multi-hop questions of `split` of the set at `root` (lookups fitted on the train
    split of `fit`, default `root`)."""
    rows = load_set(root)
    test = multihop(rows, split)
    fit_rows = multihop(load_set(fit) if fit else rows, "train")
    if not test:
        raise ValueError(f"{root}: no compositional multi-hop questions in split {split!r}")
    if not fit_rows:
        raise ValueError(f"{fit or root}: no multi-hop train split to fit the lookups on (give --fit DIR)")
    gold = [normalize_answer(r["answer"]) for r in test]
    one_hits, chosen = one_structure(fit_rows, test)
    figures = {
        "question_only": _mean(question_only(fit_rows, test)),
        "one_structure": _mean(one_hits),
        "exact_oracle": _mean([exact_oracle(r) == g for r, g in zip(test, gold)]),
        "written_oracle": _mean([written_oracle(r) == g for r, g in zip(test, gold)]),
        "majority": _mean([g == Counter(gold).most_common(1)[0][0] for g in gold]),
    }
    passed = {
        "question_only": figures["question_only"] <= GATES["question_only"],
        "one_structure": figures["one_structure"] <= GATES["one_structure"],
        "exact_oracle": figures["exact_oracle"] >= GATES["exact_oracle"],
        "written_oracle": figures["written_oracle"] >= GATES["written_oracle"],
        "size": len(test) >= MIN_MULTIHOP,
    }
    return {
        "set": str(root),
        "split": split,
        "fit": str(fit or root),
        "n_multihop": len(test),
        "n_fit": len(fit_rows),
        "figures": figures,
        "gates": {**GATES, "min_multihop": MIN_MULTIHOP},
        "passed": passed,
        "all_passed": all(passed.values()),
        "one_structure_reads": chosen,
        "answers": dict(Counter(gold).most_common()),
    }


def _mean(hits: Sequence[bool]) -> float:
    return round(sum(hits) / len(hits), 4) if hits else 0.0


def audit_table(report: dict[str, Any]) -> str:
    """The gates as a markdown table."""
    f, ok, g = report["figures"], report["passed"], report["gates"]
    mark = lambda k: "pass" if ok[k] else "FAIL"  # noqa: E731
    lines = [
        f"Multi-hop gates: {report['set']} split {report['split']} (n = {report['n_multihop']}), "
        f"lookups fitted on {report['fit']} train (n = {report['n_fit']})",
        "",
        "| gate | measured | bound | |",
        "|---|---|---|---|",
        f"| question-only lookup | {100 * f['question_only']:.1f} % | <= {100 * g['question_only']:.0f} % | {mark('question_only')} |",
        f"| question + any one structure | {100 * f['one_structure']:.1f} % | <= {100 * g['one_structure']:.0f} % | {mark('one_structure')} |",
        f"| exact-fact oracle | {100 * f['exact_oracle']:.1f} % | {100 * g['exact_oracle']:.0f} % | {mark('exact_oracle')} |",
        f"| written-hop oracle | {100 * f['written_oracle']:.1f} % | {100 * g['written_oracle']:.0f} % | {mark('written_oracle')} |",
        f"| multi-hop questions | {report['n_multihop']} | >= {g['min_multihop']} | {mark('size')} |",
        f"| (majority answer) | {100 * f['majority']:.1f} % | | |",
    ]
    return "\n".join(lines) + "\n"
