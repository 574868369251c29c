"""Ablation runner: arm definitions, recipe composition, and a two-arm smoke run that resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.ablations import ARMS, AblationConfig, arm_recipe, run_ablations, selected_arms

REPO = Path(__file__).parents[2]


def test_repo_config_covers_every_table_and_arm():
    cfg = AblationConfig.from_yaml(REPO / "configs/ablations-tiny.yaml")
    names = [a.name for a in selected_arms(cfg)]
    # VITAL (the base recipe, per-hop target) is shared by four tables and trained once; the visual-target
    # table adds the paper's shared target as its own arm
    assert len(names) == len(set(names)) == 19
    assert {
        "backbone",
        "task_only",
        "semantic",
        "visual",
        "vital",
        "k0",
        "k4",
        "reverse",
        "vp_linear",
        "vp_transformer",
        "per_step",
    } <= set(names)
    assert [a.k for a in ARMS["depth"]] == [0, 1, 2, 3, 4]


def test_arm_recipes_change_one_thing():
    from training.recipe import Recipe

    cfg = AblationConfig(base_recipe=str(REPO / "configs/tiny.yaml"), init_bundle="S0", train_samples=10)
    by = {a.name: a for arms in ARMS.values() for a in arms}
    r = {
        n: Recipe.from_dict(arm_recipe(cfg, by[n]))
        for n in ("vital", "task_only", "k2", "vp_mlp", "per_step")
    }
    assert r["vital"].model.init_bundle == "S0" and r["vital"].data.max_samples == 10
    assert r["vital"].loss.semantic and r["vital"].loss.visual and r["vital"].k_override is None
    assert not r["task_only"].loss.semantic and not r["task_only"].loss.visual
    assert r["k2"].k_override == 2 and r["per_step"].loss.visual_target == "per_step"
    assert r["vp_mlp"].model.overrides == {"heads": {"vp_variant": "mlp"}}
    assert r["vital"].curriculum.epochs == [0.25, 0.25, 0.5]


def test_config_rejects_unknown_arms_and_keys(tmp_path):
    from vital_core.config import ConfigError

    with pytest.raises(ConfigError, match="nope"):
        AblationConfig(arms=["nope"])
    (tmp_path / "a.yaml").write_text("name: x\nepoch: [1]\n")
    with pytest.raises(ConfigError, match="epoch"):
        AblationConfig.from_yaml(tmp_path / "a.yaml")


@pytest.fixture(scope="module")
def stage0_and_roi(phantom_dir, tmp_path_factory):
    """A random 'stage-0' bundle and ROI features for the first training samples."""
    from index_builder.encoder import load_encoder
    from index_builder.roi import ROIParams
    from index_builder.samples import read_manifest
    from index_builder.store import extract_to_store
    from training.data.manifest import load_manifest
    from vital_core.bundle import save_bundle
    from vital_core.model import build_model
    from vital_core.presets import tiny

    root = tmp_path_factory.mktemp("abl")
    save_bundle(build_model(tiny(), lora=True, scaffold=True), root / "stage0")
    ids = {s.id for s in load_manifest(phantom_dir / "manifest.jsonl") if s.split == "train"}
    first = [s.id for s in load_manifest(phantom_dir / "manifest.jsonl") if s.id in ids][:16]
    recs = [r for r in read_manifest(phantom_dir / "manifest.jsonl", require_mask=True) if r.id in set(first)]
    extract_to_store(
        load_encoder(tiny().encoder, device="cpu", seed=0),
        recs,
        root / "roi",
        ROIParams(),
        spec={"test": 1},
        progress=False,
    )
    return root


def test_two_arm_smoke_run_and_resume(stage0_and_roi, phantom_dir, tmp_path, capsys):
    from vital_core.cli import main

    root = stage0_and_roi
    cfg = {
        "output_dir": str(tmp_path / "runs"),
        "results": str(tmp_path / "res" / "abl"),
        "base_recipe": str(REPO / "configs/tiny.yaml"),
        "init_bundle": str(root / "stage0"),
        "manifest": str(phantom_dir / "manifest.jsonl"),
        "roi_store": str(root / "roi"),
        "train_samples": 16,
        "epochs": [0.5, 0.5, 0.5],
        "batch_size": 4,
        "eval_samples": 6,
        "analysis_samples": 4,
        "arms": ["task_only", "vp_linear"],
    }
    f = tmp_path / "abl.yaml"
    f.write_text(json.dumps(cfg))
    assert main(["eval", "ablations", "--config", str(f)]) == 0
    res = json.loads((tmp_path / "res" / "abl.json").read_text())
    assert set(res["arms"]) == {"task_only", "vp_linear"}
    lin = res["arms"]["vp_linear"]
    assert (
        lin["train"]["steps"] > 0 and "vis" in lin["train"] and "vis" not in res["arms"]["task_only"]["train"]
    )
    assert len(lin["collapse"]["matrix"]) == 4 and len(lin["grounding"]["per_step"]) == 4
    assert lin["eval"]["overall"]["n"] == 6
    md = (tmp_path / "res" / "abl.md").read_text()
    assert "| (b) Task-only |" in md and "| (a) Linear |" in md
    mtime = (tmp_path / "runs" / "arms" / "vp_linear" / "result.json").stat().st_mtime
    capsys.readouterr()
    summary = run_ablations(AblationConfig(**cfg))  # finished arms are skipped
    assert (tmp_path / "runs" / "arms" / "vp_linear" / "result.json").stat().st_mtime == mtime
    assert summary["arms"]["vp_linear"]["spec_hash"] == lin["spec_hash"]
    assert main(["eval", "ablations", "--config", str(f), "--list"]) == 0
    assert "vp_linear" in capsys.readouterr().out
