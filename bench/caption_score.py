"""Score caption predictions (`vital eval ... --out F` on captions.jsonl; F.predictions.jsonl) per atlas item:
presence, and place / tone / margin / host where gold and prediction both say present; for caption v3 also
`rank` (a lesion's size word and leftmost/uppermost flags, all equal) over lesions both say present.

Usage: python bench/caption_score.py PREDICTIONS.jsonl (issue 30, bench/results/reasoning-experiments.md)."""

import json
import re
import sys
from pathlib import Path


def items(text):
    out = {}
    for sent in re.split(r"(?<=\.)\s*", text):
        body = sent.split(":", 1)[1] if ":" in sent else sent
        for it in body.strip(" .").split(";"):
            it = it.strip()
            if not it:
                continue
            if it.endswith(" absent"):
                out[it[:-7]] = None
                continue
            parts = [p.strip() for p in it.split(",")]
            head = parts[0]
            m = re.match(r"(.+?) in the (.+)$", head)
            if m:
                name, host, rest = m.group(1), m.group(2), parts[1:]
            else:
                # name then place words
                words = head.split(" ")
                places = {"upper", "middle", "lower", "left", "right", "central", "center"}
                i = len(words)
                while i > 0 and words[i - 1] in places:
                    i -= 1
                name, host, rest = " ".join(words[:i]), None, [" ".join(words[i:])] + parts[1:]
            out[name] = {
                "host": host,
                "place": rest[0] if rest else "",
                "tone": rest[1] if len(rest) > 1 else "",
                "margin": rest[2] if len(rest) > 2 else "",
                "rank": tuple(rest[3:]),
            }
    return out


n = pres = both = place = tone = margin = host = ranked = rank = 0
for line in Path(sys.argv[1]).read_text().splitlines():
    r = json.loads(line)
    g, p = items(r["gold"]), items(r["prediction"])
    for name, gv in g.items():
        n += 1
        pv = p.get(name, "missing")
        pres += (gv is None) == (pv is None)
        if gv is not None and isinstance(pv, dict):
            both += 1
            place += gv["place"] == pv["place"]
            tone += gv["tone"] == pv["tone"]
            margin += gv["margin"] == pv["margin"]
            host += gv["host"] == pv["host"]
            if gv["rank"]:  # caption v3 lesions
                ranked += 1
                rank += gv["rank"] == pv["rank"]
print(
    json.dumps(
        {
            "items": n,
            "presence": round(pres / n, 3),
            "both_present": both,
            "place": round(place / max(both, 1), 3),
            "tone": round(tone / max(both, 1), 3),
            "margin": round(margin / max(both, 1), 3),
            "host": round(host / max(both, 1), 3),
            "ranked_lesions": ranked,
            "rank": round(rank / max(ranked, 1), 3),
        }
    )
)
