"""LoRA on the language model only (peft), merge for serving, and meta-device parameter counts."""

from __future__ import annotations

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from torch import nn
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from vital_core.config import LoraConfig, VitalConfig


def lora_target_regex(cfg: LoraConfig) -> str:
    """Regex matching the chosen projections of every language-model layer (never the vision tower)."""
    names = "|".join(cfg.target_modules)
    return rf".*language_model\.layers\.\d+\.(self_attn|mlp)\.({names})"


def attach_lora(core: Qwen3VLForConditionalGeneration, cfg: LoraConfig) -> PeftModel:
    """Wrap the backbone with fresh LoRA adapters; everything else is frozen."""
    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=lora_target_regex(cfg),
        bias="none",
    )
    return get_peft_model(core, peft_cfg)


def merge_lora(model: nn.Module) -> Qwen3VLForConditionalGeneration:
    """Fold LoRA weights into the base weights and return the plain backbone (no-op without LoRA)."""
    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model


def unwrap(model: nn.Module) -> Qwen3VLForConditionalGeneration:
    """The Qwen3-VL module inside a PeftModel (LoRA layers are injected in place)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def count_parameters(config: VitalConfig) -> dict[str, int]:
    """LoRA, visual projector and pj_in parameter counts, built on the meta device (no weights allocated)."""
    from vital_core.heads import VisualProjector

    with torch.device("meta"):
        core = Qwen3VLForConditionalGeneration(Qwen3VLConfig(**config.backbone.arch))
        peft_model = attach_lora(core, config.lora)
        hidden = core.config.text_config.hidden_size
        vp = VisualProjector(hidden, config.encoder.hidden_size)
        dec_hidden = config.decoder.arch.get("hidden_size", hidden)
        pj_in = nn.Linear(hidden, dec_hidden)
    lora = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    return {
        "lora": lora,
        "visual_projector": sum(p.numel() for p in vp.parameters()),
        "pj_in": sum(p.numel() for p in pj_in.parameters()),
        "backbone_language_model": sum(
            p.numel() for n, p in core.named_parameters() if "language_model" in n and "lora_" not in n
        ),
    }
