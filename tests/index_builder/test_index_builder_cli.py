"""The index_builder subcommands through their own register() + argparse, as `vital` will call them."""

from __future__ import annotations

import json

from index_builder.cli import main
from index_builder.faiss_index import PatchIndex
from index_builder.store import FeatureStore


def test_extract_roi_command(synthetic_manifest, tmp_path, capsys):
    rc = main(
        [
            "extract-roi",
            str(synthetic_manifest),
            "--out",
            str(tmp_path / "s"),
            "--shard-size",
            "5",
            "--no-progress",
        ]
    )
    assert rc == 0 and "feature store" in capsys.readouterr().out
    assert len(FeatureStore(tmp_path / "s")) == 12


def test_build_index_command(synthetic_manifest, tmp_path, capsys):
    rc = main(["build-index", str(synthetic_manifest), "--out", str(tmp_path / "i"), "--no-progress"])
    assert rc == 0 and "Flat" in capsys.readouterr().out
    assert len(PatchIndex.load(tmp_path / "i")) == 12 * 256


def test_roi_grid_command(tmp_path, capsys):
    rc = main(
        [
            "roi-grid",
            "--out",
            str(tmp_path / "g"),
            "--n",
            "8",
            "--taus",
            "0.02",
            "0.2",
            "--margins",
            "0",
            "0.1",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "chosen: tau=" in out and "coverage%" in out
    data = json.loads((tmp_path / "g" / "grid.json").read_text())
    assert len(data["rows"]) == 4 and data["chosen"]["tau"] in (0.02, 0.2)
    for metric in ("coverage", "intensity", "snr"):
        assert (tmp_path / "g" / f"grid_{metric}.png").stat().st_size > 1000


def test_user_errors_exit_2(tmp_path, capsys):
    assert main(["extract-roi", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "s")]) == 2
    assert "cannot read manifest" in capsys.readouterr().err
    assert main(["build-index", str(tmp_path / "nothing"), "--out", str(tmp_path / "i")]) == 2
    assert "neither a folder" in capsys.readouterr().err
    assert main(["build-index", str(tmp_path), "--out", str(tmp_path / "i"), "--factory", "Bogus"]) == 2
