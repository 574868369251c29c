"""The frozen medical vision encoder (MedSigLIP / SigLIP vision tower) and its preprocessing.

Preprocessing follows the MedSigLIP model card: zero-pad to a square (content centred), resize to
`image_size`, scale to [0, 1] and normalise with mean = std = 0.5. Patch features come from
`last_hidden_state` (SigLIP has no CLS token, so every token is a spatial patch) and are reshaped to a
`[B, G, G, D]` grid. Only PIL and numpy are used for preprocessing (no torchvision).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from vital_core.config import EncoderConfig, VitalConfig

log = logging.getLogger(__name__)


class EncoderError(ValueError):
    """An encoder that cannot be built or loaded, or an image it cannot take."""


@dataclass(frozen=True)
class SquarePad:
    """Where an H x W image sits inside its zero-padded S x S square (content centred)."""

    height: int
    width: int
    side: int
    top: int
    left: int

    @classmethod
    def of(cls, height: int, width: int) -> SquarePad:
        """Padding geometry for an image of the given size."""
        side = max(height, width)
        return cls(height, width, side, (side - height) // 2, (side - width) // 2)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, LA, RGBA, P, I;16, F, ...) to RGB; alpha is composited on black."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(image, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def square_pad(image: Image.Image) -> Image.Image:
    """Zero-pad an image to a square with the content centred (the model card's first step)."""
    image = to_rgb(image)
    pad = SquarePad.of(image.height, image.width)
    if pad.side == image.height == image.width:
        return image
    canvas = Image.new("RGB", (pad.side, pad.side), (0, 0, 0))
    canvas.paste(image, (pad.left, pad.top))
    return canvas


def model_view(image: Image.Image, image_size: int) -> Image.Image:
    """The image exactly as the encoder sees it: square-padded and resized (RGB, before normalisation)."""
    if image.width < 1 or image.height < 1:
        raise EncoderError(f"image has no pixels ({image.width}x{image.height})")
    return square_pad(image).resize((image_size, image_size), Image.Resampling.BILINEAR)


def preprocess(images: Sequence[Image.Image], image_size: int) -> torch.Tensor:
    """PIL images -> normalised pixel tensor [B, 3, S, S] (mean = std = 0.5)."""
    arrays = [np.asarray(model_view(im, image_size), dtype=np.float32) for im in images]  # each (S, S, 3)
    batch = np.stack(arrays) / 255.0  # (B, S, S, 3) in [0, 1]
    batch = (batch - 0.5) / 0.5  # (B, S, S, 3) in [-1, 1]
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()  # (B, 3, S, S)


class PatchEncoderLike(Protocol):
    """What ROI extraction, quality and index building need from an encoder."""

    image_size: int
    grid: int
    hidden_size: int

    def encode(
        self, images: Sequence[Image.Image], normalize: bool = True, block_output: bool = False
    ) -> torch.Tensor:
        """Images -> patch grid [B, G, G, D] (float32, CPU)."""
        ...


class PatchEncoder:
    """A frozen SigLIP vision tower that turns images into an L2-normalised patch grid."""

    def __init__(
        self,
        config: EncoderConfig,
        device: str | torch.device | None = None,
        seed: int = 0,
        batch_size: int = 16,
    ) -> None:
        from transformers import SiglipVisionConfig, SiglipVisionModel

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # half precision on GPU (inference only, frozen), float32 on CPU where fp16 matmuls are slow
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.batch_size = batch_size
        if config.path is not None:

            class VisionTower(SiglipVisionModel):
                """A full SiglipModel checkpoint (MedSigLIP, `vital train-encoder`) read for its vision
                tower: the text tower's and the logit scale/bias keys are expected there, not reported."""

                _keys_to_ignore_on_load_unexpected = [r"^text_model\.", r"^logit_(scale|bias)$"]

            try:
                model = VisionTower.from_pretrained(config.path, local_files_only=True)
            except OSError as exc:
                raise EncoderError(f"cannot load SigLIP vision weights from {config.path}: {exc}") from exc
        else:
            vcfg = SiglipVisionConfig(**config.arch)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)  # deterministic random init: every rank builds the same weights
                model = SiglipVisionModel(vcfg)
        mc = model.config
        if (mc.image_size, mc.patch_size, mc.hidden_size) != (
            config.image_size,
            config.patch_size,
            config.hidden_size,
        ):
            raise EncoderError(
                f"encoder weights have image_size={mc.image_size}, patch_size={mc.patch_size}, "
                f"hidden_size={mc.hidden_size}; config says {config.image_size}/{config.patch_size}/"
                f"{config.hidden_size}"
            )
        self.model = model.to(self.device, self.dtype).eval().requires_grad_(False)
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.grid = config.grid
        self.hidden_size = config.hidden_size

    @torch.inference_mode()
    def encode(
        self, images: Sequence[Image.Image], normalize: bool = True, block_output: bool = False
    ) -> torch.Tensor:
        """Images -> patch grid [B, G, G, D], float32 on CPU, L2-normalised unless normalize=False.

        `block_output` returns the last encoder block's output (before the final LayerNorm) instead of
        `last_hidden_state`: the raw activations whose norms the ROI quality metrics measure.
        """
        g, out = self.grid, []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            pixels = preprocess(chunk, self.image_size).to(self.device, self.dtype)  # (b, 3, S, S)
            out_m = self.model(pixel_values=pixels, output_hidden_states=block_output)
            hidden = (
                out_m.hidden_states[-1] if block_output else out_m.last_hidden_state
            ).float()  # (b, G*G, D)
            if normalize:
                hidden = torch.nn.functional.normalize(hidden, dim=-1)  # (b, G*G, D)
            out.append(hidden.reshape(len(chunk), g, g, -1).cpu())  # (b, G, G, D)
        if not out:
            return torch.empty(0, g, g, self.hidden_size)
        return torch.cat(out)  # (B, G, G, D)


def load_encoder(config: EncoderConfig, device: str | None = None, seed: int = 0) -> PatchEncoder:
    """Build the frozen patch encoder described by an EncoderConfig."""
    enc = PatchEncoder(config, device=device, seed=seed)
    log.info(
        "encoder: %s, grid %dx%d, D=%d on %s (%s)",
        config.path or "random init from config",
        enc.grid,
        enc.grid,
        enc.hidden_size,
        enc.device,
        enc.dtype,
    )
    return enc


def load_bundle_encoder(
    config: VitalConfig, bundle: str | Path | None = None, device: str | None = None
) -> PatchEncoder:
    """The encoder a bundle's /explain uses: BUNDLE/encoder when the bundle ships one, else the config's."""
    enc_cfg = config.encoder
    if bundle is not None and (Path(bundle) / "encoder").is_dir():
        enc_cfg = dataclasses.replace(enc_cfg, path=str(Path(bundle) / "encoder"))
    return load_encoder(enc_cfg, device=device, seed=config.seed)
