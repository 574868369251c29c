"""`vital bench --serving only`: the arms run end to end and save their JSON + markdown."""

from __future__ import annotations

import json

import pytest
import torch

from vital_core.cli import main


@pytest.mark.slow
def test_serving_arms_run_and_save(tmp_path):
    threads = torch.get_num_threads()
    try:
        rc = main(
            [
                "bench",
                "--preset",
                "tiny",
                "--serving",
                "only",
                "--answer-tokens",
                "2",
                "--repeats",
                "1",
                "--warmup",
                "0",
                "--threads",
                "1",
                "--out",
                str(tmp_path),
            ]
        )
    finally:
        torch.set_num_threads(threads)  # --threads is process-wide
    assert rc == 0
    res = json.loads((tmp_path / "serving-tiny-cpu-cpu.json").read_text())
    modes = {r["mode"]: r for r in res["step_modes"]}
    assert set(modes) == {"dynamic", "static"} and modes["dynamic"]["e2e_vs_dynamic"] == 1.0
    assert all(
        r["e2e_ms"] > 0 and r["decode_token_ms"] > 0 and r["latent_step_ms"] > 0 for r in modes.values()
    )
    p = res["prefix"]
    assert p["questions"] == 10 and p["warm_vs_cold"] == pytest.approx(
        p["warm_total_ms"] / p["cold_total_ms"]
    )
    md = (tmp_path / "serving-tiny-cpu-cpu.md").read_text()
    assert "CUDA graphs: not measured" in md and "Prefix cache, 10 questions" in md
