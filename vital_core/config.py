"""Typed configuration for a VITAL model: backbone, LoRA, latent loop, scaffolding heads.

One `VitalConfig` describes a model completely. It loads from YAML (unknown keys are an
error, never silently ignored), resolves to plain dicts for saving, and is stored inside
every bundle, so a bundle is self-describing.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

QUESTION_TYPES: tuple[str, ...] = (
    "yesno",
    "identify",
    "location_choice",
    "location",
    "describe",
    "reasoning",
)

FEEDS: tuple[str, ...] = ("hidden", "embed_rms", "soft")
"""What the latent loop feeds back (`latent.feed`)."""

VP_VARIANTS: tuple[str, ...] = ("res_mlp_ln", "linear", "mlp", "mlp_ln", "transformer")
"""Visual projector architectures of the paper's §C.2 ablation; res_mlp_ln is the paper's projector."""


class ConfigError(ValueError):
    """A config file or dict that does not describe a valid model."""


@dataclass
class BackboneConfig:
    """The Qwen3-VL multimodal backbone."""

    path: str | None = None
    """Local directory with Qwen3-VL weights, tokenizer and preprocessor (read with local_files_only).
    None builds the architecture in `arch` with random weights."""
    arch: dict[str, Any] = field(default_factory=dict)
    """Qwen3VLConfig keyword arguments, used when `path` is None (tiny preset, GPU latency benchmarks)."""
    tokenizer_vocab_size: int = 2048
    """Vocabulary size of the BPE tokenizer trained for a from-config backbone (ignored with `path`)."""
    image_min_pixels: int | None = None
    """Smallest image area (pixels) after the processor's smart resize. None: the model directory's
    `preprocessor_config.json` value (Qwen3-VL-8B-Instruct: 65536 = 256²), or 32·32 for a from-config
    backbone. A value here always wins over the directory's."""
    image_max_pixels: int | None = 448 * 448
    """Largest image area (pixels) after the smart resize: 448² → at most 196 visual tokens (patch 16,
    merge 2). Our choice, matching MedSigLIP-448's input; the paper does not state the backbone's input
    size. None: the directory's value (Qwen3-VL: 16777216). A value here always wins over the directory's."""
    dtype: str = "float32"
    """Weight dtype: float32, bfloat16 or float16."""
    attn_implementation: str = "sdpa"
    """Attention kernel: sdpa (default) or eager."""

    def __post_init__(self) -> None:
        _check_choice("backbone.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        _check_choice("backbone.attn_implementation", self.attn_implementation, ("sdpa", "eager"))
        if self.path is None and not self.arch:
            raise ConfigError("backbone: give either `path` (local weights) or `arch` (build from config)")
        lo, hi = self.image_min_pixels, self.image_max_pixels
        if (lo is not None and lo <= 0) or (hi is not None and hi <= 0) or (lo and hi and lo > hi):
            raise ConfigError("backbone: need 0 < image_min_pixels <= image_max_pixels")


@dataclass
class LoraConfig:
    """LoRA on the language model's linear layers (peft). The vision tower is never adapted."""

    r: int = 64
    """Rank. 64 reproduces the paper's 174.6M LoRA parameters on Qwen3-VL-8B."""
    alpha: int = 128
    """Scale numerator (scaling = alpha / r). The paper does not give it; we use the common 2·r."""
    dropout: float = 0.05
    """LoRA dropout (paper: 0.05)."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Projection names inside each language-model layer."""

    def __post_init__(self) -> None:
        if self.r <= 0 or self.alpha <= 0:
            raise ConfigError("lora: r and alpha must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("lora: dropout must be in [0, 1)")
        if not self.target_modules:
            raise ConfigError("lora: target_modules is empty")


@dataclass
class LatentConfig:
    """The recurrent latent loop and answer decoding."""

    k_default: int = 4
    """K used when a request does not give one (paper: 4)."""
    k_max: int = 4
    """Largest K accepted."""
    max_new_tokens: int = 32
    """Default cap on generated answer tokens."""
    feed: str = "hidden"
    """What each latent step is fed: `hidden`, the last hidden state as it comes out of the final norm (the
    paper); or `embed_rms`, that state rescaled to the mean L2 norm of the token embeddings (ours, after
    GAP, arXiv 2605.12374: a fed-back hidden state is otherwise many times a token embedding's norm;
    `vital eval --mode latent` reports the ratio); or `soft`, the expected token embedding under the LM head's
    distribution at that state, softmax(lm_head(h) / soft_temperature) · E (ours, after Soft Thinking, arXiv
    2505.15778: the fed input lies in the span of the embeddings the backbone was trained to read, so a
    backbone that reads written chains reads its own latent "words" without learning a new input space;
    cost per fed state: two V×H matmuls, about 2.5 GFLOP and 2.5 GB of bf16 weights read on Qwen3-VL-8B,
    ~15 % of a step by arithmetic, not measured).
    Latents h_k given to the heads are never changed."""
    soft_temperature: float = 1.0
    """Softmax temperature of `feed: soft` (lower: nearer the argmax token's embedding)."""

    def __post_init__(self) -> None:
        if self.k_max < 0 or not 0 <= self.k_default <= self.k_max:
            raise ConfigError("latent: need 0 <= k_default <= k_max")
        if self.max_new_tokens <= 0:
            raise ConfigError("latent: max_new_tokens must be positive")
        _check_choice("latent.feed", self.feed, FEEDS)
        if not self.soft_temperature > 0:
            raise ConfigError("latent: soft_temperature must be positive")


@dataclass
class DecoderConfig:
    """The auxiliary text decoder (Qwen3 causal LM) that reads one latent as a prefix."""

    path: str | None = None
    """Local directory with Qwen3 weights (e.g. Qwen3-1.7B). None builds `arch` with random weights."""
    arch: dict[str, Any] = field(default_factory=dict)
    """Qwen3Config keyword arguments, used when `path` is None."""
    max_sentence_tokens: int = 64
    """Longest reasoning sentence scored (tokens, EOS included); longer ones are truncated."""

    def __post_init__(self) -> None:
        if self.path is None and not self.arch:
            raise ConfigError("decoder: give either `path` or `arch`")


@dataclass
class EncoderConfig:
    """The frozen medical vision encoder (MedSigLIP) that supplies ROI targets and patch grids."""

    path: str | None = None
    """Local directory with SigLIP vision weights (e.g. MedSigLIP-448). None builds `arch`."""
    arch: dict[str, Any] = field(default_factory=dict)
    """SiglipVisionConfig keyword arguments, used when `path` is None."""
    image_size: int = 448
    """Square input size after zero-padding to square and resizing."""
    patch_size: int = 14
    """Patch size; the grid is image_size // patch_size per side."""
    hidden_size: int = 1152
    """Feature dimension D of each patch (the visual projector's output size)."""

    def __post_init__(self) -> None:
        if self.path is None and not self.arch:
            raise ConfigError("encoder: give either `path` or `arch`")
        if self.image_size % self.patch_size:
            raise ConfigError("encoder: image_size must be a multiple of patch_size")

    @property
    def grid(self) -> int:
        """Patches per side (32 for MedSigLIP-448)."""
        return self.image_size // self.patch_size


@dataclass
class HeadsConfig:
    """Training-time scaffolding: visual projector, pj_in, and the loss weights that use them."""

    vp_dropout: float = 0.1
    """Dropout after the GELU in the visual projector's residual branch (paper: 0.1)."""
    vp_variant: str = "res_mlp_ln"
    """Visual projector architecture (paper §C.2): res_mlp_ln (the paper's, eq. 5), linear, mlp, mlp_ln,
    transformer. Only the default is the paper's model; the others exist for the projector ablation."""
    lambda_sem: float = 1.0
    """Record of the semantic-loss weight the model was trained with. The recipe's `loss.lambda_sem` is
    the one setting; the trainer writes it here so a bundle says what it was trained with."""
    lambda_vis: float = 0.1
    """Record of the visual-loss weight (the recipe's `loss.lambda_vis`; see lambda_sem)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.vp_dropout < 1.0:
            raise ConfigError("heads: vp_dropout must be in [0, 1)")
        _check_choice("heads.vp_variant", self.vp_variant, VP_VARIANTS)
        if self.lambda_sem < 0 or self.lambda_vis < 0:
            raise ConfigError("heads: loss weights must be >= 0")


@dataclass
class VitalConfig:
    """Everything that defines a VITAL model."""

    name: str = "vital"
    """Model name reported by the service."""
    preset: str = "custom"
    """Which preset it came from (tiny, qwen3-vl-8b, custom)."""
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(path="."))
    lora: LoraConfig = field(default_factory=LoraConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    decoder: DecoderConfig = field(default_factory=lambda: DecoderConfig(path="."))
    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(path="."))
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    seed: int = 0
    """Seed for random initialisation of from-config parts."""

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-safe)."""
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        """Write the resolved config to a YAML file."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VitalConfig:
        """Build from a nested dict; unknown keys raise ConfigError naming them."""
        return _build(cls, data, "")

    @classmethod
    def from_yaml(cls, path: str | Path) -> VitalConfig:
        """Load from a YAML file; unknown keys raise ConfigError naming them."""
        try:
            data = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        return cls.from_dict(data)


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Merge `extra` into `base` recursively (mappings merge, anything else replaces); returns `base`."""
    for k, v in extra.items():
        cur = base.get(k)
        base[k] = deep_merge(dict(cur) if isinstance(cur, dict) else {}, v) if isinstance(v, dict) else v
    return base


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(choices)}")


def load_dataclass(cls: type, data: Any, where: str = "") -> Any:
    """Recursively build dataclass `cls` from a mapping, rejecting unknown keys (ConfigError names them)."""
    return _build(cls, data, where)


def _build(cls: type, data: Any, where: str) -> Any:
    """Recursively build dataclass `cls` from `data`, rejecting unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where or 'config'}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        sub = f"{where}.{name}" if where else name
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is list and typing.get_args(tp) else None
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, sub)
        elif item is not None and dataclasses.is_dataclass(item):  # e.g. curriculum.phases
            if not isinstance(value, list):
                raise ConfigError(f"{sub}: expected a list, got {type(value).__name__}")
            kwargs[name] = [_build(item, v, f"{sub}[{i}]") for i, v in enumerate(value)]
        else:
            kwargs[name] = _coerce(tp, value, sub)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from exc


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Light type check for leaf values (int/float/str/bool/list/dict, optionals)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        origin = typing.get_origin(tp)
    base = origin or tp
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base in (int, float, str, bool, list, dict) and not isinstance(value, base):
        raise ConfigError(f"{where}: expected {base.__name__}, got {type(value).__name__} ({value!r})")
    if base is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got bool")
    return value
