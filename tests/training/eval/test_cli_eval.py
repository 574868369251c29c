"""`vital eval` end to end on a random tiny bundle: downloaded layouts, predictions file, rescore, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vital_core.cli import main


@pytest.fixture(scope="module")
def random_bundle(tmp_path_factory) -> Path:
    from vital_core.bundle import save_bundle
    from vital_core.model import build_model
    from vital_core.presets import tiny

    path = tmp_path_factory.mktemp("bundle") / "b"
    save_bundle(build_model(tiny(), lora=True, scaffold=True), path)
    return path


@pytest.mark.slow
def test_vital_eval_layouts_predictions_and_rescore(
    random_bundle, vqa_rad, vqa_rad_hf, pmc_vqa_v2, gemex_v1, phantom_dir, tmp_path, capsys
):
    args = ["eval", "--bundle", str(random_bundle), "--max-new-tokens", "3"]
    out = tmp_path / "rad.json"
    assert main([*args, "--benchmark", "vqa-rad", "--data", str(vqa_rad), "--out", str(out), "--k", "1"]) == 0
    rep = json.loads(out.read_text())
    assert (
        rep["overall"]["n"] == 3
        and rep["overall"]["closed_n"] == 1
        and set(rep["by_modality"]) == {"CHEST", "HEAD"}
    )
    assert out.with_suffix(".md").read_text().startswith("### b on vqa-rad test")
    rows = [json.loads(x) for x in (tmp_path / "rad.predictions.jsonl").read_text().splitlines()]
    assert (
        [r["id"] for r in rows] == ["1", "2", "4"]
        and rows[0]["k"] == 1
        and rep["predictions"].endswith(".jsonl")
    )
    assert main(["eval", "rescore", rep["predictions"], "--out", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["overall"] == rep["overall"] and again["by_question_type"] == rep["by_question_type"]

    assert main([*args, "--benchmark", "vqa-rad", "--data", str(vqa_rad_hf), "--limit", "2"]) == 0
    assert "| yes/no | 2 | 2 |" in capsys.readouterr().out
    assert main([*args, "--benchmark", "pmc-vqa", "--data", str(pmc_vqa_v2)]) == 0
    assert "| choice | 2 | 2 |" in capsys.readouterr().out

    g = tmp_path / "gemex.json"
    assert (
        main(
            [
                *args,
                "--benchmark",
                "gemex",
                "--data",
                str(gemex_v1),
                "--k",
                "2",
                "--grounding",
                "--out",
                str(g),
            ]
        )
        == 0
    )
    grounding = json.loads(g.read_text())["grounding"]
    assert grounding["n"] == 4 and [s["step"] for s in grounding["per_step"]] == [1, 2]
    assert all(0 <= s["pointing"] <= 1 and 0 <= s["box_iou"] <= 1 for s in grounding["per_step"])
    assert all(
        0 <= s["region_box_iou"] <= 1 and s["region_acc50"] in (0, 0.25, 0.5, 0.75, 1)
        for s in grounding["per_step"]
    )
    rows = [json.loads(x) for x in (tmp_path / "gemex.predictions.jsonl").read_text().splitlines()]
    assert all(len(r["grounding"]) == 2 and r["boxes"] for r in rows)
    assert main(["eval", "rescore", str(tmp_path / "gemex.predictions.jsonl")]) == 0
    assert "| h2 | 4 |" in capsys.readouterr().out

    man = str(phantom_dir / "manifest.jsonl")
    assert (
        main([*args, "--manifest", man, "--limit", "4", "--k", "sample", "--out", str(tmp_path / "ft.json")])
        == 0
    )
    assert json.loads((tmp_path / "ft.json").read_text())["overall"]["n"] == 4


def test_bad_inputs_are_one_line_errors_before_the_model_loads(vqa_rad, pmc_vqa, tmp_path, capsys):
    # the bundle does not exist: every message below is about the data, so it came before any model load
    args = ["eval", "--bundle", str(tmp_path / "no-bundle")]
    cases = [
        ([*args, "--benchmark", "slake", "--data", str(tmp_path / "missing")], "not found"),
        ([*args, "--benchmark", "slake"], "--data is required"),
        ([*args, "--benchmark", "pathvqa", "--data", str(vqa_rad), "--format", "csv"], "unknown --format"),
        (
            [*args, "--benchmark", "vqa-rad", "--data", str(vqa_rad), "--image-dir", str(tmp_path)],
            "images missing",
        ),
        ([*args, "--benchmark", "vqa-rad", "--data", str(vqa_rad), "--grounding"], "reference boxes"),
        ([*args, "--benchmark", "pmc-vqa", "--data", str(pmc_vqa), "--k", "sample"], "--k sample needs"),
        (["eval", "rescore", str(tmp_path / "none.jsonl")], "not found"),
    ]
    for argv, msg in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1 and "Traceback" not in err, (argv, err)
