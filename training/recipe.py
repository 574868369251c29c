"""Training recipes: one YAML file says what to train, on what, how long, and with which switches.

Unknown keys are errors (same loader as the model config). The resolved recipe is written into
every run directory and every bundle's provenance.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vital_core.config import ConfigError, deep_merge, load_dataclass

CURRICULA = ("three_phase", "two_phase", "full_mix", "reverse", "coconut")


@dataclass
class ModelSpec:
    """Where the model to train comes from (exactly one of preset, config, init_bundle)."""

    preset: str | None = None
    """A vital_core preset name (tiny, qwen3-vl-8b)."""
    config: str | None = None
    """A VitalConfig YAML file."""
    init_bundle: str | None = None
    """Warm start from a bundle (e.g. the stage-0 backbone); its LoRA is merged first."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Nested VitalConfig overrides applied after loading (e.g. {latent: {k_max: 4}})."""
    align_encoder: str | None = None
    """Stage 0 from a preset: before training, distil this patch encoder (a tiny MedSigLIP directory) into
    the backbone's vision tower (training.vision_align; ours, the stand-in for a pretrained vision encoder)."""
    align_steps: int = 400
    """Steps of that distillation (batches of 32 training images)."""

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.preset, self.config, self.init_bundle)) != 1:
            raise ConfigError("model: give exactly one of preset, config, init_bundle")
        if self.align_encoder is not None and self.init_bundle is not None:
            raise ConfigError("model.align_encoder: only for a backbone built from a preset or config")


@dataclass
class DataSpec:
    """The five-tuple manifest and its ROI feature store."""

    manifest: str = "data/phantom/manifest.jsonl"
    """JSONL five-tuple manifest (docs/dataset.md)."""
    roi_store: str | None = None
    """index_builder feature store with each sample's ROI feature (needed for the visual loss)."""
    train_split: str = "train"
    eval_split: str = "val"
    max_samples: int | None = None
    """Use only the first N training samples (smoke tests, quick ablations)."""
    max_answer_tokens: int = 32
    """Answers are truncated to this many tokens (stop token included); with `target: chain` this is the
    whole written text (chain, marker and answer)."""
    target: str = "answer"
    """What the model writes after its K latent steps (vital_core.chain): `answer` (the answer alone; the
    paper) or `chain` (the reasoning sentences not made latent, "Answer:", the answer — stage 0 of the
    explicit-reasoning-first recipe at K = 0, and the Coconut-style latent stages)."""

    def __post_init__(self) -> None:
        from vital_core.chain import TARGETS

        if self.target not in TARGETS:
            raise ConfigError(f"data.target: one of {', '.join(TARGETS)}")


@dataclass
class OptimSpec:
    """AdamW with linear warmup then cosine (or linear) decay; restarts each curriculum phase."""

    lr: float = 2e-4
    """Peak learning rate. The paper does not give one; 2e-4 is our choice for LoRA at 8B."""
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_ratio: float = 0.05
    schedule: str = "cosine"
    """cosine or linear decay to zero after warmup."""
    grad_clip: float = 1.0
    """Max global gradient norm (0 disables)."""
    scaffold_lr: float | None = None
    """Learning rate of the scaffolding heads (default: lr)."""
    heads_warmup_steps: int = 0
    """Latent stage (ours): the run's first N optimizer steps update only the scaffolding (the backbone's
    learning rate is held at 0), so the auxiliary decoder and the projector learn to read the latents
    before the backbone is trained toward them. Fresh heads otherwise spend the first stage's budget learning
    the sentences' prior (experiment log §13)."""

    def __post_init__(self) -> None:
        if self.heads_warmup_steps < 0:
            raise ConfigError("optim.heads_warmup_steps must be >= 0")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ConfigError("optim.schedule: cosine, linear or constant")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError("optim.warmup_ratio must be in [0, 1)")


VISUAL_TARGETS = ("shared", "per_step", "per_hop")
"""What each latent step's visual projector regresses (`loss.visual_target`)."""


@dataclass
class LossSpec:
    """The joint objective L_task + λ_sem·L_sem + λ_vis·L_vis and its ablation switches."""

    lambda_sem: float = 1.0
    """Weight of the semantic (auxiliary decoder) loss (paper: 1.0). The one setting: the trainer records
    it in the model config's heads.lambda_sem."""
    lambda_vis: float = 0.1
    """Weight of the visual (L1 to the ROI feature) loss (paper: 0.1); recorded like lambda_sem."""
    semantic: bool = True
    """False drops the auxiliary-decoder loss (ablation)."""
    visual: bool = True
    """False drops the visual-projector loss (ablation)."""
    lambda_words: float = 0.0
    """Ours, off by default: weight of a words loss on the first latent state of each sentence's group
    (`thoughts_per_sentence`) through the backbone's own LM head, a cross-entropy against the uniform
    distribution over the sentence's distinct tokens: the state must "say" its sentence's words, including
    the one its hop resolves, with no decoder to train first. With c = 1 that state is also the one whose LM
    head predicts the next written token, and the two targets compete; c ≥ 2 separates them. 0 disables."""
    words_content: bool = False
    """With lambda_words: the target is only the sentence's content tokens, those not in its own prompt and
    found in at most half of the batch's sentences at the same step (an in-batch IDF cut: "The", "is", ".",
    "organ" go, the structure the hop resolves stays). A row left with nothing keeps its whole sentence.
    Off: every distinct token of the sentence. Made for `latent.feed: soft`, where what the LM head says
    at the state is what is fed."""
    lambda_distill: float = 0.0
    """Ours, off by default, after CODI (arXiv 2502.21074): in a latent run, the same model also reads each
    sample with every sentence written (K = 0, no gradient: the teacher), and the student's states at the
    tokens it still writes must match the teacher's at the same tokens, at every decoder layer (aligned
    from the end; relative squared error, mean over layers). The teacher read the resolved hop in words,
    so its states hold what the latent steps must pass on: a dense target for the written rest to take it
    from the fed states. One more forward per step. 0 disables."""
    distill_teacher: bool = False
    """With lambda_distill: also train the teacher pass on its written chain (its task loss joins the total,
    as in CODI), so the shared weights cannot make the target generic; the target itself is never
    differentiated. Off: the teacher runs without gradient."""
    visual_target: str = "shared"
    """shared (paper default), per_step (§C.5: interpolate global → ROI feature over the steps) or per_hop
    (ours: step k regresses the ROI feature of its own mask, the manifest's `step_masks`; steps without
    one fall back to the sample's mask, so on a manifest without step masks it equals shared)."""

    def __post_init__(self) -> None:
        if self.lambda_words < 0:
            raise ConfigError("loss.lambda_words must be >= 0")
        if self.lambda_distill < 0:
            raise ConfigError("loss.lambda_distill must be >= 0")
        if self.visual_target not in VISUAL_TARGETS:
            raise ConfigError(f"loss.visual_target: one of {', '.join(VISUAL_TARGETS)}")


@dataclass
class PhaseSpec:
    """One curriculum phase: samples whose K lies in [min_k, max_k], for `epochs` epochs."""

    min_k: int = 0
    max_k: int = 4
    epochs: float = 1.0
    name: str = ""
    latent_cap: int | None = None
    """Coconut stage: a sample runs min(its depth, latent_cap) latent steps (its first sentences become
    latent; with `data.target: chain` the rest are written). None: its own depth."""


@dataclass
class CurriculumSpec:
    """Which schedule; `phases` overrides the named kind's default phases when given."""

    kind: str = "three_phase"
    epochs: list[float] = field(default_factory=lambda: [5.0, 5.0, 10.0])
    """Epochs per phase of the named kind (paper: 5, 5, 10); a shorter list repeats its last value.
    full_mix runs one phase for the sum of the listed epochs. coconut (ours, after Coconut, Hao et al.
    2024) has one stage per listed value: stage c makes every sample's first c sentences latent."""
    phases: list[PhaseSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in CURRICULA and not self.phases:
            raise ConfigError(f"curriculum.kind: one of {', '.join(CURRICULA)} (or give phases)")


@dataclass
class CheckpointSpec:
    every_steps: int = 200
    """Write a checkpoint every N optimizer steps (and at the end of every phase)."""
    keep_last: int = 2
    """How many checkpoints to keep."""


@dataclass
class Recipe:
    """A whole training run."""

    name: str = "run"
    output_dir: str = "runs/run"
    seed: int = 0
    model: ModelSpec = field(default_factory=lambda: ModelSpec(preset="tiny"))
    data: DataSpec = field(default_factory=DataSpec)
    stage: str = "latent"
    """latent: the paper's recipe (frozen backbone + LoRA + scaffolding). backbone: stage 0, train the
    whole backbone as a direct-answer model (K = 0, task loss only; our stand-in for pretraining)."""
    k_override: int | None = None
    """Force every sample's K to this value (the K ablation); None uses each sample's own depth."""
    batch_size: int = 16
    """Per-process batch size (each batch shares one K)."""
    grad_accum: int = 1
    precision: str = "auto"
    """Compute precision. Trainable parameters and optimizer state are always fp32 and the frozen
    backbone stays in its checkpoint dtype (`backbone.dtype`). bf16: bf16 autocast (CPU too; FSDP casts
    with MixedPrecisionPolicy(bf16, reduce fp32)). auto: bf16 on CUDA; on CPU no autocast (a bf16
    backbone still computes in bf16, heads in fp32). fp32: no autocast and the backbone upcast to fp32."""
    device: str = "auto"
    optim: OptimSpec = field(default_factory=OptimSpec)
    loss: LossSpec = field(default_factory=LossSpec)
    curriculum: CurriculumSpec = field(default_factory=CurriculumSpec)
    checkpoint: CheckpointSpec = field(default_factory=CheckpointSpec)
    log_every: int = 10
    distributed: str = "ddp"
    """ddp (replicated) or fsdp (sharded LoRA + scaffolding, for the 8B recipe; see docs/training.md)."""
    num_workers: int = 0
    """DataLoader worker processes that decode each batch's images and gather its targets while the
    model steps (0: in the training process)."""
    train_backbone: bool = False
    """Latent stage: train every backbone weight too (Coconut's setting: the whole model learns to use its
    fed-back states), not only LoRA + scaffolding. Checkpoints then hold the whole backbone."""
    thoughts_per_sentence: int = 1
    """Latent stage: fed-back states per reasoning sentence made latent (Coconut's c). A sample with k latent
    sentences runs c·k latent steps; the semantic and visual losses supervise the last state of each
    sentence's group. Score and serve such a bundle with K = c × sentences."""
    direct_share: float = 0.0
    """Latent stage: this share of each phase's samples (drawn per phase, deterministically) trains at
    K = 0 on the answer alone, so K = 0 stays a direct-answer mode of the latent model (ours)."""

    def __post_init__(self) -> None:
        if self.stage not in ("latent", "backbone"):
            raise ConfigError("stage: latent or backbone")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError("precision: auto, bf16 or fp32")
        if self.distributed not in ("ddp", "fsdp"):
            raise ConfigError("distributed: ddp or fsdp")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("batch_size and grad_accum must be >= 1")
        if self.thoughts_per_sentence < 1:
            raise ConfigError("thoughts_per_sentence must be >= 1")
        if self.train_backbone and self.stage != "latent":
            raise ConfigError("train_backbone: only for stage latent (stage backbone trains it anyway)")
        if not 0.0 <= self.direct_share < 1.0:
            raise ConfigError("direct_share must be in [0, 1)")

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> Recipe:
        """Load a recipe file; `overrides` are `a.b=value` strings (YAML values) applied on top."""
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        for item in overrides or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"override {item!r}: expected key=value")
            nested: Any = yaml.safe_load(value)
            for p in reversed(key.split(".")):
                nested = {p: nested}
            deep_merge(data, nested)
        return load_dataclass(cls, data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """Build from a nested dict (unknown keys rejected)."""
        return load_dataclass(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def phases_for(c: CurriculumSpec) -> list[PhaseSpec]:
    """The phases of a curriculum (paper §3.5 and Table 3)."""
    if c.phases:
        return c.phases
    if c.kind == "full_mix":  # all K from the start, for the total of the given epochs
        return [PhaseSpec(0, 99, float(sum(c.epochs)), "full_mix")]
    if c.kind == "coconut":  # stage c: every sample, its first c sentences latent
        return [PhaseSpec(0, 99, float(e), f"stage{i + 1}", latent_cap=i + 1) for i, e in enumerate(c.epochs)]
    e = c.epochs + [c.epochs[-1]] * (3 - len(c.epochs)) if len(c.epochs) < 3 else c.epochs
    if c.kind == "three_phase":  # K = 1, then K <= 2, then all
        return [
            PhaseSpec(1, 1, e[0], "phase1"),
            PhaseSpec(0, 2, e[1], "phase2"),
            PhaseSpec(0, 99, e[2], "phase3"),
        ]
    if c.kind == "two_phase":  # K <= 2, then all
        return [PhaseSpec(0, 2, e[0] + e[1], "phase1"), PhaseSpec(0, 99, e[2], "phase2")]
    # reverse: all K first, then K <= 2, then K = 1 (hard to easy)
    return [
        PhaseSpec(0, 99, e[2], "phase1"),
        PhaseSpec(0, 2, e[1], "phase2"),
        PhaseSpec(1, 1, e[0], "phase3"),
    ]
