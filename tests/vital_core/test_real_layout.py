"""The real checkpoints' layout (HF stand-ins): tokenizer, prompt ids, stop ids, K = 0 parity with HF."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow

BB = "backbone"


@pytest.fixture(scope="module")
def standin_model(standin_config):
    from vital_core.model import build_model

    return build_model(standin_config).eval()


def test_tokenizer_is_the_real_qwen_vocabulary(hf_standins):
    """Published Qwen2/Qwen3 encodings, the added-token ids, and transformers' own pre-tokenizer regex."""
    from hf_layout import PRETOKENIZE_REGEX
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as HF_REGEX

    from vital_core.tokenizer import load_tokenizer

    assert PRETOKENIZE_REGEX == HF_REGEX
    tok = load_tokenizer(hf_standins[BB])
    assert tok("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")["input_ids"] == [
        151644,
        8948,
        198,
        2610,
        525,
        264,
        10950,
        17847,
        13,
        151645,
    ]
    assert tok("Hello, world!")["input_ids"] == [9707, 11, 1879, 0]
    assert tok("<|im_start|>assistant\n")["input_ids"] == [151644, 77091, 198]
    ids = tok.convert_tokens_to_ids(
        [
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|image_pad|>",
            "<|video_pad|>",
            "</think>",
        ]
    )
    assert ids == [151643, 151644, 151645, 151652, 151653, 151655, 151656, 151668]
    assert tok.eos_token_id == 151645 and tok.pad_token_id == 151643
    text = "Is the 12 mm lesion hypoechoic?  Ünïcödé → 肝脏"
    assert tok.decode(tok(text)["input_ids"]) == text


def test_prompt_ids_equal_hf_chat_template(standin_model, images, questions):
    """Our prompt == the tokenizer's chat template with <|image_pad|> expanded as Qwen3VLProcessor does."""
    tok, proc = standin_model.tokenizer, standin_model.processor
    batch = standin_model.encode(images[:2], questions[:2])
    for i, (im, q) in enumerate(zip(images[:2], questions[:2])):
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
        text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        vis = proc([im.convert("RGB")], return_tensors="pt")
        n = int(vis["image_grid_thw"][0].prod()) // proc.merge_size**2
        text = text.replace("<|image_pad|>", "<|image_pad|>" * n)
        ref = tok(text, add_special_tokens=False)["input_ids"]
        got = batch.input_ids[i][batch.attention_mask[i].bool()].tolist()
        assert got == ref
        assert int(batch.mm_token_type_ids[i].sum()) == n == ref.count(151655)


def test_stop_ids_come_from_generation_config(standin_model):
    assert standin_model.stop_ids == [151643, 151645]


def test_pixel_limits_yaml_wins_over_directory(standin_config, hf_standins):
    """The directory says shortest_edge 65536; a YAML value replaces it, and the 448² cap holds."""
    from vital_core.model import load_backbone

    cfg = standin_config
    _, _, proc = load_backbone(cfg)
    assert proc.size == {"shortest_edge": 65536, "longest_edge": 448 * 448}  # min from the dir, cap from YAML
    import copy

    c2 = copy.deepcopy(cfg)
    c2.backbone.image_min_pixels = 32 * 32
    c2.backbone.image_max_pixels = 256 * 256
    _, _, proc2 = load_backbone(c2)
    assert proc2.size == {"shortest_edge": 32 * 32, "longest_edge": 256 * 256}


def test_k0_answers_equal_hf_generate(standin_model, images, questions):
    """K = 0 is the plain model: greedy tokens equal transformers' generate with the checkpoint's stop ids."""
    m = standin_model
    answers = m.answer(images[:2], questions[:2], k=0, max_new_tokens=8)
    for i in range(2):
        b = m.encode(images[i : i + 1], questions[i : i + 1])
        with torch.inference_mode():
            out = m.core.generate(
                input_ids=b.input_ids,
                attention_mask=b.attention_mask,
                mm_token_type_ids=b.mm_token_type_ids,
                pixel_values=b.pixel_values,
                image_grid_thw=b.image_grid_thw,
                max_new_tokens=8,
                do_sample=False,
            )
        ref = out[0, b.input_ids.shape[1] :].tolist()
        while ref and ref[-1] in (151643, 151645):
            ref = ref[:-1]
        assert answers[i].tokens == ref


def test_merged_export_equals_unmerged(tmp_path, standin_config, images, questions):
    """fp32: the streamed merge equals the LoRA model; bf16: each weight is (W + s·B·A) rounded once."""
    from vital_core.bundle import load_bundle, save_bundle
    from vital_core.model import build_model

    cfg = standin_config
    model = build_model(cfg, lora=True)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # peft starts B at zero; give LoRA values so the merge matters
        for n, p in model.backbone.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    out = save_bundle(model, tmp_path / "bf16")
    sd = model.backbone.state_dict()
    name = "base_model.model.model.language_model.layers.0.mlp.down_proj"
    w, a, b = (
        sd[f"{name}.{x}"] for x in ("base_layer.weight", "lora_A.default.weight", "lora_B.default.weight")
    )
    expect = (w.float() + cfg.lora.alpha / cfg.lora.r * (b.float() @ a.float())).to(torch.bfloat16)
    merged = load_bundle(out)
    got = merged.core.model.language_model.layers[0].mlp.down_proj.weight
    assert got.dtype == torch.bfloat16 and torch.equal(got, expect)
    model.core.float()  # fp32 reference: merged must equal unmerged to fp32 rounding
    with torch.inference_mode():
        ref = model(model.encode(images[:2], questions[:2]), 2, max_new_tokens=4)
    import copy

    c32 = copy.deepcopy(cfg)
    c32.backbone.dtype = "float32"
    model.config = c32
    m32 = load_bundle(save_bundle(model, tmp_path / "fp32"))
    with torch.inference_mode():
        got = m32(m32.encode(images[:2], questions[:2]), 2, max_new_tokens=4)
    torch.testing.assert_close(got.latents, ref.latents, atol=1e-5, rtol=1e-5)
    assert got.tokens == ref.tokens
