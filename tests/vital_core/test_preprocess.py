"""Preprocessing: prompt layout, image tokens, token types, left padding, answers; tokenizer."""

from __future__ import annotations

import subprocess
import sys

import torch

from vital_core.preprocess import chat_prompt, encode_answers
from vital_core.tokenizer import train_bpe_tokenizer


def test_prompt_batch_layout(tiny_model, images, questions):
    tok = tiny_model.tokenizer
    b = tiny_model.encode(images, questions)
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    merge = tiny_model.processor.merge_size
    # one image per prompt: its image-token count matches its grid
    n_img = (b.input_ids == image_id).sum(1)
    assert n_img.tolist() == (b.image_grid_thw.prod(-1) // merge**2).tolist()
    assert torch.equal(b.mm_token_type_ids.bool(), b.input_ids == image_id)
    # left padding: padding only at the start, every row ends with the assistant header
    for row, m in zip(b.input_ids, b.attention_mask):
        first = int(m.argmax())
        assert m[first:].all() and not m[:first].any()
        assert tok.decode(row[first:]).endswith("<|im_start|>assistant\n")
    # patches: one row per patch of every image
    assert b.pixel_values.shape[0] == int(b.image_grid_thw.prod(-1).sum())


def test_non_square_images_keep_their_aspect(tiny_model, images, questions):
    grids = tiny_model.encode(images[1:3], questions[1:3]).image_grid_thw.tolist()
    assert grids[0][1] < grids[0][2]  # 96 x 128 -> fewer rows than columns
    assert grids[1][1] > grids[1][2]  # 128 x 64


def test_chat_prompt_format():
    p = chat_prompt("  Where is the liver? ", 2)
    assert p == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|image_pad|><|vision_end|>Where is the liver?"
        "<|im_end|>\n<|im_start|>assistant\n"
    )


def test_answers_end_with_stop_and_are_right_padded(tiny_model):
    ids, mask = encode_answers(["Yes.", "The liver is in the upper left."], tiny_model.tokenizer)
    stop = tiny_model.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert ids[0, int(mask[0].sum()) - 1] == stop and ids[1, -1] == stop
    assert mask[0, 0] == 1 and mask[0, -1] == 0


def test_tiny_tokenizer_is_deterministic_and_round_trips():
    a, b = train_bpe_tokenizer(vocab_size=512), train_bpe_tokenizer(vocab_size=512)
    assert a.get_vocab() == b.get_vocab()
    text = "Is the hyperechoic nodule (3 mm) in the upper-left? Ünïcode too."
    assert a.decode(a(text)["input_ids"]) == text
    assert [a.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>", "<|image_pad|>")] == [0, 2, 5]


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "vital_core.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "bench" in out.stdout and "bundle" in out.stdout
