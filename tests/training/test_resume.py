"""Checkpoints and run directories (issue 27): DCP checkpoints written by 2 FSDP ranks resume on 2 and on
1 process; older checkpoints still load or say why not; a new run never overwrites an earlier one."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from training.checkpoint import CheckpointError, Layout, position
from training.recipe import Recipe

TOL = 1e-4
"""fp32 tolerance on logged losses between runs that sum the same gradients in another order."""


def _recipe(path: Path, phantom_dir: Path, roi_store: Path, max_samples: int = 24, **extra) -> Path:
    """A small tiny-model run: one full_mix phase, a checkpoint every 2 steps, deterministic (no dropout)."""
    data = {
        "name": "resume",
        "output_dir": str(path / "run"),
        "model": {"preset": "tiny", "overrides": {"lora": {"dropout": 0.0}, "heads": {"vp_dropout": 0.0}}},
        "data": {
            "manifest": str(phantom_dir / "manifest.jsonl"),
            "roi_store": str(roi_store),
            "max_samples": max_samples,
        },
        "batch_size": 2,
        "precision": "fp32",
        "curriculum": {"kind": "full_mix", "epochs": [1.0]},
        "checkpoint": {"every_steps": 2, "keep_last": 2},
        "log_every": 1,
        "optim": {"lr": 5e-3},
        **extra,
    }
    path.mkdir(parents=True, exist_ok=True)
    (path / "recipe.yaml").write_text(yaml.safe_dump(data))
    return path / "recipe.yaml"


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _vital_train(recipe: Path, nproc: int, *args: str) -> subprocess.CompletedProcess:
    """`vital train` in `nproc` gloo processes under torchrun (or one plain process)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "vital_core.cli"]
    else:
        with socket.socket() as sock:  # torchrun's static rendezvous needs a concrete free port
            sock.bind(("127.0.0.1", 0))
            port = str(sock.getsockname()[1])
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
        cmd += ["--master_port", port, "-m", "vital_core.cli"]
    cmd += ["train", "--recipe", str(recipe), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _same_run(a: Path, b: Path) -> None:
    """Same steps, same K, losses within TOL, same final weights within fp32 noise."""
    ra, rb = _rows(a), _rows(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] and [r["k"] for r in ra] == [r["k"] for r in rb]
    for x, y in zip(ra, rb):
        assert x.keys() == y.keys() and {"total", "task"} <= x.keys()
        for key in {"total", "task", "sem", "vis"} & x.keys():
            assert abs(x[key] - y[key]) < TOL, (key, x, y)
    fa, fb = load_file(a / "final.safetensors"), load_file(b / "final.safetensors")
    assert fa.keys() == fb.keys()
    for name in fa:
        torch.testing.assert_close(fa[name], fb[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_on_two_ranks_and_on_one(tmp_path, phantom_dir, roi_store):
    """2 FSDP ranks stopped after step 5 (checkpoint at step 4) resume on 2 ranks, and on 1 process with the
    same global batch, to the uninterrupted 2-rank run; on 1 process with a smaller global batch the
    curve continues from step 5 (new data order, announced)."""
    full = _vital_train(_recipe(tmp_path / "full", phantom_dir, roi_store, distributed="fsdp"), 2)
    assert full.returncode == 0, full.stderr[-4000:]
    stopped = tmp_path / "stopped"
    proc = _vital_train(
        _recipe(stopped, phantom_dir, roi_store, distributed="fsdp"), 2, "--stop-after-steps", "5"
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ckpt = stopped / "run" / "ckpt-00000004"
    assert (ckpt / "dcp" / ".metadata").is_file() and len(list((ckpt / "dcp").glob("*.distcp"))) == 2
    assert not list(ckpt.glob("optimizer*.pt"))  # no per-rank optimizer files any more

    def resume(name: str, nproc: int, **extra) -> tuple[Path, subprocess.CompletedProcess]:
        shutil.copytree(stopped / "run", tmp_path / name / "run")
        f = _recipe(tmp_path / name, phantom_dir, roi_store, distributed="fsdp", **extra)
        return tmp_path / name / "run", _vital_train(f, nproc, "--resume")

    for name, nproc, extra in (("two", 2, {}), ("one", 1, {"grad_accum": 2})):
        run, proc = resume(name, nproc, **extra)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert "resuming from" in proc.stderr and "global batch changed" not in proc.stderr
        _same_run(tmp_path / "full" / "run", run)

    run, proc = resume("one-smaller-batch", 1)  # 1 × 1 × 2 samples per step instead of 2 × 1 × 2
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "global batch changed" in proc.stderr
    rows, ref = _rows(run), _rows(tmp_path / "full" / "run")
    assert [r["step"] for r in rows[:4]] == [1, 2, 3, 4] and rows[:4] == _rows(stopped / "run")[:4]
    later = [r["step"] for r in rows[4:]]
    assert later == list(range(5, 5 + len(later))) and len(later) > len(ref) - 4  # twice the steps left
    assert all(torch.isfinite(torch.tensor([r["total"] for r in rows])))
    # it continues the trained model rather than starting again: its first step scores like the
    # reference's step 5, not like the fresh model's step 1
    assert abs(rows[4]["task"] - ref[4]["task"]) < abs(rows[4]["task"] - ref[0]["task"])


def test_resume_positions_across_layouts():
    """batch_pos is per rank: the same global batch maps exactly; another one maps by samples."""
    saved = {"phase": 1, "batch_pos": 6, "step": 9, "phase_step": 6}
    two, one_acc2, one = Layout(2, 1, 4), Layout(1, 2, 4), Layout(1, 1, 4)
    assert position(saved, two, two) == saved
    assert position(saved, two, one_acc2) == {**saved, "batch_pos": 12}  # 6 steps × 2 micro-batches
    assert position(saved, one_acc2, two) == {**saved, "batch_pos": 3}  # 3 steps... of 12 micro-batches
    assert position(saved, two, one) == {**saved, "batch_pos": 12, "phase_step": 12}  # 48 samples, 4 a step
    assert position(saved, two, Layout(4, 1, 3)) == {**saved, "batch_pos": 4, "phase_step": 4}  # 48 // 12
    assert position({**saved, "batch_pos": 0, "phase_step": 0}, two, one)["batch_pos"] == 0  # phase start


def test_old_checkpoints_resume_or_say_why_not(tmp_path, phantom_dir, roi_store):
    """A checkpoint in the format before DCP (trainable.safetensors + optimizer.pt) resumes to the same
    weights as an uninterrupted run; one with per-rank optimizer files from another world size is refused
    with a message that says how to resume it."""
    from training.checkpoint import restore
    from training.trainer import Trainer, TrainStep, build_training_model, trainable_state

    Trainer(Recipe.from_yaml(_recipe(tmp_path / "full", phantom_dir, roi_store))).run()
    recipe = Recipe.from_yaml(_recipe(tmp_path / "old", phantom_dir, roi_store))
    assert Trainer(recipe, stop_after_steps=5).run()["stopped_at"] == 5
    ckpt = tmp_path / "old" / "run" / "ckpt-00000004"
    # rewrite ckpt-4 as the trainer before DCP wrote it, from what the DCP files hold
    model = build_training_model(recipe, torch.device("cpu"))
    resume = restore(ckpt, model, Layout(1, 1, 2), 0, legacy_model=None)
    opt, sched = Trainer(recipe)._optimizer(model, 12)
    resume.load_optimizer(TrainStep(model, recipe), opt, sched)
    save_file(trainable_state(model, recipe), ckpt / "trainable.safetensors")
    old = {**resume.extra, "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
    torch.save(old, ckpt / "optimizer.pt")
    shutil.rmtree(ckpt / "dcp")
    (ckpt / "extra.pt").unlink()
    (ckpt / "state.json").write_text(json.dumps(resume.state))  # no "layout" either
    fsdp = tmp_path / "fsdp" / "run" / ckpt.name  # the same, as 2 FSDP ranks wrote it
    shutil.copytree(ckpt, fsdp)
    (fsdp / "optimizer.pt").unlink()
    for r in (0, 1):
        torch.save(old, fsdp.parent / ckpt.name / f"optimizer-rank{r}.pt")

    Trainer(recipe, mode="resume").run()
    _same_run(tmp_path / "full" / "run", tmp_path / "old" / "run")
    fsdp_recipe = Recipe.from_yaml(_recipe(tmp_path / "fsdp", phantom_dir, roi_store))
    with pytest.raises(CheckpointError, match=r"saved per rank by 2 processes.*--nproc_per_node 2"):
        Trainer(fsdp_recipe, mode="resume").run()


def test_new_run_refuses_an_earlier_one_unless_resume_or_overwrite(tmp_path, phantom_dir, roi_store):
    """`vital train` into a directory with a run: refused (exit 2, nothing touched) without a flag;
    --overwrite starts over; --resume continues. build-tiny-bundle / ablations pass mode="resume"."""
    f = _recipe(tmp_path, phantom_dir, roi_store, max_samples=8)
    first = _vital_train(f, 1, "--stop-after-steps", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "run"
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    rows = _rows(run)
    refused = _vital_train(f, 1)
    assert refused.returncode == 2
    assert "already holds a training run" in refused.stderr and "--resume" in refused.stderr
    assert "--overwrite" in refused.stderr and "Traceback" not in refused.stderr
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before and _rows(run) == rows

    resumed = _vital_train(f, 1, "--resume", "--stop-after-steps", "3")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["step"] for r in _rows(run)] == [1, 2, 3] and _rows(run)[:2] == rows

    (run / "notes.txt").write_text("mine")  # not the trainer's: --overwrite leaves it
    over = _vital_train(f, 1, "--overwrite", "--stop-after-steps", "1")
    assert over.returncode == 0, over.stderr[-3000:]
    assert [r["step"] for r in _rows(run)] == [1] and not list(run.glob("ckpt-*"))
    assert (run / "notes.txt").read_text() == "mine"
    both = _vital_train(f, 1, "--resume", "--overwrite")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
