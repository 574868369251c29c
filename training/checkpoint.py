"""Training checkpoints with `torch.distributed.checkpoint` (DCP): sharded on save, resharded on load.

A run checkpointed by N processes resumes on M (any M, FSDP, DDP or one process): every rank writes its
own shards of the trainable tensors and of the optimizer state, keyed by parameter name (not by rank or
parameter id), and on load DCP reads into whatever shards the new world holds. Layout of
`OUTPUT_DIR/ckpt-STEP/`:

    dcp/        DCP files (`.metadata` + one `__R_0.distcp` per writing rank): "model.<name>" — the
                trainable tensors only (LoRA + scaffolding, or the whole backbone in stage 0), names
                relative to VitalModel — and "optim.*" (AdamW state and param groups by parameter name)
    extra.pt    the LR scheduler's state and rank 0's RNG state (every rank draws the same numbers:
                same seed, same ops)
    state.json  the position in the run (phase, batch_pos, step, phase_step) and the layout that wrote
                it (world size, grad_accum, batch_size)

The data order depends on the global batch layout (`world × grad_accum` batches of `batch_size` share
one K), so a resume whose `world × grad_accum` and `batch_size` match the writer's continues exactly
(`batch_pos` is rescaled to the new world size); any other layout continues at the same number of
samples of the phase, with a warning (the remaining batches are drawn in the new layout's order).

Checkpoints written before DCP (`trainable.safetensors` + `optimizer.pt`, or one `optimizer-rankR.pt` per
FSDP rank) still load: `optimizer.pt` at any world size, per-rank files only at the world size that
wrote them (a clear `CheckpointError` otherwise).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

log = logging.getLogger("vital.train")

TRAINABLE = StateDictOptions(ignore_frozen_params=True)
"""Model state in a checkpoint: trainable tensors only (the frozen backbone comes from its own files)."""
PREFIX = "model."
"""The training step module (`trainer.TrainStep`) holds the VitalModel as `.model`."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed here; the message says why and what to do."""


@dataclass(frozen=True)
class Layout:
    """How a run splits its global batch: `world` processes × `grad_accum` micro-batches of `batch_size`."""

    world: int
    grad_accum: int
    batch_size: int

    @property
    def group(self) -> int:
        """Micro-batches per optimizer step over all ranks (they share one K)."""
        return self.world * self.grad_accum


def save(
    path: Path,
    wrapped: nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    state: dict[str, int],
    layout: Layout,
    is_main: bool,
) -> None:
    """Write one checkpoint into `path` (a fresh directory). Collective: call on every rank."""
    model = {k.removeprefix(PREFIX): v for k, v in get_model_state_dict(wrapped, options=TRAINABLE).items()}
    optim = get_optimizer_state_dict(wrapped, opt)
    dcp.save({"model": model, "optim": optim}, checkpoint_id=path / "dcp", no_dist=_single())
    if not is_main:
        return
    extra = {
        "scheduler": sched.state_dict(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    torch.save(extra, path / "extra.pt")
    (path / "state.json").write_text(json.dumps({**state, "layout": asdict(layout)}))


@dataclass
class Resume:
    """A checkpoint being resumed: the position (in this run's layout) and what is loaded later."""

    path: Path
    state: dict[str, int]
    """phase, batch_pos, step, phase_step — batch_pos and phase_step in this run's layout."""
    extra: dict[str, Any]
    """scheduler, rng, cuda_rng (legacy checkpoints: also optimizer)."""
    legacy: bool
    seek: bool
    """The layout changed: move the scheduler to `state['phase_step']` after loading it."""

    def restore_rng(self) -> None:
        """Set this process's RNG state to the checkpoint's."""
        torch.set_rng_state(self.extra["rng"])
        cuda = self.extra.get("cuda_rng")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)

    def load_optimizer(self, wrapped: nn.Module, opt: torch.optim.Optimizer, sched: Any) -> None:
        """Load optimizer and scheduler state into this run's (possibly sharded) optimizer. Collective."""
        if self.legacy:
            opt.load_state_dict(self.extra["optimizer"])
        else:
            _load_optimizer(self.path / "dcp", wrapped, opt)
        sched.load_state_dict(self.extra["scheduler"])
        if self.seek:
            _seek(sched, opt, self.state["phase_step"])


def restore(
    path: Path, model: nn.Module, layout: Layout, rank: int, legacy_model: Callable[[Path], None]
) -> Resume:
    """Load the trainable tensors of checkpoint `path` into `model` (before it is wrapped for DDP/FSDP)
    and return the position to resume from. `legacy_model(file)` loads a pre-DCP trainable.safetensors."""
    saved = json.loads((path / "state.json").read_text())
    written = Layout(**saved.pop("layout")) if "layout" in saved else layout
    legacy = not (path / "dcp").is_dir()
    if legacy:
        extra = _legacy_extra(path, layout, rank)
        legacy_model(path / "trainable.safetensors")
    else:
        extra = torch.load(path / "extra.pt", map_location="cpu", weights_only=False)
        _load_model(path / "dcp", model)
    state = position(saved, written, layout)
    if written != layout:
        log.info("checkpoint written by %s, resumed as %s", written, layout)
    return Resume(path, state, extra, legacy, seek=state["phase_step"] != saved["phase_step"])


def position(saved: dict[str, int], written: Layout, now: Layout) -> dict[str, int]:
    """The saved position in the layout `now`: exact when the global batches are the same, else at the
    same number of samples of the phase (rounded down to whole optimizer steps)."""
    state = dict(saved)
    if written == now or not saved["batch_pos"]:
        return state
    if (written.group, written.batch_size) == (now.group, now.batch_size):
        state["batch_pos"] = saved["batch_pos"] * written.world // now.world  # = phase_step × grad_accum
        return state
    samples = saved["batch_pos"] * written.world * written.batch_size
    steps = samples // (now.group * now.batch_size)
    state["batch_pos"], state["phase_step"] = steps * now.grad_accum, steps
    log.warning(
        "global batch changed since the checkpoint (%d × %d × %d samples, now %d × %d × %d): resuming "
        "phase %d after %d of its samples at step %d of the new layout; the remaining batches follow "
        "the new layout's data order, so the run will not equal an uninterrupted one",
        written.world,
        written.grad_accum,
        written.batch_size,
        now.world,
        now.grad_accum,
        now.batch_size,
        saved["phase"],
        samples,
        steps,
    )
    return state


def _load_model(path: Path, model: nn.Module) -> None:
    state = get_model_state_dict(model, options=TRAINABLE)
    try:
        dcp.load({"model": state}, checkpoint_id=path, no_dist=_single())
    except Exception as exc:  # DCP wraps a missing tensor in a CheckpointException
        raise CheckpointError(
            f"{path.parent}: its trainable tensors do not match this recipe's model ({exc}); "
            "resume with the recipe that wrote it, or start over with --overwrite"
        ) from exc
    set_model_state_dict(model, state, options=StateDictOptions(ignore_frozen_params=True, strict=False))


def _load_optimizer(path: Path, wrapped: nn.Module, opt: torch.optim.Optimizer) -> None:
    """DCP load into this world's optimizer shards. Parameters that had no AdamW state when saved (never
    got a gradient) get none now either, as in the run that wrote it."""
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader

    state = get_optimizer_state_dict(wrapped, opt)  # allocates (zero) state for every parameter
    planner = DefaultLoadPlanner(allow_partial_load=True)
    dcp.load({"optim": state}, checkpoint_id=path, planner=planner, no_dist=_single())
    saved = FileSystemReader(path).read_metadata().state_dict_metadata
    state["state"] = {n: s for n, s in state["state"].items() if f"optim.state.{n}.step" in saved}
    set_optimizer_state_dict(wrapped, opt, optim_state_dict=state)


def _single() -> bool:
    """One process without a process group (DCP then reads and writes without collectives)."""
    return not (dist.is_available() and dist.is_initialized())


def _seek(sched: Any, opt: torch.optim.Optimizer, step: int) -> None:
    """Put a LambdaLR schedule (and the optimizer's learning rates) at optimizer step `step`."""
    sched.last_epoch = step
    for group, base, factor in zip(opt.param_groups, sched.base_lrs, sched.lr_lambdas):
        group["lr"] = base * factor(step)


def _legacy_extra(path: Path, layout: Layout, rank: int) -> dict[str, Any]:
    """Optimizer + scheduler + RNG of a pre-DCP checkpoint (per-rank files only at their world size)."""
    single = path / "optimizer.pt"
    if single.is_file():
        return torch.load(single, map_location="cpu", weights_only=False)
    ranks = sorted(path.glob("optimizer-rank*.pt"))
    if not ranks:
        raise CheckpointError(f"{path}: no dcp/ and no optimizer.pt — not a complete checkpoint")
    if len(ranks) != layout.world:
        raise CheckpointError(
            f"{path} is an older checkpoint whose optimizer state was saved per rank by {len(ranks)} "
            f"processes; it resumes only with {len(ranks)} (this run has {layout.world}). Resume it with "
            f"`torchrun --nproc_per_node {len(ranks)}`, or start over with --overwrite; checkpoints "
            "written from now on reshard to any world size"
        )
    return torch.load(path / f"optimizer-rank{rank}.pt", map_location="cpu", weights_only=False)
