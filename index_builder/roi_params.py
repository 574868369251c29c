"""`ROIParams`, the hyperparameters of adaptive ROI extraction, in a module of their own: the CLI reads
their defaults at registration without importing torch (`vital --help` stays fast)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal


@dataclass
class ROIParams:
    """Hyperparameters of adaptive ROI extraction."""

    tau: float = 0.01
    """Area threshold: mask ratio >= tau uses the full image, below it the tight crop. Provisional default
    from `vital roi-grid` on the tiny random-weight encoder (docs/index_builder.md); re-run it on MedSigLIP."""
    margin: float = 0.05
    """Crop margin on each side as a fraction of the bounding box's height/width (paper: 5%)."""
    bin_threshold: float = 0.3
    """A grid cell is in the mask when at least this fraction of its area is mask (paper: 0.3)."""
    valid_min: float = 0.5
    """A crop-grid cell is valid (real content, not padding) when at least this fraction is content."""
    top_k: int = 5
    """How many top patches (by cosine with the ROI feature) to keep."""
    crop_pool: Literal["valid", "mask"] = "valid"
    """Crop pathway pooling: all valid patches of the crop (paper) or only valid patches inside the mask."""
    min_crop_px: int = 16
    """A crop is widened (centred, clamped to the image) to at least this many source pixels per side."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.tau <= 1.0:
            raise ValueError("tau must be in [0, 1]")
        if self.margin < 0:
            raise ValueError("margin must be >= 0")
        if not 0.0 < self.bin_threshold <= 1.0 or not 0.0 < self.valid_min <= 1.0:
            raise ValueError("bin_threshold and valid_min must be in (0, 1]")
        if self.top_k < 1:
            raise ValueError("top_k must be >= 1")
        if self.crop_pool not in ("valid", "mask"):
            raise ValueError("crop_pool must be 'valid' or 'mask'")

    def to_dict(self) -> dict:
        """Plain dict (JSON-safe)."""
        return asdict(self)
