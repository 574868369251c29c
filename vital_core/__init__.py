"""vital_core: the VITAL model — config, backbone, preprocessing, the one latent loop, heads, LoRA, bundles."""

__version__ = "0.1.0"

from vital_core.bundle import BundleError, load_bundle, load_scaffold, read_config, save_bundle, verify_bundle
from vital_core.config import QUESTION_TYPES, ConfigError, VitalConfig
from vital_core.heads import Scaffold, VisualProjector, encode_steps
from vital_core.latent import LatentOutput, latent_forward
from vital_core.model import Answer, VitalModel, build_model, load_backbone
from vital_core.preprocess import PromptBatch, encode_answers, encode_prompts
from vital_core.presets import preset, qwen3_vl_8b, tiny
from vital_core.qtypes import REASONING_DEPTH, classify_question, depth_for
from vital_core.timing import StageTimer

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
