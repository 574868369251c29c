"""`VitalModel`: backbone (+ LoRA), tokenizer, image processor, optional scaffolding — one object."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn
from transformers import PreTrainedTokenizerBase, Qwen3VLConfig, Qwen3VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from vital_core.chain import final_answer, written_steps
from vital_core.config import VitalConfig
from vital_core.heads import Scaffold, build_scaffold
from vital_core.latent import FeedOverride, LatentOutput, TokenCallback, latent_forward
from vital_core.lora import attach_lora, merge_lora, unwrap
from vital_core.prefix_cache import PrefixCache
from vital_core.preprocess import (
    ANSWER_STOP,
    PromptBatch,
    encode_prompts,
    load_image_processor,
    make_image_processor,
)
from vital_core.static_cache import StaticRunner
from vital_core.timing import null_timer
from vital_core.tokenizer import corpus, load_tokenizer, train_bpe_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Answer:
    """One answered prompt."""

    text: str
    """The answer (`vital_core.chain.final_answer` of what was decoded)."""
    tokens: list[int]
    k: int
    latents: torch.Tensor  # (k+1, H): h_0..h_k
    prefix_hit: bool | None = None  # image prefix reused from a prefix cache (None: no cache)
    written: str = ""
    """Reasoning the model wrote before its answer (an explicit chain of thought), empty when none."""


class VitalModel(nn.Module):
    """The deployable VITAL model; `scaffold` is attached only for training and /explain."""

    def __init__(
        self,
        config: VitalConfig,
        backbone: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        processor: Qwen2VLImageProcessorPil,
        scaffold: Scaffold | None = None,
    ):
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.processor = processor
        self.scaffold = scaffold

    @property
    def core(self) -> Qwen3VLForConditionalGeneration:
        """The Qwen3-VL module (LoRA injected in place when attached)."""
        return unwrap(self.backbone)

    @property
    def device(self) -> torch.device:
        return self.core.lm_head.weight.device

    @property
    def hidden_size(self) -> int:
        return self.core.config.text_config.hidden_size

    @property
    def stop_ids(self) -> list[int]:
        """Tokens that end an answer: <|im_end|>, the tokenizer's EOS and the checkpoint's
        generation_config.json `eos_token_id` (Qwen3-VL: <|im_end|> and <|endoftext|>)."""
        ids = {self.tokenizer.convert_tokens_to_ids(ANSWER_STOP), self.tokenizer.eos_token_id}
        gen = getattr(self.core, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None) if gen is not None else None
        ids.update(eos if isinstance(eos, list | tuple) else [eos])
        return sorted(i for i in ids if isinstance(i, int) and i >= 0)

    def encode(self, images: Sequence[Image.Image], questions: Sequence[str]) -> PromptBatch:
        """Preprocess images + questions into a left-padded batch on the model's device."""
        return encode_prompts(list(images), list(questions), self.tokenizer, self.processor).to(self.device)

    def forward(
        self,
        batch: PromptBatch,
        k: int | Sequence[int] | torch.Tensor,
        answer_ids: torch.Tensor | None = None,
        answer_mask: torch.Tensor | None = None,
        max_new_tokens: int | None = None,
        timer: Callable = null_timer,
        **serving,  # runner / prefix_cache / image_keys / on_tokens / feed_override (see latent_forward)
    ) -> LatentOutput:
        """The latent loop (see `vital_core.latent.latent_forward`), fed as `config.latent.feed` says."""
        return latent_forward(
            self.core,
            batch,
            k,
            answer_ids=answer_ids,
            answer_mask=answer_mask,
            max_new_tokens=max_new_tokens or self.config.latent.max_new_tokens,
            stop_ids=self.stop_ids,
            pad_id=self.tokenizer.pad_token_id or 0,
            timer=timer,
            feed_norm=self.feed_norm() if self.config.latent.feed == "embed_rms" else None,
            feed_map=self.soft_feed if self.config.latent.feed == "soft" else None,
            **serving,
        )

    def soft_feed(self, h: torch.Tensor) -> torch.Tensor:
        """`latent.feed: soft`: the expected token embedding under the LM head's distribution at h,
        softmax(lm_head(h) / T) · E, for (B, 1, H) states (differentiable; one (H, V) and one (V, H) matmul).
        The softmax runs in fp32; the mix in the table's own dtype (no fp32 copy of a V×H table per step)."""
        emb = self.core.model.language_model.embed_tokens.weight
        logits = self.core.lm_head(h).float() / self.config.latent.soft_temperature
        return (torch.softmax(logits, dim=-1).to(emb.dtype) @ emb).to(h.dtype)

    def feed_norm(self) -> float:
        """Mean L2 norm of the token embeddings (what `latent.feed: embed_rms` rescales fed states to);
        computed once per embedding weight version (the embeddings are frozen in latent training)."""
        w = self.core.model.language_model.embed_tokens.weight
        key = (w.data_ptr(), w._version)
        if getattr(self, "_feed_norm_key", None) != key:
            with torch.no_grad():
                self._feed_norm = float(w.float().norm(dim=-1).mean())
            self._feed_norm_key = key
        return self._feed_norm

    def answer(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        k: int | Sequence[int] | None = None,
        max_new_tokens: int | None = None,
        timer: Callable = null_timer,
        runner: StaticRunner | None = None,
        prefix_cache: PrefixCache | None = None,
        on_tokens: TokenCallback | None = None,
        feed_override: FeedOverride | None = None,
    ) -> list[Answer]:
        """Answer a batch of questions (inference mode, greedy; optional static cache, prefix cache,
        per-step token callback and fed-state override, see `latent_forward`). A written chain of
        thought is split from the answer (`vital_core.chain`)."""
        k = self.config.latent.k_default if k is None else k
        with torch.inference_mode():
            with timer("preprocess"):
                batch = self.encode(images, questions)
                keys = [prefix_cache.key(im) for im in images] if prefix_cache is not None else None
            out = self(
                batch,
                k,
                max_new_tokens=max_new_tokens,
                timer=timer,
                runner=runner,
                prefix_cache=prefix_cache,
                image_keys=keys,
                on_tokens=on_tokens,
                feed_override=feed_override,
            )
        answers = []
        for i, (toks, kb) in enumerate(zip(out.tokens, out.k.tolist())):
            text = self.tokenizer.decode(toks, skip_special_tokens=True).strip()
            answers.append(
                Answer(
                    text=final_answer(text),
                    tokens=toks,
                    k=int(kb),
                    latents=out.latents[i, : int(kb) + 1].float().cpu(),
                    prefix_hit=out.prefix_hits[i] if out.prefix_hits is not None else None,
                    written=written_steps(text),
                )
            )
        return answers

    def add_lora(self) -> None:
        """Attach fresh LoRA adapters (config.lora) to the language model."""
        self.backbone = attach_lora(self.core, self.config.lora)

    def merge_lora(self) -> None:
        """Fold LoRA into the backbone weights (what serving runs)."""
        self.backbone = merge_lora(self.backbone)

    def add_scaffold(self) -> None:
        """Attach fresh scaffolding heads (training from scratch)."""
        self.scaffold = build_scaffold(self.config, self.hidden_size).to(self.device)


def load_backbone(
    config: VitalConfig, device: str | torch.device = "cpu", tokenizer_texts: list[str] | None = None
) -> tuple[Qwen3VLForConditionalGeneration, PreTrainedTokenizerBase, Qwen2VLImageProcessorPil]:
    """Backbone, tokenizer and processor: from `backbone.path` (local only) or built from `backbone.arch`.

    A from-config backbone gets a BPE tokenizer trained on the built-in corpus plus `tokenizer_texts`
    (e.g. the training set's questions, answers and reasoning).
    """
    bc = config.backbone
    dtype = DTYPES[bc.dtype]
    if bc.path:
        core = Qwen3VLForConditionalGeneration.from_pretrained(
            bc.path, local_files_only=True, dtype=dtype, attn_implementation=bc.attn_implementation
        )
        return (
            core.to(device).eval(),
            load_tokenizer(bc.path),
            load_image_processor(bc.path, bc.image_max_pixels, bc.image_min_pixels),
        )
    texts = list(corpus()) + list(tokenizer_texts or [])
    tokenizer = train_bpe_tokenizer(texts, vocab_size=bc.tokenizer_vocab_size)
    hf_cfg = Qwen3VLConfig(**bc.arch)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(config.seed)
        core = Qwen3VLForConditionalGeneration._from_config(
            hf_cfg, attn_implementation=bc.attn_implementation
        )
    core = core.to(device=device, dtype=dtype).eval()
    v = hf_cfg.vision_config
    processor = make_image_processor(
        bc.image_min_pixels or 32 * 32,
        bc.image_max_pixels or 448 * 448,
        v.patch_size,
        v.spatial_merge_size,
        v.temporal_patch_size,
    )
    return core, tokenizer, processor


def build_model(
    config: VitalConfig,
    *,
    lora: bool = False,
    scaffold: bool = False,
    device: str | torch.device = "cpu",
    tokenizer_texts: list[str] | None = None,
) -> VitalModel:
    """A fresh model from a config: backbone (+ LoRA) (+ scaffolding)."""
    core, tokenizer, processor = load_backbone(config, device, tokenizer_texts)
    for p in core.parameters():
        p.requires_grad_(False)
    model = VitalModel(config, core, tokenizer, processor)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        if lora:
            torch.manual_seed(config.seed + 2)
            model.add_lora()
        if scaffold:
            torch.manual_seed(config.seed + 1)
            model.add_scaffold()
    return model
