"""The dual-supervision trainer: L_task + λ_sem·L_sem + λ_vis·L_vis over a K curriculum.

Runs the same `vital_core` latent loop as serving (gradients through every step), under plain
Python or `torchrun` (DDP; FSDP for the large recipe). Checkpoints are atomic directories; a run
that is killed resumes from the last one and ends where an uninterrupted run would (the data order
is a pure function of the seed, and RNG and optimizer state are restored) — on any world size, since
checkpoints are `torch.distributed.checkpoint` shards (training/checkpoint.py). A new run refuses an
output directory that holds an earlier one unless told to resume or overwrite it (`RUN_MODES`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from training import checkpoint
from training.data.batches import (
    KRule,
    RoiTargets,
    batch_loader,
    in_phase,
    k_batches,
    per_step_targets,
    roi_keys,
)
from training.data.manifest import Sample, load_manifest
from training.recipe import PhaseSpec, Recipe, phases_for
from vital_core.chain import target_text
from vital_core.heads import encode_steps
from vital_core.model import VitalModel
from vital_core.preprocess import encode_answers, encode_prompts

log = logging.getLogger("vital.train")
RUN_MODES = ("new", "resume", "overwrite")
"""What a run does with an output directory that already holds one: refuse (new), continue it from its
newest checkpoint (resume; from the start when it has none), or delete it first (overwrite)."""


@dataclass
class TrainState:
    """Where a run is: resumes start from here."""

    phase: int = 0
    batch_pos: int = 0  # batches of the current phase already consumed
    step: int = 0  # optimizer steps in total
    phase_step: int = 0  # optimizer steps in the current phase


class TrainStep(nn.Module):
    """One forward of the joint objective (what DDP wraps)."""

    def __init__(self, model: VitalModel, recipe: Recipe):
        super().__init__()
        self.model = model
        self.recipe = recipe

    def forward(
        self,
        prompts,
        k: int,
        answers,
        answer_mask,
        step_ids,
        step_mask,
        step_has,
        target,
        teacher=None,
        teacher_mask=None,
    ):
        """k latent sentences: c·k latent steps (c = `thoughts_per_sentence`), each sentence's last state
        supervised. teacher, teacher_mask: (B, T') every sentence written, then the answer
        (`loss.lambda_distill`)."""
        r = self.recipe.loss
        c = self.recipe.thoughts_per_sentence
        distill = r.lambda_distill > 0 and k > 0 and teacher is not None
        with LayerStates(self.model.core, enabled=distill) as student:
            out = self.model(prompts, k * c, answer_ids=answers, answer_mask=answer_mask)
        losses = {"task": out.loss}
        total = out.loss
        sc = self.model.scaffold
        if sc is not None and k > 0:
            lat = out.latents[:, c::c]  # (B, K, H): h_c, h_2c, .., h_cK, each sentence's last state
            valid = out.step_valid[:, c - 1 :: c] & step_has  # (B, K): steps that exist and have a sentence
            if r.semantic:
                losses["sem"] = sc.semantic_loss(lat, step_ids, step_mask, valid)
                total = total + r.lambda_sem * losses["sem"]
            if r.visual and target is not None:
                losses["vis"] = sc.visual_loss(lat, target, valid)
                total = total + r.lambda_vis * losses["vis"]
        if r.lambda_words > 0 and k > 0:
            # each group's first state (the last one's LM head predicts the next written token)
            lat = out.latents[:, 1::c][:, :k]  # (B, K, H): h_1, h_(c+1), ..
            valid = out.step_valid[:, ::c][:, :k] & step_has
            losses["words"] = words_loss(
                self.model.core.lm_head,
                lat,
                step_ids,
                step_mask,
                valid,
                prompt_ids=prompts.input_ids if r.words_content else None,
            )
            total = total + r.lambda_words * losses["words"]
        if distill:
            # the same weights with every sentence written (K = 0): the target (trained on its own chain only
            # with loss.distill_teacher, as CODI does, so that its states stay those of a working reader)
            with nullcontext() if r.distill_teacher else torch.no_grad(), LayerStates(self.model.core) as ref:
                tout = self.model(prompts, 0, answer_ids=teacher, answer_mask=teacher_mask)
            if r.distill_teacher:
                losses["teacher"] = tout.loss
                total = total + tout.loss
            per_layer = [
                distill_loss(h, answers, answer_mask, t, teacher, teacher_mask)
                for h, t in zip(student.answer_states(), ref.answer_states())
            ]
            losses["distill"] = torch.stack(per_layer).mean()
            total = total + r.lambda_distill * losses["distill"]
        losses["total"] = total
        return losses


class LayerStates:
    """Records every decoder layer's output (the residual stream after it) for each call of the language
    model inside the `with` block: prefill, latent steps, then the teacher-forced answer, in that order.
    `answer_states()` gives, per layer, the (B, T, H) states that predict each answer token (state j predicts
    token j: the last state before the answer, then one per fed answer token), as `LatentOutput.hidden` does
    for the last layer. Disabled, it records nothing."""

    def __init__(self, core: nn.Module, enabled: bool = True):
        self.layers = list(core.model.language_model.layers) if enabled else []
        self.calls: list[list[torch.Tensor]] = [[] for _ in self.layers]
        self._hooks: list = []

    def __enter__(self) -> LayerStates:
        for i, layer in enumerate(self.layers):
            self._hooks.append(layer.register_forward_hook(lambda _m, _a, y, i=i: self.calls[i].append(y)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def answer_states(self) -> list[torch.Tensor]:
        """Per layer, the call before the answer's last state, then the answer call's states."""
        return [torch.cat([calls[-2][:, -1:], calls[-1]], dim=1) for calls in self.calls]


def distill_loss(
    hidden: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    ref: torch.Tensor,
    ref_ids: torch.Tensor,
    ref_mask: torch.Tensor,
) -> torch.Tensor:
    """`loss.lambda_distill`: relative squared error ||h - h'||² / ||h'||² between the student's state and
    the teacher's at the same written token, mean over tokens. hidden (B, T, H) and ids, mask (B, T): the
    student's states (state j predicts token j) and tokens; ref, ref_ids, ref_mask the teacher's (B, T', ·).
    Rows are aligned from their ends (the student writes a suffix of the teacher's text); only positions
    whose predicted token is the same in both count, so a suffix that tokenizes differently at its start,
    or a truncated row, adds nothing wrong."""
    n, m = mask.sum(1), ref_mask.sum(1)  # (B,)
    j = torch.arange(ids.shape[1], device=ids.device)[None, :]  # (1, T)
    rj = j + (m - n)[:, None]  # (B, T): the teacher's position of the student's token j
    inside = (mask > 0) & (rj >= 0) & (rj < ref_ids.shape[1])
    rj = rj.clamp(0, ref_ids.shape[1] - 1)
    same = inside & (ref_ids.gather(1, rj) == ids) & (ref_mask.gather(1, rj) > 0)
    if not bool(same.any()):
        return hidden.sum() * 0.0
    target = ref.gather(1, rj[..., None].expand(-1, -1, ref.shape[-1]))[same].detach().float()  # (N, H)
    err = (hidden[same].float() - target).pow(2).sum(-1) / target.pow(2).sum(-1).clamp_min(1e-6)
    return err.mean()


def words_loss(
    lm_head: nn.Module,
    lat: torch.Tensor,
    step_ids: torch.Tensor,
    step_mask: torch.Tensor,
    valid: torch.Tensor,
    prompt_ids: torch.Tensor | None = None,
    max_share: float = 0.5,
) -> torch.Tensor:
    """`loss.lambda_words`: cross-entropy of each valid latent's LM-head distribution against the uniform
    distribution over its sentence's distinct tokens. lat (B, K, H); step_ids, step_mask (B, K, T); valid (B, K).
    prompt_ids (B, L) given (`loss.words_content`): only content tokens count, those not in the row's prompt
    and in at most `max_share` of the valid sentences at the same step; a row left empty keeps its bag."""
    if not bool(valid.any()):
        return lat.sum() * 0.0
    logp = torch.log_softmax(lm_head(lat[valid]).float(), dim=-1)  # (N, V)
    ids, mask = step_ids[valid], step_mask[valid]  # (N, T)
    bag = torch.zeros_like(logp).scatter_add_(1, ids, mask.to(logp.dtype)).clamp_(max=1.0)  # distinct tokens
    if prompt_ids is not None:
        rows, steps = valid.nonzero(as_tuple=True)  # (N,): each bag's sample and step
        content = bag.scatter(1, prompt_ids[rows], 0.0)  # not in its own question
        counts = torch.zeros(valid.shape[1], bag.shape[1], dtype=bag.dtype, device=bag.device)
        counts.index_add_(0, steps, bag)
        share = counts / torch.bincount(steps, minlength=valid.shape[1]).clamp(min=1)[:, None].to(bag.dtype)
        content = content * (share[steps] <= max_share)  # not common to the batch's sentences at that step
        bag = torch.where(content.sum(-1, keepdim=True) > 0, content, bag)
    bag = bag / bag.sum(-1, keepdim=True).clamp(min=1.0)
    return -(bag * logp).sum(-1).mean()


def setup_distributed() -> tuple[int, int, int]:
    """(rank, world, local_rank); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return rank, world, local


def teardown_distributed() -> None:
    """Destroy the process group before the interpreter exits. Left to interpreter shutdown, gloo's threads
    can be torn down while still joinable and a rank aborts ("terminate called without an active exception",
    SIGABRT) after a finished run — torchrun then reports the whole job as failed."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def pick_device(recipe: Recipe, local_rank: int) -> torch.device:
    if recipe.device != "auto":
        return torch.device(recipe.device)
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def build_training_model(recipe: Recipe, device: torch.device, texts: list[str] | None = None) -> VitalModel:
    """The model a recipe trains: stage 0 → full backbone; latent stage → frozen backbone + LoRA + heads
    (`train_backbone`: the backbone trains too)."""
    from vital_core.bundle import load_bundle
    from vital_core.config import VitalConfig
    from vital_core.model import build_model
    from vital_core.presets import preset

    spec = recipe.model
    if spec.init_bundle:
        model = load_bundle(spec.init_bundle, device=device, merge=True)
        cfg = _override(model.config, spec.overrides)
        model.config = cfg
    else:
        cfg = preset(spec.preset) if spec.preset else VitalConfig.from_yaml(spec.config)
        cfg = _override(cfg, spec.overrides)
        cfg.seed = recipe.seed
        model = build_model(cfg, device=device, tokenizer_texts=texts)
    if recipe.stage == "backbone":
        for p in model.core.parameters():
            p.requires_grad_(True)
        apply_precision(model, recipe.precision)
        return model.train()
    for p in model.core.parameters():
        p.requires_grad_(False)
    model.add_lora()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed + 1)
        if spec.init_bundle and (Path(spec.init_bundle) / "scaffold.safetensors").is_file():
            from vital_core.bundle import load_scaffold

            model.scaffold = load_scaffold(spec.init_bundle, device=device)  # continue from trained heads
        else:
            model.add_scaffold()
    for p in model.scaffold.parameters():
        p.requires_grad_(True)
    if recipe.train_backbone:
        for p in model.core.parameters():
            p.requires_grad_(True)
    model.config.heads.lambda_sem = (
        recipe.loss.lambda_sem
    )  # the bundle records the weights it was trained with
    model.config.heads.lambda_vis = recipe.loss.lambda_vis
    apply_precision(model, recipe.precision)
    return model.train()


def apply_precision(model: VitalModel, precision: str) -> None:
    """Trainable parameters (LoRA, heads, aux decoder, or a stage-0 backbone) in fp32, so AdamW's
    moments and late small updates are fp32; the frozen backbone keeps its checkpoint dtype (bf16 at 8B)
    and is upcast only for `precision: fp32`. Compute dtype is set by autocast / FSDP's policy."""
    if precision == "fp32":
        model.core.float()
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()


def _override(cfg, overrides: dict):
    if not overrides:
        return cfg
    from vital_core.config import VitalConfig, deep_merge

    return VitalConfig.from_dict(deep_merge(cfg.to_dict(), overrides))


def trainable_state(model: VitalModel, recipe: Recipe) -> dict[str, torch.Tensor]:
    """What a checkpoint stores: the whole backbone (stage 0), or LoRA + scaffolding (with the whole
    LoRA-wrapped backbone under `train_backbone`)."""
    if recipe.stage == "backbone":
        return {f"core.{k}": v for k, v in model.core.state_dict().items()}
    every = recipe.train_backbone
    state = {f"backbone.{k}": v for k, v in model.backbone.state_dict().items() if every or "lora_" in k}
    tied = model.scaffold.decoder.config.tie_word_embeddings
    state.update(
        {
            f"scaffold.{k}": v
            for k, v in model.scaffold.state_dict().items()
            if not (tied and k == "decoder.lm_head.weight")
        }
    )
    return state


def load_trainable_state(model: VitalModel, recipe: Recipe, state: dict[str, torch.Tensor]) -> None:
    if recipe.stage == "backbone":
        model.core.load_state_dict({k[5:]: v for k, v in state.items()}, strict=True)
        return
    bb = {k[9:]: v for k, v in state.items() if k.startswith("backbone.")}
    missing = model.backbone.load_state_dict(bb, strict=False)
    if missing.unexpected_keys:
        raise RuntimeError(f"checkpoint has unknown LoRA tensors: {missing.unexpected_keys[:3]}")
    model.scaffold.load_state_dict(
        {k[9:]: v for k, v in state.items() if k.startswith("scaffold.")}, strict=False
    )


class Trainer:
    """Runs a recipe end to end; `run()` returns the final metrics."""

    def __init__(self, recipe: Recipe, *, mode: str = "new", stop_after_steps: int | None = None):
        if mode not in RUN_MODES:
            raise ValueError(f"run mode must be one of {', '.join(RUN_MODES)}, got {mode!r}")
        self.recipe = recipe
        self.mode = mode
        self.stop_after_steps = stop_after_steps
        self.rank, self.world, self.local_rank = setup_distributed()
        self.device = pick_device(recipe, self.local_rank)
        self.out = Path(recipe.output_dir)
        self.is_main = self.rank == 0
        self._rule = KRule()

    # -- setup -----------------------------------------------------------------------------------
    def _load_data(self) -> list[Sample]:
        d = self.recipe.data
        samples = [s for s in load_manifest(d.manifest) if s.split == d.train_split]
        if d.max_samples:
            samples = samples[: d.max_samples]
        if not samples:
            raise ValueError(f"{d.manifest}: no samples in split {d.train_split!r}")
        return samples

    def _autocast(self):
        """bf16 compute: `bf16` everywhere (CPU autocast included), `auto` on CUDA; fp32 otherwise."""
        if self._bf16_compute():
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _bf16_compute(self) -> bool:
        p = self.recipe.precision
        return p == "bf16" or (p == "auto" and self.device.type == "cuda")

    def _optimizer(self, model: VitalModel, total_steps: int, heads_only: int = 0):
        """AdamW and its schedule; `heads_only`: the first steps leave the backbone group at lr 0."""
        o = self.recipe.optim
        backbone = [p for p in model.backbone.parameters() if p.requires_grad]
        groups = [{"params": backbone, "lr": o.lr}]
        if model.scaffold is not None:
            groups.append(
                {
                    "params": [p for p in model.scaffold.parameters() if p.requires_grad],
                    "lr": o.scaffold_lr or o.lr,
                }
            )
        opt = torch.optim.AdamW(groups, betas=tuple(o.betas), weight_decay=o.weight_decay)
        warm = max(1, int(round(o.warmup_ratio * total_steps))) if o.warmup_ratio > 0 else 0

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            if o.schedule == "constant":
                return 1.0
            frac = (step - warm) / max(1, total_steps - warm)
            return (
                0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
                if o.schedule == "cosine"
                else max(0.0, 1 - frac)
            )

        def backbone_factor(step: int) -> float:
            return 0.0 if step < heads_only else factor(step)

        factors = [backbone_factor] + [factor] * (len(groups) - 1)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, factors)

    def _phase_batches(
        self, samples: list[Sample], phase_idx: int, phase: PhaseSpec, rule: KRule
    ) -> list[list[int]]:
        """This rank's batches of one phase: whole epochs of `k_batches`, cut at `phase.epochs`."""
        r = self.recipe
        kw = dict(k_override=rule, rank=self.rank, world=self.world, group=self.world * r.grad_accum)
        per_epoch = len(k_batches(samples, r.batch_size, 0, **kw))
        total = int(round(phase.epochs * per_epoch))
        total -= total % r.grad_accum if total >= r.grad_accum else 0  # whole optimizer steps
        seq: list[list[int]] = []
        epoch = 0
        while len(seq) < total:
            seq += k_batches(samples, r.batch_size, r.seed * 1_000_003 + phase_idx * 10_007 + epoch, **kw)
            epoch += 1
        return seq[:total]

    def _k_rule(self, phase: PhaseSpec, phase_idx: int, samples: list[Sample]) -> KRule:
        """Each sample's K in one phase: 0 in stage 0, the recipe's forced K, or its depth capped by the
        phase (Coconut stages); `direct_share` of the samples answer at K = 0 (drawn per phase from the seed)."""
        r = self.recipe
        if r.stage == "backbone":
            return KRule(override=0)
        direct: frozenset[str] = frozenset()
        if r.direct_share > 0:
            direct = frozenset(
                s.id for s in samples if _unit_hash(f"{r.seed}|{phase_idx}|{s.id}") < r.direct_share
            )
        return KRule(override=r.k_override, cap=phase.latent_cap, direct=direct)

    # -- checkpoints -----------------------------------------------------------------------------
    def _ckpt_dirs(self) -> list[Path]:
        return sorted(self.out.glob("ckpt-*"), key=lambda p: int(p.name.split("-")[1]))

    def _layout(self) -> checkpoint.Layout:
        return checkpoint.Layout(self.world, self.recipe.grad_accum, self.recipe.batch_size)

    def save_checkpoint(self, wrapped: nn.Module, opt, sched, state: TrainState) -> Path | None:
        """Atomically write ckpt-STEP/ and keep only the last N (every rank writes its DCP shards)."""
        final = self.out / f"ckpt-{state.step:08d}"
        tmp = self.out / f".tmp-ckpt-{state.step:08d}"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        if self.world > 1:
            dist.barrier()
        checkpoint.save(tmp, wrapped, opt, sched, asdict(state), self._layout(), self.is_main)
        if self.world > 1:
            dist.barrier()
        if not self.is_main:
            return None
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in self._ckpt_dirs()[: -self.recipe.checkpoint.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def _restore(self, model: VitalModel) -> tuple[TrainState, checkpoint.Resume | None]:
        ckpts = self._ckpt_dirs() if self.mode == "resume" else []
        if not ckpts:
            return TrainState(), None

        def legacy(file: Path) -> None:  # a checkpoint written before DCP
            load_trainable_state(model, self.recipe, load_file(str(file), device=str(self.device)))

        resume = checkpoint.restore(ckpts[-1], model, self._layout(), self.rank, legacy)
        state = TrainState(**resume.state)
        log.info("resuming from %s (phase %d, step %d)", ckpts[-1], state.phase, state.step)
        return state, resume

    def _check_output_dir(self) -> None:
        """Refuse to start a new run over an earlier one (mode "new"); delete it first for "overwrite".
        Every rank looks before rank 0 writes or deletes anything."""
        earlier = _earlier_run(self.out)
        if earlier and self.mode == "new":
            raise RunDirError(
                f"{self.out} already holds a training run ({', '.join(p.name for p in earlier[:4])}"
                f"{', …' if len(earlier) > 4 else ''}); a new run would overwrite its metrics and checkpoints. "
                "Pass --resume to continue it, --overwrite to delete it and start over, or choose another "
                "output_dir (Python: Trainer(recipe, mode='resume' | 'overwrite'))"
            )
        if self.world > 1:
            dist.barrier()
        if earlier and self.mode == "overwrite" and self.is_main:
            log.warning("--overwrite: deleting the earlier run in %s", self.out)
            for p in [*earlier, *self.out.glob(".tmp-ckpt-*")]:
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        if self.world > 1:
            dist.barrier()

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train every phase; write metrics.jsonl, checkpoints, and final.safetensors."""
        r = self.recipe
        self._check_output_dir()
        torch.manual_seed(r.seed)
        samples = self._load_data()
        texts = [t for s in samples for t in (s.question, s.answer, *s.reasoning)]
        model = build_training_model(r, self.device, texts=texts)
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "recipe.json").write_text(json.dumps(r.to_dict(), indent=2))
        targets = None
        if r.stage == "latent" and r.loss.visual:
            if not r.data.roi_store:
                raise ValueError("loss.visual needs data.roi_store (or set loss.visual=false)")
            targets = RoiTargets(r.data.roi_store, roi_keys(samples, r.loss.visual_target == "per_hop"))
        global_feats = self._global_features(model, samples) if r.loss.visual_target == "per_step" else None
        if (
            r.model.align_encoder
            and r.stage == "backbone"
            and not (self.mode == "resume" and self._ckpt_dirs())
        ):
            self._align_vision(model, samples)
        state, resume = self._restore(model)
        if resume is not None:
            resume.restore_rng()
        step_fn = TrainStep(model, r)
        wrapped = self._wrap(step_fn)
        self.model, self.wrapped = model, wrapped  # also after a run stopped early (stop_after_steps)
        phases = phases_for(r.curriculum)
        metrics_path = self.out / "metrics.jsonl"
        if self.is_main:
            _truncate_metrics(metrics_path, state.step if resume is not None else 0)
        last: dict[str, float] = {}
        for pi in range(state.phase, len(phases)):
            phase = phases[pi]
            rule = self._rule = self._k_rule(phase, pi, samples)
            subset = in_phase(samples, phase.min_k, phase.max_k, rule)
            if not subset:
                log.warning(
                    "phase %s has no samples (K in [%d, %d]); skipped", phase.name, phase.min_k, phase.max_k
                )
                state = TrainState(phase=pi + 1, step=state.step)
                continue
            seq = self._phase_batches(subset, pi, phase, rule)
            total_steps = math.ceil(len(seq) / r.grad_accum)
            heads_only = r.optim.heads_warmup_steps if pi == 0 and r.stage == "latent" else 0
            opt, sched = self._optimizer(model, total_steps, heads_only)
            if resume is not None and state.phase == pi and (state.batch_pos or state.phase_step):
                resume.load_optimizer(wrapped, opt, sched)
            resume = None
            bar = _progress(self.is_main, len(seq), state.batch_pos, f"{r.name} {phase.name or pi + 1}")
            t_last, n_since = time.perf_counter(), 0
            loader = batch_loader(
                subset,
                seq[state.batch_pos :],
                k_override=rule,
                targets=targets,
                global_features=global_feats,
                num_workers=r.num_workers,
                per_hop=r.loss.visual_target == "per_hop",
            )
            acc: dict[str, torch.Tensor] = {}
            for pos, batch in enumerate(loader, start=state.batch_pos):
                losses = self._forward_backward(wrapped, model, batch)
                acc = losses if pos % r.grad_accum == 0 else {k: acc.get(k, 0) + v for k, v in losses.items()}
                n_since += len(batch.samples)
                bar.update(1)
                if (pos + 1) % r.grad_accum and pos + 1 < len(seq):
                    continue
                self._optimizer_step(model, opt, sched)
                state.step += 1
                state.phase_step += 1
                state.batch_pos = pos + 1
                last = self._mean_losses(acc, pos % r.grad_accum + 1)
                if state.step % r.log_every == 0 or pos + 1 == len(seq):
                    dt = time.perf_counter() - t_last
                    row = {
                        "step": state.step,
                        "phase": phase.name or pi + 1,
                        "k": batch.k,
                        "lr": sched.get_last_lr()[0],
                        "samples_per_s": n_since * self.world / max(dt, 1e-9),
                        **last,
                    }
                    t_last, n_since = time.perf_counter(), 0
                    self._log(metrics_path, row, bar)
                if state.step % r.checkpoint.every_steps == 0:
                    self.save_checkpoint(wrapped, opt, sched, state)
                if self.stop_after_steps is not None and state.step >= self.stop_after_steps:
                    bar.close()
                    return {"stopped_at": state.step, **last}
            bar.close()
            state = TrainState(phase=pi + 1, step=state.step)
            self.save_checkpoint(wrapped, opt, sched, state)
        final = {k: _full(v) for k, v in trainable_state(model, r).items()}
        if self.is_main:
            save_file(final, self.out / "final.safetensors")
        return {"steps": state.step, **last}

    def full_state(self) -> dict[str, torch.Tensor] | None:
        """The whole model's state dict ("backbone.…", "scaffold.…"), gathered from FSDP shards with
        torch.distributed.checkpoint's full-state-dict API. Call on every rank; rank 0 gets the tensors
        (on CPU), the others None. Without FSDP: the live state dict (no copy)."""
        if not (self.world > 1 and self.recipe.distributed == "fsdp"):
            return self.model.state_dict() if self.is_main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(self.wrapped, options=opts)
        return {k.removeprefix("model."): v for k, v in state.items()} if self.is_main else None

    def _wrap(self, step_fn: TrainStep) -> nn.Module:
        if self.world == 1:
            return step_fn
        if self.recipe.distributed == "fsdp":
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            # Every group's trainable parameters are fp32 (apply_precision); bf16 compute comes from the
            # policy's cast, gradients are reduced in fp32. Frozen bf16 weights may share a group.
            mp = (
                MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                if self._bf16_compute()
                else MixedPrecisionPolicy()
            )
            for layer in step_fn.model.core.model.language_model.layers:
                fully_shard(layer, mp_policy=mp)
            if step_fn.model.scaffold is not None:
                for layer in step_fn.model.scaffold.decoder.model.layers:
                    fully_shard(layer, mp_policy=mp)
            return fully_shard(step_fn, mp_policy=mp)
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(
            step_fn,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=True,
        )

    def _forward_backward(self, wrapped: nn.Module, model: VitalModel, batch) -> dict[str, torch.Tensor]:
        r = self.recipe
        tok = model.tokenizer
        prompts = encode_prompts(batch.images, [s.question for s in batch.samples], tok, model.processor).to(
            self.device
        )
        k = batch.k
        texts = [
            target_text(s.reasoning, s.answer, k, "answer" if s.id in self._rule.direct else r.data.target)
            for s in batch.samples
        ]
        answers, amask = encode_answers(texts, tok, r.data.max_answer_tokens)
        teacher = tmask = None
        if r.loss.lambda_distill > 0 and k > 0:  # every sentence written (room to keep the ends aligned)
            full = [target_text(s.reasoning, s.answer, 0, "chain") for s in batch.samples]
            teacher, tmask = encode_answers(full, tok, 2 * r.data.max_answer_tokens)
        sid, smask, shas = encode_steps(
            [list(s.reasoning) for s in batch.samples],
            tok,
            max(k, 1),
            model.config.decoder.max_sentence_tokens,
        )
        target = batch.targets
        if target is not None and r.loss.visual_target == "per_step" and k > 0:
            target = per_step_targets(target, batch.globals_, k)
        to = lambda t: t.to(self.device) if t is not None else None  # noqa: E731
        with self._autocast():
            losses = wrapped(
                prompts,
                k,
                to(answers),
                to(amask),
                to(sid[:, :k]),
                to(smask[:, :k]),
                to(shas[:, :k]),
                to(target),
                to(teacher),
                to(tmask),
            )
        (losses["total"] / r.grad_accum).backward()
        return {k_: v.detach() for k_, v in losses.items()}

    def _mean_losses(self, acc: dict[str, torch.Tensor], n: int) -> dict[str, float]:
        """A step's losses: mean over its micro-batches and over ranks (the same K on every rank means
        the same keys), so a run logs the same numbers whatever its world size and grad_accum."""
        keys = sorted(acc)
        vec = torch.stack([acc[k].float() for k in keys]) / n
        if self.world > 1:
            dist.all_reduce(vec)
            vec /= self.world
        return dict(zip(keys, vec.tolist()))

    def _optimizer_step(self, model: VitalModel, opt, sched) -> None:
        params = [p for g in opt.param_groups for p in g["params"]]
        if self.recipe.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.recipe.optim.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

    def _log(self, path: Path, row: dict, bar) -> None:
        if not self.is_main:
            return
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
        bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k in ("total", "task", "sem", "vis")})

    def _align_vision(self, model: VitalModel, samples: list[Sample]) -> None:
        """Distil the recipe's patch encoder into the vision tower (training.vision_align), then record it."""
        import dataclasses

        from index_builder.encoder import load_encoder
        from training.vision_align import align_vision

        spec = self.recipe.model
        enc = load_encoder(
            dataclasses.replace(model.config.encoder, path=spec.align_encoder), device=str(self.device)
        )
        images = sorted({str(s.image) for s in samples})
        result = align_vision(
            model, enc, images, steps=spec.align_steps, seed=self.recipe.seed, progress=self.is_main
        )
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "vision_align.json").write_text(json.dumps(result, indent=2))

    def _global_features(self, model: VitalModel, samples: list[Sample]) -> dict[str, torch.Tensor]:
        """Per-step target variant: L2-normalised mean of each image's encoder patch grid (§C.5)."""
        from PIL import Image

        from index_builder.encoder import load_encoder

        enc = load_encoder(model.config.encoder, device=str(self.device), seed=model.config.seed)
        feats: dict[str, torch.Tensor] = {}
        for i in range(0, len(samples), 32):
            chunk = samples[i : i + 32]
            ims = []
            for s in chunk:
                with Image.open(s.image) as im:
                    ims.append(im.convert("RGB"))
            grid = enc.encode(ims)  # (b, G, G, D)
            g = torch.nn.functional.normalize(grid.flatten(1, 2).mean(1), dim=-1)  # (b, D)
            for s, v in zip(chunk, g):
                feats[s.roi_key or s.id] = v
        return feats


def _unit_hash(text: str) -> float:
    """A deterministic number in [0, 1) from a string (the same on every rank and run)."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") / 2**64


class RunDirError(ValueError):
    """The output directory holds an earlier run and the run mode says neither resume nor overwrite."""


def _earlier_run(out: Path) -> list[Path]:
    """What an earlier run left in `out`: its metrics, checkpoints and final weights."""
    ckpts = sorted(out.glob("ckpt-*"))
    return [p for p in (out / "metrics.jsonl", *ckpts, out / "final.safetensors") if p.exists()]


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop rows logged after `step` (a resumed run logs them again; a fresh run starts empty)."""
    if not path.is_file():
        return
    rows = [x for x in path.read_text().splitlines() if x.strip() and json.loads(x)["step"] <= step]
    path.write_text("".join(r + "\n" for r in rows))


def _full(t: torch.Tensor) -> torch.Tensor:
    """A plain CPU tensor from a parameter that may be an FSDP-sharded DTensor (collective)."""
    t = t.detach()
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.contiguous().cpu()


def _progress(enabled: bool, total: int, initial: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True, leave=True)
