"""Read organ-hop lookup chains (phantom format 5's multi-hop questions; issue 30's log, sections 10-11) part by
part, for the multi-hop closed questions of a `vital eval --mode cot` predictions file against the manifest
the questions came from:

* hop 1: the written sentence 1 ("The leftmost organ is the liver.") equals the reference's;
* reads: of the "lesion in organ" pairs written in sentence 2, the share that are true (the reference's pairs);
* lookup: sentence 3 ("The lesion inside the liver is the abscess.") names the organ sentence 1 wrote and the
  lesion sentence 2 put in it (the chain is consistent with itself, right or wrong);
* truth: sentence 3's lesion truly lies in the organ sentence 1 wrote;
* answer: the evaluator's `correct`.

Usage: python bench/lookup_reads.py PREDICTIONS.jsonl MANIFEST.jsonl"""

import json
import re
from pathlib import Path

from chain_hops import run_cli, sentences  # bench/ is the script's folder

_S1 = re.compile(r"^The \w+ \w+ is the (.+)\.$")
_S3 = re.compile(r"^The lesion inside the (.+?) is the (.+)\.$")
_PAIR = re.compile(r"(?:^|, )(?:The|the) (.+?) (?:lies )?in the (.+?)(?=, the |\.$)")


def pairs(sentence: str) -> dict[str, str]:
    """{lesion: organ} of a reads sentence ("The cyst lies in the spleen, the abscess in the liver.")."""
    return {m.group(1): m.group(2) for m in _PAIR.finditer(sentence)}


def main(pred_path: str, manifest_path: str) -> dict:
    ref = {r["id"]: r for r in map(json.loads, Path(manifest_path).read_text().splitlines()) if r.get("id")}
    rows = [json.loads(x) for x in Path(pred_path).read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r.get("question_type") == "reasoning" and r.get("type") == "closed"]
    if not rows:
        raise SystemExit(f"{pred_path}: no multi-hop closed questions")
    n = len(rows)
    hop1 = reads_true = reads_n = lookup = truth = answer = 0
    for r in rows:
        gold, got = ref[r["id"]]["reasoning"], sentences(r.get("written"))
        got += [""] * (4 - len(got))
        hop1 += got[0] == gold[0]
        true_pairs, written = pairs(gold[1]), pairs(got[1])
        reads_n += len(written)
        reads_true += sum(true_pairs.get(les) == organ for les, organ in written.items())
        s1, s3 = _S1.match(got[0]), _S3.match(got[2])
        if s1 and s3:
            organ, les = s3.group(1), s3.group(2)
            lookup += organ == s1.group(1) and written.get(les) == organ
            truth += true_pairs.get(les) == s1.group(1)
        answer += bool(r.get("correct"))
    out = {
        "n": n,
        "hop1_exact": round(hop1 / n, 3),
        "reads_true": round(reads_true / reads_n, 3) if reads_n else None,
        "reads_written": reads_n,
        "lookup_consistent": round(lookup / n, 3),
        "lesion_truly_in_written_organ": round(truth / n, 3),
        "answer": round(answer / n, 3),
    }
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    run_cli(main, __doc__)
