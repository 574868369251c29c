"""The two built-in presets: `qwen3-vl-8b` (the paper's sizes) and `tiny` (toy sizes, same classes)."""

from __future__ import annotations

from vital_core.config import (
    BackboneConfig,
    ConfigError,
    DecoderConfig,
    EncoderConfig,
    HeadsConfig,
    LatentConfig,
    LoraConfig,
    VitalConfig,
)

# Special-token ids of the tiny BPE tokenizer (fixed: trained with these first, in this order).
TINY_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

QWEN3_VL_8B_ARCH = {
    "text_config": {
        "vocab_size": 151936,
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
    },
    "vision_config": {
        "depth": 27,
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_heads": 16,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": 4096,
        "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [8, 16, 24],
    },
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "tie_word_embeddings": False,
}

QWEN3_1_7B_ARCH = {
    "vocab_size": 151936,
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "tie_word_embeddings": True,
}

MEDSIGLIP_448_ARCH = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "image_size": 448,
    "patch_size": 14,
}

TINY_VOCAB = 2048

TINY_ARCH = {
    "text_config": {
        "vocab_size": TINY_VOCAB,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [8, 4, 4],
            "mrope_interleaved": True,
        },
    },
    "vision_config": {
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 2,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": 128,
        "num_position_embeddings": 64,
        "deepstack_visual_indexes": [1],
    },
    # ids of the tiny tokenizer's special tokens (TINY_SPECIAL_TOKENS order)
    "image_token_id": 5,
    "video_token_id": 6,
    "vision_start_token_id": 3,
    "vision_end_token_id": 4,
    "tie_word_embeddings": False,
}

TINY_DECODER_ARCH = {
    "vocab_size": TINY_VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 512,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    "tie_word_embeddings": True,
}

TINY_ENCODER_ARCH = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 128,
    "patch_size": 8,
}


def tiny() -> VitalConfig:
    """Toy sizes of the same architectures: for tests and the embedded vital-tiny bundle."""
    return VitalConfig(
        name="vital-tiny",
        preset="tiny",
        backbone=BackboneConfig(
            path=None,
            arch=_copy(TINY_ARCH),
            tokenizer_vocab_size=TINY_VOCAB,
            image_min_pixels=32 * 32,
            image_max_pixels=128 * 128,
        ),
        lora=LoraConfig(r=8, alpha=16, dropout=0.05),
        latent=LatentConfig(k_default=4, k_max=4, max_new_tokens=24),
        decoder=DecoderConfig(path=None, arch=_copy(TINY_DECODER_ARCH), max_sentence_tokens=48),
        encoder=EncoderConfig(
            path=None, arch=_copy(TINY_ENCODER_ARCH), image_size=128, patch_size=8, hidden_size=64
        ),
        heads=HeadsConfig(),
    )


def qwen3_vl_8b(
    backbone_dir: str | None = None,
    decoder_dir: str | None = None,
    encoder_dir: str | None = None,
) -> VitalConfig:
    """The paper's sizes: Qwen3-VL-8B-Instruct + LoRA r=64, Qwen3-1.7B decoder, MedSigLIP-448 targets.

    With a directory left as None that part is built from its architecture with random weights
    (used for GPU latency benchmarks and meta-device parameter counts).
    """
    return VitalConfig(
        name="vital-qwen3-vl-8b",
        preset="qwen3-vl-8b",
        backbone=BackboneConfig(
            path=backbone_dir,
            arch=_copy(QWEN3_VL_8B_ARCH),
            image_min_pixels=None,  # the checkpoint's own (65536 = 256²)
            image_max_pixels=448 * 448,  # ours: the paper does not state it; 196 visual tokens
            dtype="bfloat16",
        ),
        lora=LoraConfig(r=64, alpha=128, dropout=0.05),
        latent=LatentConfig(k_default=4, k_max=4, max_new_tokens=64),
        decoder=DecoderConfig(path=decoder_dir, arch=_copy(QWEN3_1_7B_ARCH)),
        encoder=EncoderConfig(
            path=encoder_dir, arch=_copy(MEDSIGLIP_448_ARCH), image_size=448, patch_size=14, hidden_size=1152
        ),
        heads=HeadsConfig(),
    )


PRESETS = {"tiny": tiny, "qwen3-vl-8b": qwen3_vl_8b}


def preset(name: str) -> VitalConfig:
    """A preset config by name."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]()


def _copy(d: dict) -> dict:
    import copy

    return copy.deepcopy(d)
