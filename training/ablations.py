"""The paper's ablations (Tables 2, 3, 13 and §C.5) at toy size: train each arm, score it, tabulate.

Every arm warm-starts from the same stage-0 backbone bundle, trains the latent recipe (`base_recipe`) on
the same data with the same seed, changing one thing; arms shared by several tables (the default VITAL
recipe) are trained once. Each finished arm writes `OUTPUT/arms/NAME/result.json` and is skipped on a
re-run (an unfinished one resumes from its last trainer checkpoint). Results: `RESULTS.json` and
`RESULTS.md`. Sizes and arms are documented in docs/evaluation.md.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vital_core.config import ConfigError, deep_merge, load_dataclass

log = logging.getLogger("vital.ablations")

TABLES = ("supervision", "depth", "curriculum", "projector", "visual_target")


@dataclass(frozen=True)
class Arm:
    """One trained (or, for the backbone row, untrained) variant."""

    name: str
    label: str
    changes: dict[str, Any] = field(default_factory=dict)
    """Nested recipe fields this arm sets on top of the base recipe."""
    k: int | None = None
    """Fixed K for training (k_override) and evaluation; None = each sample's own depth / eval_k."""
    train: bool = True


_VITAL = Arm("vital", "VITAL (the base recipe: 3-phase, res-MLP+LN, its visual target)")
_VP = {
    "linear": "(a) Linear",
    "mlp": "(b) MLP",
    "mlp_ln": "(c) MLP + LN",
    "transformer": "(e) Transformer block",
}
ARMS: dict[str, list[Arm]] = {
    "supervision": [
        Arm("backbone", "(a) Stage 0 at K = 0 (explicit CoT when stage 0 writes its reasoning)", train=False),
        Arm("task_only", "(b) Task-only", {"loss": {"semantic": False, "visual": False}}),
        Arm("semantic", "(c) +Semantic", {"loss": {"visual": False}}),
        Arm("visual", "(d) +Visual", {"loss": {"semantic": False}}),
        dataclasses.replace(_VITAL, label="(e) VITAL"),
    ],
    "depth": [Arm(f"k{k}", f"K = {k}", {"k_override": k}, k=k) for k in range(5)],
    "curriculum": [
        Arm("full_mix", "(a) Full-mix", {"curriculum": {"kind": "full_mix"}}),
        Arm("two_phase", "(b) 2-Phase", {"curriculum": {"kind": "two_phase"}}),
        dataclasses.replace(_VITAL, label="(c) 3-Phase"),
        Arm("reverse", "(d) Reverse", {"curriculum": {"kind": "reverse"}}),
    ],
    "projector": [
        *[
            Arm(f"vp_{v}", lbl, {"model": {"overrides": {"heads": {"vp_variant": v}}}})
            for v, lbl in _VP.items()
        ],
        dataclasses.replace(_VITAL, label="(d) Res. MLP + LN (ours)"),
    ],
    "visual_target": [
        Arm("shared", "(a) Shared (paper)", {"loss": {"visual_target": "shared"}}),
        Arm("per_step", "(b) Per-step (interpolated)", {"loss": {"visual_target": "per_step"}}),
        # configs/tiny.yaml's own target, so the VITAL run (trained once for every table) is this row
        dataclasses.replace(_VITAL, label="(c) Per-hop: a mask per step (the base recipe, VITAL)"),
    ],
}


@dataclass
class AblationConfig:
    """One ablation sweep (configs/ablations-tiny.yaml)."""

    name: str = "ablations-tiny"
    output_dir: str = "runs/ablations-tiny"
    """Per-arm runs and results (resumable)."""
    results: str = "bench/results/ablations-tiny"
    """Write RESULTS.json and RESULTS.md."""
    base_recipe: str = "configs/tiny.yaml"
    """The latent recipe every arm starts from."""
    init_bundle: str = "data/tiny-build/stage0/bundle"
    """The stage-0 backbone bundle every arm warm-starts from."""
    manifest: str = "data/tiny-build/phantom/manifest.jsonl"
    roi_store: str = "data/tiny-build/roi"
    seed: int = 0
    train_samples: int | None = 2000
    """First N training samples (None = all)."""
    epochs: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.5])
    """Epochs per curriculum phase (paper 5, 5, 10; full-mix trains their sum in one phase)."""
    batch_size: int = 16
    eval_split: str = "test"
    eval_samples: int | None = 300
    eval_k: str = "auto"
    """K at evaluation for arms without a fixed K: an integer, auto (question classifier) or sample."""
    analysis_k: int = 4
    """K for the collapse matrix and per-step grounding (arms with a fixed K use theirs)."""
    analysis_samples: int = 64
    tables: list[str] = field(default_factory=lambda: list(TABLES))
    arms: list[str] = field(default_factory=list)
    """Only these arms (empty: every arm of `tables`)."""
    recipe: dict[str, Any] = field(default_factory=dict)
    """Nested recipe fields applied to every arm (before the arm's own change)."""
    keep_checkpoints: bool = False
    """Keep each arm's trainer checkpoints after it finished (final weights are always kept)."""
    multihop_manifest: str | None = None
    """A multi-hop question set (e.g. the held-out `vital phantom --multihop-only` set): every arm is also
    scored on its first `multihop_samples` questions at K = 4 and K = 0, with 95 % intervals."""
    multihop_samples: int = 300
    multihop_split: str = "test"

    def __post_init__(self) -> None:
        bad = [t for t in self.tables if t not in TABLES]
        if bad:
            raise ConfigError(f"tables: unknown {bad}; choose from {', '.join(TABLES)}")
        known = {a.name for arms in ARMS.values() for a in arms}
        if [a for a in self.arms if a not in known]:
            raise ConfigError(
                f"arms: unknown {[a for a in self.arms if a not in known]}; known: {sorted(known)}"
            )

    @classmethod
    def from_yaml(cls, path: str | Path) -> AblationConfig:
        """Load; unknown keys are errors."""
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        return load_dataclass(cls, data)


def selected_arms(cfg: AblationConfig) -> list[Arm]:
    """The distinct arms to run, in table order."""
    seen: dict[str, Arm] = {}
    for t in cfg.tables:
        for a in ARMS[t]:
            if (not cfg.arms or a.name in cfg.arms) and a.name not in seen:
                seen[a.name] = a
    return list(seen.values())


def arm_recipe(cfg: AblationConfig, arm: Arm) -> dict[str, Any]:
    """The recipe dict an arm trains with."""
    base = yaml.safe_load(Path(cfg.base_recipe).read_text()) or {}
    fixed = {
        "name": f"{cfg.name}-{arm.name}",
        "output_dir": str(Path(cfg.output_dir) / "arms" / arm.name / "run"),
        "seed": cfg.seed,
        "model": {"init_bundle": cfg.init_bundle},
        "data": {"manifest": cfg.manifest, "roi_store": cfg.roi_store, "max_samples": cfg.train_samples},
        "batch_size": cfg.batch_size,
        "curriculum": {"epochs": list(cfg.epochs)},
    }
    return deep_merge(
        deep_merge(deep_merge(base, fixed), copy.deepcopy(cfg.recipe)), copy.deepcopy(arm.changes)
    )


def _eval_spec(cfg: AblationConfig, arm: Arm) -> dict[str, Any]:
    return {
        "split": cfg.eval_split,
        "n": cfg.eval_samples,
        "k": arm.k if arm.k is not None else cfg.eval_k,
        "analysis_k": arm.k if arm.k is not None else cfg.analysis_k,
        "analysis_n": cfg.analysis_samples,
        "multihop": cfg.multihop_manifest,
        "multihop_n": cfg.multihop_samples,
        "multihop_split": cfg.multihop_split,
    }


def run_arm(cfg: AblationConfig, arm: Arm) -> dict[str, Any]:
    """Train (unless done) and score one arm; returns and writes its result."""
    from training.data.manifest import load_manifest

    recipe = arm_recipe(cfg, arm) if arm.train else {"init_bundle": cfg.init_bundle}
    spec = {"recipe": recipe, "eval": _eval_spec(cfg, arm)}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
    out = Path(cfg.output_dir) / "arms" / arm.name
    done = out / "result.json"
    if done.is_file():
        prev = json.loads(done.read_text())
        if prev.get("spec_hash") == digest:
            log.info("arm %s already done; skipped", arm.name)
            return prev
        log.warning("arm %s: settings changed since its result; re-running", arm.name)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train: dict[str, Any] = {}
    if arm.train:
        from training.recipe import Recipe
        from training.trainer import Trainer

        trainer = Trainer(Recipe.from_dict(recipe), mode="resume")  # an unfinished arm continues
        train = trainer.run()
        model = trainer.model
    else:
        from vital_core.bundle import load_bundle

        model = load_bundle(cfg.init_bundle)
    train_s = time.perf_counter() - t0
    samples = [s for s in load_manifest(cfg.manifest) if s.split == cfg.eval_split]
    result = {
        "arm": arm.name,
        "label": arm.label,
        "spec_hash": digest,
        "spec": spec,
        "train": {**train, "seconds": round(train_s, 1)},
        **evaluate_arm(model, samples, _eval_spec(cfg, arm), k0=not arm.train),
    }
    result["eval_seconds"] = round(time.perf_counter() - t0 - train_s, 1)
    done.write_text(json.dumps(result, indent=2))
    if arm.train and not cfg.keep_checkpoints:
        for ck in (out / "run").glob("ckpt-*"):
            shutil.rmtree(ck, ignore_errors=True)
    return result


def evaluate_arm(model: Any, samples: list, spec: dict[str, Any], k0: bool = False) -> dict[str, Any]:
    """Answer metrics on `spec['n']` samples, then collapse and grounding at the analysis K."""
    from training.analysis import collapse_summary, encoder_for, grounding_from_predictions, step_similarity
    from training.eval.evaluate import predict, score
    from vital_core.qtypes import parse_k

    k = 0 if k0 else parse_k(spec["k"])
    # at K = 0 a stage 0 that writes its reasoning gets room for the chain (a direct one stops at its EOS)
    report = score(predict(model, samples[: spec["n"]], k=k, max_new_tokens=160 if k0 else None))
    res: dict[str, Any] = {"eval": report, "collapse": None, "grounding": None}
    if spec.get("multihop"):
        res["multihop"] = multihop_scores(model, spec, k0)
    ka = 0 if k0 else int(spec["analysis_k"])
    if ka < 1:
        return res
    preds = predict(model, samples[: spec["analysis_n"]], k=ka, keep_latents=True)
    if ka >= 2:
        res["collapse"] = collapse_summary(step_similarity([p.latents for p in preds]), len(preds))
    if model.scaffold is not None:
        enc = encoder_for(model.config)
        res["grounding"] = grounding_from_predictions(preds, model.scaffold.vp, enc)
    return res


def multihop_scores(model: Any, spec: dict[str, Any], k0: bool) -> dict[str, Any]:
    """Closed accuracy with 95 % intervals on the multi-hop set: at K = 0 (with room for a written chain) and,
    for latent arms, at K = 4, and their paired difference."""
    from training.analysis import multihop_accuracy
    from training.data.manifest import load_manifest, normalize_answer
    from training.eval.evaluate import predict
    from training.eval.stats import paired_difference
    from training.phantom.multihop import is_multihop

    items = [
        s
        for s in load_manifest(spec["multihop"])
        if s.split == spec["multihop_split"] and is_multihop(s.question_type, s.answer, s.question)
    ][: spec["multihop_n"]]
    out: dict[str, Any] = {"n": len(items)}
    hits = {}
    for k in (0,) if k0 else (0, 4):
        preds = predict(model, items, k=k, max_new_tokens=160 if k == 0 else None)
        out[f"k{k}"] = multihop_accuracy(preds)["interval"]
        out[f"k{k}_tokens"] = round(sum(p.tokens for p in preds) / len(preds), 2)
        hits[k] = [normalize_answer(p.answer) == normalize_answer(p.item.answer) for p in preds]
    if 4 in hits:
        out["k4_minus_k0"] = paired_difference(hits[4], hits[0])
    return out


def _fmt(x: float | None, pct: bool = True) -> str:
    return "–" if x is None else (f"{100 * x:.1f}" if pct else f"{x:.3f}")


def _ci(r: dict | None) -> str:
    """An accuracy with its 95 % interval, or a dash."""
    return "–" if not r else f"{100 * r['accuracy']:.1f} [{100 * r['lo']:.1f}, {100 * r['hi']:.1f}]"


def tables_markdown(cfg: AblationConfig, results: dict[str, dict[str, Any]]) -> str:
    """One markdown table per ablation group, shaped like the paper's Tables 2, 3, 13 and §C.5."""
    titles = {
        "supervision": "Dual supervision (paper Table 2)",
        "depth": "Reasoning depth K (paper Table 3)",
        "curriculum": "Curriculum (paper Table 3)",
        "projector": "Visual projector (paper Table 13, §C.2)",
        "visual_target": "Shared vs per-step visual target (paper §C.5)",
    }
    lines = [
        f"## {cfg.name}",
        "",
        f"Phantom {cfg.eval_split} split (first {cfg.eval_samples}); {cfg.train_samples} training samples, "
        f"epochs/phase {cfg.epochs}, seed {cfg.seed}, warm start {cfg.init_bundle}. Closed acc. is the "
        "paper's 'In-D.' column; collapse = mean off-diagonal inter-step cosine (§C.6); pointing / IoU "
        "at the last latent step (§C.7).",
        "",
    ]
    for t in cfg.tables:
        arms = [a for a in ARMS[t] if a.name in results]
        if not arms:
            continue
        lines += [
            f"### {titles[t]}",
            "",
            "| variant | closed acc. | token-F1 (all) | open token-F1 | multi-hop K=4 | multi-hop K=0 | collapse "
            "| pointing@K | IoU@K | train s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for a in arms:
            r = results[a.name]
            o = r["eval"]["overall"]
            g = (r.get("grounding") or {}).get("per_step") or [{}]
            c = r.get("collapse") or {}
            mh = r.get("multihop") or {}
            lines.append(
                f"| {a.label} | {_fmt(o['closed_accuracy'])} | {_fmt(o['token_f1'])} | {_fmt(o['open_token_f1'])} "
                f"| {_ci(mh.get('k4'))} | {_ci(mh.get('k0'))} "
                f"| {_fmt(c.get('mean_offdiag'), False)} | {_fmt(g[-1].get('pointing'))} | {_fmt(g[-1].get('iou'))} "
                f"| {r['train']['seconds']:.0f} |"
            )
        lines.append("")
    return "\n".join(lines)


def run_ablations(cfg: AblationConfig) -> dict[str, Any]:
    """Run (or resume) every selected arm, then write RESULTS.json and RESULTS.md."""
    init = Path(cfg.init_bundle)
    if not (init / "vital.yaml").is_file():
        raise FileNotFoundError(
            f"{init}: no stage-0 bundle; build it with `vital build-tiny-bundle` (it writes "
            "data/tiny-build/stage0/bundle) or set init_bundle"
        )
    results = {}
    arms = selected_arms(cfg)
    for i, arm in enumerate(arms):
        log.info("ablation arm %d/%d: %s", i + 1, len(arms), arm.name)
        results[arm.name] = run_arm(cfg, arm)
    res = Path(cfg.results)
    res.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "config": dataclasses.asdict(cfg),
        "tables": {t: [a.name for a in ARMS[t] if a.name in results] for t in cfg.tables},
        "arms": results,
    }
    res.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    res.with_suffix(".md").write_text(tables_markdown(cfg, results))
    return summary
