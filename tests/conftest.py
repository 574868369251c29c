"""Shared fixtures: tiny models built from config (no network, no weights on disk)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items):  # noqa: ARG001
    """`@pytest.mark.gpu` tests skip (with the reason) where CUDA is absent."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: no GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_config():
    from vital_core.presets import tiny

    cfg = tiny()
    cfg.lora.dropout = 0.0  # deterministic train-mode forward; dropout has its own test
    return cfg


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    """A tiny VITAL model with LoRA (non-zero, so it matters) and scaffolding."""
    from vital_core.model import build_model

    model = build_model(tiny_config, lora=True, scaffold=True)
    randomize_lora(model)
    return model.eval()


def randomize_lora(model, scale: float = 0.05, seed: int = 1) -> None:
    """peft starts LoRA B at zero (a no-op); give it values so merge/adapter tests mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.backbone.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def make_image(seed: int, size: tuple[int, int] = (128, 128)) -> Image.Image:
    """A deterministic noisy RGB image with a bright blob."""
    rng = np.random.default_rng(seed)
    h, w = size
    arr = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
    cy, cx, r = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4), max(4, min(h, w) // 6)
    yy, xx = np.ogrid[:h, :w]
    arr[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 220
    return Image.fromarray(arr)


@pytest.fixture(scope="session")
def image_factory():
    """`make_image(seed, size)` as a fixture, for test folders that need fresh images."""
    return make_image


@pytest.fixture(scope="session")
def images():
    return [make_image(0), make_image(1, (96, 128)), make_image(2, (128, 64)), make_image(3)]


@pytest.fixture(scope="session")
def questions():
    return [
        "Is there a tumor in this CT image?",
        "Where is the liver located in the image, and how large does it look?",
        "Describe it.",
        "Analyze the visual findings of the nodule in the upper left region of this MRI scan.",
    ]


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model, tmp_path_factory):
    from vital_core.bundle import save_bundle

    return save_bundle(tiny_model, tmp_path_factory.mktemp("srv") / "vital-tiny", provenance={"test": True})


@pytest.fixture(scope="session")
def encode_image(image_factory):
    """`encode_image(seed, size, fmt)` -> file bytes of a test image."""

    def encode(seed: int = 0, size=(128, 128), fmt: str = "PNG") -> bytes:
        buf = io.BytesIO()
        image_factory(seed, size).save(buf, format=fmt)
        return buf.getvalue()

    return encode


@pytest.fixture(scope="session")
def volumes():
    """tests/fixtures/volumes.py: anisotropic sphere volumes (0.7 x 0.7 x 5 mm) and their measures."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
    import volumes as module

    return module


@pytest.fixture(scope="session")
def hf_standins(tmp_path_factory):
    """Qwen3-VL-8B / Qwen3-1.7B / MedSigLIP-448 stand-ins in HF layout (tests/fixtures/hf_layout.py)."""
    import sys
    from pathlib import Path

    pytest.importorskip("dashscope", reason="the dev extra's dashscope ships the Qwen BPE ranks")
    sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
    from hf_layout import build_standins

    return build_standins(tmp_path_factory.mktemp("hf-standins"))


@pytest.fixture(scope="session")
def standin_config(hf_standins):
    """The paper-size VitalConfig pointed at the stand-in directories (LoRA dropout off, r=4)."""
    from vital_core.presets import qwen3_vl_8b

    cfg = qwen3_vl_8b(str(hf_standins["backbone"]), str(hf_standins["decoder"]), str(hf_standins["encoder"]))
    cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout = 4, 8, 0.0
    cfg.encoder.hidden_size = 32  # the stand-in encoder's width
    cfg.latent.max_new_tokens = 8
    return cfg
