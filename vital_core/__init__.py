"""vital_core: the VITAL model — config, backbone, preprocessing, the one latent loop, heads, LoRA, bundles.

The public names below load on first use (PEP 562), so `import vital_core` — and every `vital`
subcommand's registration, hence `vital --help` — does not pay for torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "BundleError": "vital_core.bundle",
    "load_bundle": "vital_core.bundle",
    "load_scaffold": "vital_core.bundle",
    "read_config": "vital_core.bundle",
    "save_bundle": "vital_core.bundle",
    "verify_bundle": "vital_core.bundle",
    "QUESTION_TYPES": "vital_core.config",
    "ConfigError": "vital_core.config",
    "VitalConfig": "vital_core.config",
    "Scaffold": "vital_core.heads",
    "VisualProjector": "vital_core.heads",
    "encode_steps": "vital_core.heads",
    "LatentOutput": "vital_core.latent",
    "latent_forward": "vital_core.latent",
    "Answer": "vital_core.model",
    "VitalModel": "vital_core.model",
    "build_model": "vital_core.model",
    "load_backbone": "vital_core.model",
    "PromptBatch": "vital_core.preprocess",
    "encode_answers": "vital_core.preprocess",
    "encode_prompts": "vital_core.preprocess",
    "preset": "vital_core.presets",
    "qwen3_vl_8b": "vital_core.presets",
    "tiny": "vital_core.presets",
    "REASONING_DEPTH": "vital_core.qtypes",
    "classify_question": "vital_core.qtypes",
    "depth_for": "vital_core.qtypes",
    "StageTimer": "vital_core.timing",
}

if TYPE_CHECKING:
    from vital_core.bundle import (
        BundleError,
        load_bundle,
        load_scaffold,
        read_config,
        save_bundle,
        verify_bundle,
    )
    from vital_core.config import QUESTION_TYPES, ConfigError, VitalConfig
    from vital_core.heads import Scaffold, VisualProjector, encode_steps
    from vital_core.latent import LatentOutput, latent_forward
    from vital_core.model import Answer, VitalModel, build_model, load_backbone
    from vital_core.preprocess import PromptBatch, encode_answers, encode_prompts
    from vital_core.presets import preset, qwen3_vl_8b, tiny
    from vital_core.qtypes import REASONING_DEPTH, classify_question, depth_for
    from vital_core.timing import StageTimer


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vital_core' has no attribute {name!r}")


__all__ = [
    "QUESTION_TYPES",
    "REASONING_DEPTH",
    "Answer",
    "BundleError",
    "ConfigError",
    "LatentOutput",
    "PromptBatch",
    "Scaffold",
    "StageTimer",
    "VisualProjector",
    "VitalConfig",
    "VitalModel",
    "build_model",
    "classify_question",
    "depth_for",
    "encode_answers",
    "encode_prompts",
    "encode_steps",
    "latent_forward",
    "load_backbone",
    "load_bundle",
    "load_scaffold",
    "preset",
    "qwen3_vl_8b",
    "read_config",
    "save_bundle",
    "tiny",
    "verify_bundle",
]
