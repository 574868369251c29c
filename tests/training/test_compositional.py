"""The compositional multi-hop task (organ-hop, the default, and lesion-hop, format 3-4's): answers recomputed
from regenerated scenes by independent code, names decoupled from attributes, answers balanced per template,
and the gates on a generated set."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from training.phantom import make_sample
from training.phantom.atlas import ATLAS
from training.phantom.compose import (
    LESION_TEMPLATES,
    ORGAN_TEMPLATES,
    TEMPLATES,
    answer_classes,
    is_compositional,
    parse_key,
    template_for,
)
from training.phantom.layout import build
from vital_core.qtypes import classify_question

_LUMA = np.array([0.299, 0.587, 0.114])


def _luma(image: np.ndarray, mask: np.ndarray) -> float:
    img = image.astype(np.float64) / 255.0
    return float((img @ _LUMA if img.ndim == 3 else img)[mask].mean())


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest pixel distance between two masks, brute force over every pixel pair (independent of the
    generator's boundary shortcut)."""
    pa, pb = np.argwhere(a).astype(float), np.argwhere(b).astype(float)
    return float(np.sqrt(((pa[:, None] - pb[None]) ** 2).sum(-1).min()))


def _multihop(n: int, seed: int = 0, task: str = "compositional") -> list:
    """The first n compositional multi-hop samples of a seed (every index is multi-hop)."""
    return [make_sample(i, seed, 128, task, multihop_only=True) for i in range(n)]


@pytest.fixture(scope="module")
def multihop_samples() -> list:
    return _multihop(9 * len(LESION_TEMPLATES), task="lesion-hop")  # every template once in every modality


def test_default_task_asks_the_organ_hop_family() -> None:
    assert TEMPLATES == ORGAN_TEMPLATES and len(ORGAN_TEMPLATES) == 4
    assert {parse_key(t.key) for t in ORGAN_TEMPLATES + LESION_TEMPLATES} == {
        *ORGAN_TEMPLATES,
        *LESION_TEMPLATES,
    }
    with pytest.raises(ValueError, match="template key"):
        parse_key("organ-largest-inside-name")  # size superlatives over organs are not asked
    assert make_sample(9 * 6, 0, 128).template.startswith("organ-")  # the first multi-hop slot of seed 0


def test_organ_hop_answers_recomputed_from_the_scene() -> None:
    """Hop 1 is the organ whose pixel centroid is extreme, hop 2 the lesion whose mask lies inside that
    organ's, sentence 2 every lesion's organ by mask containment; the step masks are O, O, L, L."""
    seen = Counter()
    for s in _multihop(9 * len(ORGAN_TEMPLATES) * 2, seed=3):
        q, steps = s.qa.question, s.qa.reasoning
        assert is_compositional(q) and classify_question(q) == "reasoning" and len(steps) == 4
        t = parse_key(s.template)
        atlas = ATLAS[s.modality.key]
        lesions = [o for o in s.scene.objects if o.target_type == "lesion"]
        hosts = [o for o in s.scene.objects if o.target_type != "lesion"]
        assert len(lesions) == 3 and len(hosts) == 3  # three hop-1 candidates in every question
        cen = {o.name: np.argwhere(o.mask).mean(0) for o in hosts}  # (row, col) in pixels
        value = {
            "leftmost": lambda o, c=cen: -c[o.name][1],
            "rightmost": lambda o, c=cen: c[o.name][1],
            "uppermost": lambda o, c=cen: -c[o.name][0],
            "lowest": lambda o, c=cen: c[o.name][0],
        }[t.sup]
        ranked = sorted(hosts, key=value, reverse=True)
        organ = ranked[0]
        assert abs(value(ranked[0]) - value(ranked[1])) >= 0.06 * 128 - 1  # a clear winner
        inside = {
            les.name: next(h.name for h in hosts if (les.mask & h.mask).sum() == les.mask.sum())
            for les in lesions
        }
        les = next(x for x in lesions if inside[x.name] == organ.name)
        assert s.qa.step_objects() == [organ, organ, les, les]
        assert (
            q
            == f"Reason step by step: which lesion in this {q.split('in this ')[1].split(' lies')[0]} lies in the {t.sup} {atlas.host_word}?"
        )
        assert steps[0] == f"The {t.sup} {atlas.host_word} is the {organ.name}."
        for name, host in inside.items():
            assert re.search(
                rf"(The|the) {re.escape(name)} (lies )?in the {re.escape(host)}[,.]", steps[1]
            ), steps[1]
        assert steps[2] == f"The lesion inside the {organ.name} is the {les.name}."
        assert steps[3].endswith(f"is the {les.name}.") and s.qa.answer == f"The {les.name}."
        assert s.qa.target is les  # the sample's mask is the answer's lesion
        seen[s.template] += 1
    assert set(seen) == {t.key for t in ORGAN_TEMPLATES}


def test_multihop_answers_recomputed_from_the_scene(multihop_samples: list) -> None:
    seen = Counter()
    for s in multihop_samples:
        q, steps = s.qa.question, s.qa.reasoning
        assert is_compositional(q) and classify_question(q) == "reasoning" and len(steps) == 4
        sup, rel, attr = s.template.split("-")
        lesions = [o for o in s.scene.objects if o.target_type == "lesion"]
        hosts = [o for o in s.scene.objects if o.target_type != "lesion"]
        assert len(lesions) == 3 and len(hosts) == 3
        cen = {o.name: np.argwhere(o.mask).mean(0) for o in s.scene.objects}  # (row, col) in pixels
        value = {
            "largest": lambda o: o.mask.sum(),
            "smallest": lambda o: -o.mask.sum(),
            "leftmost": lambda o, c=cen: -c[o.name][1],
            "uppermost": lambda o, c=cen: -c[o.name][0],
        }[sup]
        les = max(lesions, key=value)
        if rel == "host":  # the host whose mask holds the whole lesion
            host = next(h for h in hosts if (les.mask & h.mask).sum() == les.mask.sum())
        else:
            dist = {h.name: _distance(les.mask, h.mask) for h in hosts}
            host = next(h for h in hosts if h.name == min(dist, key=dist.get))
            assert all((les.mask & h.mask).sum() == 0 for h in hosts)
        assert s.qa.step_objects() == [les, les, host, host]
        assert steps[0] == f"The {sup} lesion is the {les.name}." and host.name in steps[2]
        if attr == "name":
            assert s.qa.answer == f"The {host.name}."
        else:
            cy, cx = (cen[host.name] + 0.5) / 128
            quad = f"{'upper' if cy < 0.5 else 'lower'} {'left' if cx < 0.5 else 'right'}"
            assert s.qa.answer == f"The {quad} quadrant." and min(abs(cy - 0.5), abs(cx - 0.5)) >= 0.04
        seen[s.template] += 1
    assert set(seen) == {t.key for t in LESION_TEMPLATES}


@pytest.mark.parametrize(("task", "family"), [("compositional", "organ"), ("lesion-hop", "lesion")])
def test_answers_are_balanced_per_modality_and_template(task: str, family: str) -> None:
    # one modality's first 4 x T multi-hop questions: each template 4 times, each answer class once
    n = 4 * len(ORGAN_TEMPLATES if family == "organ" else LESION_TEMPLATES)
    samples = [make_sample(9 * m, 1, 128, task, multihop_only=True) for m in range(n)]
    by_template: dict[str, Counter] = defaultdict(Counter)
    for m, s in enumerate(samples):
        template, cls = template_for(m, family)
        assert s.template == template.key and s.modality.key == "ct"
        assert s.answer_class == answer_classes(ATLAS["ct"], template.attr, template.over)[cls]
        by_template[s.template][s.qa.answer] += 1
    assert len(by_template) == n // 4
    assert all(len(c) == 4 and set(c.values()) == {1} for c in by_template.values())


def test_names_are_told_by_tone_and_say_nothing_about_size_or_place() -> None:
    # 150 CT scenes: every name's brightness sits in its own narrow band (the cue that names it), while
    # each name is left of centre about half the time and each lesion kind is the largest about equally often
    bright: dict[str, list[float]] = defaultdict(list)
    largest: Counter = Counter()
    left: dict[str, list[bool]] = defaultdict(list)
    for i in range(150):
        sc = build("ct", np.random.default_rng([7, i]), 128, "hosted" if i % 2 else "free")
        if sc is None:
            continue
        img = sc.to_uint8()
        for o in sc.objects:
            inner = o.mask & ~(o.mask ^ np.roll(o.mask, 3, 0)) & ~(o.mask ^ np.roll(o.mask, 3, 1))
            bright[o.name].append(float(img[inner].mean()) / 255 if inner.any() else np.nan)
            left[o.name].append(np.argwhere(o.mask)[:, 1].mean() < 64)
        les = [o for o in sc.objects if o.target_type == "lesion"]
        largest[max(les, key=lambda o: o.mask.sum()).name] += 1
    atlas = ATLAS["ct"]
    for name, vals in bright.items():
        assert abs(np.nanmedian(vals) - atlas.tone(name, colour=False)) < 0.06, (name, np.nanmedian(vals))
        assert 0.25 <= np.mean(left[name]) <= 0.75, (name, np.mean(left[name]))
    shares = np.array([largest[n] for n in atlas.lesions]) / sum(largest.values())
    assert shares.min() >= 0.12, dict(largest)


def test_every_name_has_its_own_tone() -> None:
    for atlas in ATLAS.values():
        names = atlas.hosts + atlas.lesions
        assert len(set(names)) == 8
        levels = sorted(atlas.tone(n, colour=False) for n in names)
        assert min(b - a for a, b in zip(levels, levels[1:])) >= 0.08
        assert len({atlas.tone(n, colour=True) for n in names}) == 8


@pytest.fixture(scope="module")
def gate_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fit set (864 multi-hop questions of seed 0, all train) and a held-out test set of 1,008 (seed 1)."""
    from training.phantom import generate

    fit, test = tmp_path_factory.mktemp("fit"), tmp_path_factory.mktemp("heldout")
    generate(fit, 864, 0, 128, 2, splits=(1.0, 0.0, 0.0), progress=False, multihop_only=True)
    generate(test, 1008, 1, 128, 2, splits=(0.0, 0.0, 1.0), progress=False, multihop_only=True)
    return fit, test


@pytest.mark.slow
def test_gates_pass_on_a_generated_set(gate_sets: tuple[Path, Path], tmp_path: Path) -> None:
    from vital_core.cli import main

    fit, test = gate_sets
    out = tmp_path / "audit.json"
    assert main(["phantom", "--audit", str(test), "--fit", str(fit), "--audit-out", str(out)]) == 0
    r = json.loads(out.read_text())
    f = r["figures"]
    assert r["n_multihop"] == 1008 and r["all_passed"]
    assert f["question_only"] <= 0.55 and f["one_structure"] <= 0.65
    assert f["exact_oracle"] == 1.0 and f["written_oracle"] == 1.0
    assert out.with_suffix(".md").read_text().count("pass") == 5


def test_audit_catches_a_set_whose_answers_follow_the_names(
    gate_sets: tuple[Path, Path], tmp_path: Path
) -> None:
    # a doctored copy where every answer is the modality's first lesion: the question-only lookup
    # must see through it (the gate is not vacuous)
    from training.phantom.audit import audit

    fit, test = gate_sets
    for src, dst in ((fit, tmp_path / "fit"), (test, tmp_path / "test")):
        dst.mkdir()
        (dst / "scenes.jsonl").write_text((src / "scenes.jsonl").read_text())
        rows = [json.loads(x) for x in (src / "manifest.jsonl").read_text().splitlines()]
        for r in rows:
            if r["answer"].startswith("The "):
                key = r["id"].split("-")[0]
                r["answer"] = f"The {ATLAS[key].lesions[0]}."
        (dst / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = audit(tmp_path / "test", "test", tmp_path / "fit")
    assert report["figures"]["question_only"] > 0.55 and not report["passed"]["question_only"]
    assert report["figures"]["exact_oracle"] < 1.0  # the doctored answers contradict the scene facts


def test_phantom_cli_audit_errors(tmp_path: Path) -> None:
    from vital_core.cli import main

    assert main(["phantom", "--audit", str(tmp_path)]) == 2  # no manifest: a clear error, exit 2
    assert main(["phantom", "--multihop-only", "--task", "legacy", "--out", str(tmp_path / "x")]) == 2
    assert main(["phantom", "--n", "5"]) == 2  # neither --out nor --audit


def test_legacy_task_is_unchanged_by_the_compositional_one() -> None:
    s = make_sample(45, 0, 128, task="legacy")
    assert s.template is None and s.modality.build.__name__ == "ct"
    assert not re.search(r"(largest|brightest) lesion", s.qa.question)


def test_captions_list_every_atlas_name_in_order_with_its_place_or_absence(
    gate_sets: tuple[Path, Path],
) -> None:
    """captions.jsonl (the perception stage's targets): one row per image, every host and lesion name of the
    modality's atlas in atlas order, and each present one with the place and tone its scene facts give."""
    from training.phantom.captions import caption_sentences
    from training.phantom.facts import region_phrase, third
    from training.phantom.modalities import MODALITIES

    fit, _ = gate_sets
    rows = [json.loads(x) for x in (fit / "captions.jsonl").read_text().splitlines()]
    manifest = [json.loads(x) for x in (fit / "manifest.jsonl").read_text().splitlines()]
    facts = {json.loads(x)["id"]: json.loads(x) for x in (fit / "scenes.jsonl").read_text().splitlines()}
    assert len(rows) == len(manifest) and [r["image"] for r in rows] == [r["image"] for r in manifest]
    by_name = {m.name: m for m in MODALITIES}
    for row, src in list(zip(rows, manifest))[:200]:
        atlas = ATLAS[by_name[row["modality"]].key]
        hosts, lesions = row["reasoning"]
        assert row["answer"] == f"{hosts} {lesions}" and row["question_type"] == "describe"
        for sentence, names in ((hosts, atlas.hosts), (lesions, atlas.lesions)):
            at = [re.search(rf"(?<![a-z]){re.escape(n)} ", sentence).start() for n in names]
            assert at == sorted(at), (sentence, names)  # atlas order, always
        present = {o["name"]: o for o in facts[src["id"]]["objects"]}
        for name in (*atlas.hosts, *atlas.lesions):
            if name not in present:
                assert re.search(rf"(?<![a-z]){re.escape(name)} absent", hosts + lesions)
            else:
                o = present[name]
                place = region_phrase(
                    third(o["cy"], ("upper", "middle", "lower")), third(o["cx"], ("left", "center", "right"))
                )
                assert not re.search(rf"(?<![a-z]){re.escape(name)} absent", hosts + lesions)
                assert re.search(
                    rf"(?<![a-z]){re.escape(name)} (in the [a-z ]+, )?{place},", hosts + lesions
                ), (
                    name,
                    place,
                )
        assert caption_sentences(facts[src["id"]], atlas, by_name[row["modality"]].contrast) == [
            hosts,
            lesions,
        ]


def test_holds_captions_name_each_hosts_lesions_and_change_nothing_else(gate_sets: tuple[Path, Path]) -> None:
    """`holds=True` (the E26 arm): each host structure names, right after its name, exactly the lesions whose
    facts put them inside it; removing those words gives the default caption back, and the lesions sentence is
    unchanged. `write_captions(..., name=)` writes beside captions.jsonl, which it leaves alone."""
    from training.phantom.captions import caption_sentences, write_captions
    from training.phantom.modalities import MODALITIES

    fit, _ = gate_sets
    before = (fit / "captions.jsonl").read_bytes()
    write_captions(fit, holds=True, name="captions-holds.jsonl")
    assert (fit / "captions.jsonl").read_bytes() == before
    rows = [json.loads(x) for x in (fit / "captions-holds.jsonl").read_text().splitlines()]
    plain = [json.loads(x) for x in before.decode().splitlines()]
    facts = {json.loads(x)["id"]: json.loads(x) for x in (fit / "scenes.jsonl").read_text().splitlines()}
    by_name = {m.name: m for m in MODALITIES}
    hosted = 0
    for row, ref in zip(rows, plain, strict=True):
        atlas = ATLAS[by_name[row["modality"]].key]
        hosts, lesions = row["reasoning"]
        assert lesions == ref["reasoning"][1] and row["id"] == ref["id"]
        objs = facts[row["id"].removesuffix("-cap")]["objects"]
        inside: dict[str, list[str]] = {}
        for n in atlas.lesions:  # atlas order, as the caption lists them
            o = next((o for o in objs if o["name"] == n), None)
            if o is not None and o.get("host"):
                inside.setdefault(o["host"], []).append(n)
        stripped = hosts
        for host, names in inside.items():
            words = "with " + " and ".join(f"the {n}" for n in names) + ", "
            assert f"{host} {words}" in hosts, (host, names, hosts)
            stripped = stripped.replace(f"{host} {words}", f"{host} ")
            hosted += 1
        assert stripped == ref["reasoning"][0]
        assert caption_sentences(
            facts[row["id"].removesuffix("-cap")], atlas, by_name[row["modality"]].contrast, True
        ) == [
            hosts,
            lesions,
        ]
    assert hosted > len(rows) // 4  # hosted scenes are common in format 5 (every organ-hop image)


def test_caption_rank_words_agree_with_every_chains_first_hop(tmp_path: Path) -> None:
    """Caption v3: each present lesion carries its size word and leftmost/uppermost flags among the scene's
    lesions, and on every lesion-hop question of a set the lesion the chain's hop 1 names is the one its
    image's caption tags with the question's superlative (one set of facts for perception and questions)."""
    from training.phantom import generate
    from training.phantom.compose import SUPERLATIVES, is_compositional
    from training.phantom.modalities import MODALITIES

    by_name = {m.name: m for m in MODALITIES}
    fit = tmp_path / "lesion-hop"
    generate(
        fit, 216, 0, 128, 2, splits=(1.0, 0.0, 0.0), progress=False, task="lesion-hop", multihop_only=True
    )
    caps = {json.loads(x)["image"]: json.loads(x) for x in (fit / "captions.jsonl").read_text().splitlines()}
    checked = 0
    for line in (fit / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        lesions_sentence = caps[row["image"]]["reasoning"][1]
        tags = {}
        for item in lesions_sentence.removeprefix("Lesions: ").rstrip(".").split("; "):
            if not item.endswith(" absent"):
                parts = item.split(", ")
                words = [w for w in parts if w in ("largest", "smallest", "mid-sized", "only lesion")]
                assert len(words) == 1, item
                name = next(
                    n for n in ATLAS[by_name[row["modality"]].key].lesions if item.startswith(n + " ")
                )
                tags[name] = set(parts[parts.index(words[0]) :])
        if len(tags) >= 2:
            assert (
                sum("largest" in t for t in tags.values()) == 1
                and sum("smallest" in t for t in tags.values()) == 1
            )
            assert (
                sum("leftmost" in t for t in tags.values()) == 1
                and sum("uppermost" in t for t in tags.values()) == 1
            )
        if not is_compositional(row["question"]):
            continue
        sup = next(w for w in SUPERLATIVES if f"the {w} lesion" in row["question"])
        named = re.match(rf"The {sup} lesion is the (.+)\.$", row["reasoning"][0]).group(1)
        holders = [n for n, t in tags.items() if sup in t]
        assert holders == [named], (row["id"], row["reasoning"][0], lesions_sentence)
        checked += 1
    assert checked == 216, checked
