"""Training the real architecture (HF-layout stand-ins, bf16 checkpoints): every precision, DDP and FSDP
runs that match one process, resume under FSDP, and the exported bundle (merged in fp32, cast once)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from training.recipe import Recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def standin_data(phantom_dir, standin_config, tmp_path_factory):
    """A 16-sample manifest (K = 1 and 2), its ROI store from the stand-in encoder, the model YAML."""
    from index_builder.encoder import load_encoder
    from index_builder.roi import ROIParams
    from index_builder.samples import read_manifest
    from index_builder.store import extract_to_store

    lines = [json.loads(x) for x in (phantom_dir / "manifest.jsonl").read_text().splitlines()]
    chosen = [x for x in lines if x.get("split", "train") == "train" and len(x["reasoning"]) in (1, 2)][:16]
    manifest = phantom_dir / "standin-manifest.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in chosen))
    out = tmp_path_factory.mktemp("standin")
    roi = out / "roi"
    enc = load_encoder(standin_config.encoder, device="cpu", seed=0)
    extract_to_store(
        enc, read_manifest(manifest, require_mask=True), roi, ROIParams(), spec={"t": 1}, progress=False
    )
    cfg = out / "model.yaml"
    c = standin_config
    c.heads.vp_dropout = 0.0  # deterministic: runs of different world sizes must match
    c.to_yaml(cfg)
    return {"manifest": manifest, "roi": roi, "model": cfg}


def _recipe(path: Path, data: dict, **extra) -> Path:
    d = {
        "name": "standin",
        "output_dir": str(path / "run"),
        "model": {"config": str(data["model"])},
        "data": {"manifest": str(data["manifest"]), "roi_store": str(data["roi"]), "max_answer_tokens": 8},
        "batch_size": 2,
        "curriculum": {"kind": "full_mix", "epochs": [0.5]},
        "checkpoint": {"every_steps": 2, "keep_last": 2},
        "log_every": 1,
        "optim": {"lr": 1e-3, "warmup_ratio": 0.0},
    }
    for key, value in extra.items():
        node = d
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path.mkdir(parents=True, exist_ok=True)
    (path / "recipe.yaml").write_text(yaml.safe_dump(d))
    return path / "recipe.yaml"


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("precision", ["auto", "bf16", "fp32"])
def test_one_process_every_precision(tmp_path, standin_data, precision):
    """A bf16 checkpoint trains at every precision: trainable weights and AdamW moments fp32."""
    from training.trainer import Trainer

    t = Trainer(
        Recipe.from_yaml(_recipe(tmp_path, standin_data, precision=precision, **{"data.max_samples": 4}))
    )
    result = t.run()
    rows = _rows(tmp_path / "run")
    assert result["steps"] >= 1 and all(torch.isfinite(torch.tensor([r["total"]])).all() for r in rows)
    assert any("sem" in r and "vis" in r for r in rows)
    trainable = [p for p in t.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    frozen = {p.dtype for p in t.model.core.parameters() if not p.requires_grad}
    assert frozen == ({torch.float32} if precision == "fp32" else {torch.bfloat16})
    final = load_file(tmp_path / "run" / "final.safetensors")
    assert all(v.dtype == torch.float32 for v in final.values())
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in final.items())


def _torchrun(recipe: Path, nproc: int, *args: str) -> subprocess.CompletedProcess:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            port,
            "-m",
            "vital_core.cli",
            "train",
            "--recipe",
            str(recipe),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


COMMON = {"precision": "fp32", "data.max_samples": 8, "curriculum.epochs": [1.0]}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, standin_data):
    """The reference: 1 process × batch 2 × grad_accum 2, fp32 compute."""
    from training.trainer import Trainer

    path = tmp_path_factory.mktemp("one")
    Trainer(Recipe.from_yaml(_recipe(path, standin_data, grad_accum=2, **COMMON))).run()
    return _rows(path / "run")


def _assert_same_losses(a: list[dict], b: list[dict]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b] and [r["k"] for r in a] == [r["k"] for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() >= {"total", "task", "sem", "vis"} and rb.keys() >= {"total", "task", "sem", "vis"}
        for key in ("total", "task", "sem", "vis"):
            assert abs(ra[key] - rb[key]) < 1e-4, (key, ra, rb)


def test_ddp_two_ranks_match_one_process(tmp_path, standin_data, one_process):
    """2 ranks × batch 2 == 1 process × batch 2 × grad_accum 2 (the same global batch), fp32 compute."""
    proc = _torchrun(_recipe(tmp_path, standin_data, distributed="ddp", **COMMON), 2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    _assert_same_losses(one_process, _rows(tmp_path / "run"))


def test_fsdp_two_ranks_resume_and_export(tmp_path, standin_data, one_process, images, questions):
    """An FSDP run killed after step 1 and resumed logs what one process logs; its export verifies,
    loads and answers."""
    from vital_core.bundle import load_bundle, verify_bundle

    f = _recipe(tmp_path, standin_data, distributed="fsdp", **{**COMMON, "checkpoint.every_steps": 1})
    stop = _torchrun(f, 2, "--stop-after-steps", "1")
    assert stop.returncode == 0, stop.stderr[-4000:]
    assert (tmp_path / "run" / "ckpt-00000001").is_dir()
    proc = _torchrun(f, 2, "--resume", "--export", str(tmp_path / "bundle"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resuming from" in proc.stderr
    _assert_same_losses(one_process, _rows(tmp_path / "run"))  # no step logged twice, same numbers
    verify_bundle(tmp_path / "bundle")
    m = load_bundle(tmp_path / "bundle", scaffold=True)
    assert m.core.lm_head.weight.dtype == torch.bfloat16  # written in the checkpoint's dtype
    assert m.scaffold is not None
    ans = m.answer(images[:1], questions[:1], k=2, max_new_tokens=4)
    assert ans[0].k == 2 and len(ans[0].tokens) <= 4
