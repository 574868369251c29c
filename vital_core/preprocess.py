"""Image + question → model inputs: pixels and grid (PIL processor), chat prompt, token types, padding.

We build Qwen3-VL's chat prompt and `mm_token_type_ids` ourselves with the PIL image processor:
transformers 5.x's default image processors import torchvision and the Qwen3-VL processor also
wants a video processor; neither is needed for one image per prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

IMAGE_PAD = "<|image_pad|>"
ANSWER_STOP = "<|im_end|>"
PROCESSOR_FILE = "preprocessor_config.json"


@dataclass
class PromptBatch:
    """Model inputs for a left-padded batch of (image, question) prompts."""

    input_ids: torch.Tensor  # (B, L) long, left-padded
    attention_mask: torch.Tensor  # (B, L) long, 0 on padding
    mm_token_type_ids: torch.Tensor  # (B, L) int, 1 on image tokens
    pixel_values: torch.Tensor  # (sum of patches, C*T*P*P)
    image_grid_thw: torch.Tensor  # (B, 3) long

    def to(self, device: torch.device | str) -> PromptBatch:
        """Move every tensor to `device`."""
        return PromptBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def make_image_processor(
    min_pixels: int, max_pixels: int, patch_size: int, merge_size: int, temporal_patch_size: int
) -> Qwen2VLImageProcessorPil:
    """Qwen3-VL's image processor (PIL backend, mean = std = 0.5)."""
    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        patch_size=patch_size,
        merge_size=merge_size,
        temporal_patch_size=temporal_patch_size,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def load_image_processor(
    path: str | Path, max_pixels: int | None = None, min_pixels: int | None = None
) -> Qwen2VLImageProcessorPil:
    """Read a model directory's preprocessor_config.json into the PIL processor (no torchvision).

    `min_pixels` / `max_pixels`, when given, replace the directory's values (the model config wins).
    """
    cfg = json.loads((Path(path) / PROCESSOR_FILE).read_text())
    size = cfg.get("size") or {}
    lo = min_pixels or size.get("shortest_edge", cfg.get("min_pixels", 56 * 56))
    hi = max_pixels or size.get("longest_edge", cfg.get("max_pixels", 28 * 28 * 1280))
    if lo > hi:
        raise ValueError(f"{path}: image min_pixels {lo} > max_pixels {hi}; set both in the model config")
    proc = make_image_processor(
        lo, hi, cfg.get("patch_size", 16), cfg.get("merge_size", 2), cfg.get("temporal_patch_size", 2)
    )
    proc.image_mean = cfg.get("image_mean", proc.image_mean)
    proc.image_std = cfg.get("image_std", proc.image_std)
    return proc


def save_image_processor(proc: Qwen2VLImageProcessorPil, path: str | Path) -> None:
    """Write the processor settings as a preprocessor_config.json that `load_image_processor` reads."""
    cfg = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "size": {"shortest_edge": proc.size["shortest_edge"], "longest_edge": proc.size["longest_edge"]},
        "patch_size": proc.patch_size,
        "merge_size": proc.merge_size,
        "temporal_patch_size": proc.temporal_patch_size,
        "image_mean": list(proc.image_mean),
        "image_std": list(proc.image_std),
    }
    (Path(path) / PROCESSOR_FILE).write_text(json.dumps(cfg, indent=2))


def chat_prompt(question: str, n_image_tokens: int) -> str:
    """Qwen3-VL chat prompt with one image before the question, ending at the assistant turn."""
    image = "<|vision_start|>" + IMAGE_PAD * n_image_tokens + "<|vision_end|>"
    return f"<|im_start|>user\n{image}{question.strip()}<|im_end|>\n<|im_start|>assistant\n"


def encode_prompts(
    images: list[Image.Image],
    questions: list[str],
    tokenizer: PreTrainedTokenizerBase,
    processor: Qwen2VLImageProcessorPil,
) -> PromptBatch:
    """Preprocess a batch of images and questions into one left-padded PromptBatch."""
    if len(images) != len(questions) or not images:
        raise ValueError(
            f"need one question per image, got {len(images)} images and {len(questions)} questions"
        )
    vis = processor([im.convert("RGB") for im in images], return_tensors="pt")
    grid = vis["image_grid_thw"]  # (B, 3)
    n_tokens = (grid.prod(-1) // processor.merge_size**2).tolist()
    texts = [chat_prompt(q, n) for q, n in zip(questions, n_tokens)]
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    enc = tokenizer(texts, padding=True, padding_side="left", return_tensors="pt", add_special_tokens=False)
    input_ids = enc["input_ids"]
    return PromptBatch(
        input_ids=input_ids,
        attention_mask=enc["attention_mask"],
        mm_token_type_ids=(input_ids == image_id).int(),
        pixel_values=vis["pixel_values"],
        image_grid_thw=grid,
    )


def encode_answers(
    answers: list[str], tokenizer: PreTrainedTokenizerBase, max_tokens: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded answer token ids ending in the stop token, and their mask: (B, T) each."""
    stop = tokenizer.convert_tokens_to_ids(ANSWER_STOP)
    pad = tokenizer.pad_token_id
    seqs = [tokenizer(a, add_special_tokens=False)["input_ids"][: max_tokens - 1] + [stop] for a in answers]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask
