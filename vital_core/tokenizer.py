"""Tokenizers: the real one from a model directory, or a byte-level BPE trained on our own text.

The tiny preset cannot download Qwen's tokenizer, so it trains a byte-level BPE with the
`tokenizers` library on text the project generates itself (medical VQA vocabulary rendered
through question/answer/reasoning templates), carrying Qwen's special tokens at fixed ids.
Byte-level BPE encodes any text, so words outside the corpus still round-trip.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from vital_core.config import QUESTION_TYPES
from vital_core.presets import TINY_SPECIAL_TOKENS

MODALITIES = (
    "CT",
    "MRI",
    "X-ray",
    "ultrasound",
    "endoscopy",
    "dermoscopy",
    "fundus",
    "pathology",
    "OCT",
)
TARGETS = (
    "liver",
    "kidney",
    "spleen",
    "lung",
    "heart",
    "brain",
    "tumor",
    "lesion",
    "nodule",
    "cyst",
    "polyp",
    "vessel",
    "optic disc",
    "gland",
    "nucleus",
    "mass",
    "bone",
    "prostate",
    "pancreas",
    "bladder",
    "stomach",
    "colon",
    "skin lesion",
    "retina",
    "macula",
    "fluid",
    "edema",
    "calcification",
)
REGIONS = (
    "upper left",
    "upper right",
    "lower left",
    "lower right",
    "center",
    "upper",
    "lower",
    "left",
    "right",
)
ADJECTIVES = (
    "round",
    "oval",
    "irregular",
    "lobulated",
    "elongated",
    "bright",
    "dark",
    "hyperintense",
    "hypointense",
    "hyperechoic",
    "hypoechoic",
    "homogeneous",
    "heterogeneous",
    "speckled",
    "smooth",
    "ill-defined",
    "well-defined",
    "small",
    "large",
    "medium",
    "textured",
    "uniform",
    "sharp",
    "blurred",
)
TEMPLATES = (
    "Is there a {t} in this {m} image?",
    "Is the {t} visible in the {r} region?",
    "What structure is highlighted in the {r} of the image?",
    "Which organ appears {a} in this {m} scan?",
    "Where is the {t} located?",
    "Is the {t} in the {r} or the {r2} part of the image?",
    "Describe the {t} in this {m} image.",
    "What can be inferred about the {t}?",
    "Yes.",
    "No.",
    "The {t} is located in the {r} of the image.",
    "The image shows a {a} {t} in the {r} region.",
    "A {a}, {a2} {t} appears in the {r} part of the image.",
    "The {t} has a {a} boundary and {a2} texture.",
    "It lies next to the {t2}, which appears {a}.",
    "Compared with the surrounding tissue, the {t} is {a}.",
    "The region in the {r} is {a} with a {a2} margin.",
    "This suggests a {a} {t} rather than a {t2}.",
    "The answer is {t}.",
)
DIGITS = " ".join(str(i) for i in range(200)) + " A B C D (A) (B) (C) (D) % . , ; : ? !"


def corpus() -> Iterator[str]:
    """The project's own training text for the tiny tokenizer (deterministic)."""
    yield " ".join(QUESTION_TYPES)
    yield DIGITS
    for i, tpl in enumerate(TEMPLATES):
        for j, (t, m, r, a) in enumerate(itertools.product(TARGETS, MODALITIES, REGIONS, ADJECTIVES)):
            if (j + i) % 97:  # a deterministic ~1% sample of the product per template
                continue
            yield tpl.format(
                t=t,
                m=m,
                r=r,
                a=a,
                t2=TARGETS[(j + 3) % len(TARGETS)],
                r2=REGIONS[(j + 5) % len(REGIONS)],
                a2=ADJECTIVES[(j + 7) % len(ADJECTIVES)],
            )


def train_bpe_tokenizer(
    texts: Iterable[str] | None = None, vocab_size: int = 2048
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE carrying Qwen's special tokens at ids 0..6 (TINY_SPECIAL_TOKENS order)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(TINY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts if texts is not None else corpus()), trainer=trainer)
    for i, s in enumerate(TINY_SPECIAL_TOKENS):
        if tok.token_to_id(s) != i:
            raise RuntimeError(f"special token {s} got id {tok.token_to_id(s)}, expected {i}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(TINY_SPECIAL_TOKENS[1:]),
        padding_side="left",
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory (never the hub); left padding for batched prompts."""
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = "<|endoftext|>"
    return tok
