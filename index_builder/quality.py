"""ROI quality metrics (paper §A.5.3) and the grid search over the area threshold tau and crop margin.

Per sample, on the grid of the image that was actually encoded (full image or crop), with *raw*
patch activations: the last encoder block's output before the final LayerNorm (the paper hooks the last
block; after the LayerNorm every token of a fresh model has norm sqrt(D), which would make the metrics
constant):
  coverage  = cells the binarised mask covers / G*G                    (reported in %)
  intensity = mean L2 norm of the patches in those mask cells
  SNR       = intensity / mean L2 norm of the valid non-mask (background) patches
Samples without any background cell (e.g. a crop that the mask fills) have no SNR and are left out of
the SNR mean; a configuration where no sample has an SNR reports None, never NaN.
Full-image features do not depend on (tau, margin) and crop features only on the margin, so each sample
is encoded once plus once per margin, and every tau reuses them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from index_builder.encoder import PatchEncoderLike
from index_builder.roi import ROIParams, ROIPlan, plan_roi

log = logging.getLogger(__name__)

DEFAULT_TAUS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3)
DEFAULT_MARGINS = (0.0, 0.05, 0.1, 0.2)
MIN_COVERAGE = 10.0
"""A configuration must keep at least this mean coverage (%) to be chosen (robust mean pooling)."""


@dataclass
class SampleQuality:
    """Metrics of one sample under one pathway."""

    coverage: float
    intensity: float
    snr: float | None


@dataclass
class QualityRow:
    """Mean metrics of one (tau, margin) configuration over the samples."""

    tau: float
    margin: float
    coverage: float
    intensity: float
    snr: float | None
    n_full: int
    n_crop: int
    n_snr: int


def sample_quality(plan: ROIPlan, raw: np.ndarray) -> SampleQuality:
    """Coverage (%), intensity and SNR of one planned sample given its raw patch grid [G, G, D]."""
    norms = np.linalg.norm(np.asarray(raw, dtype=np.float64), axis=-1)  # (G, G)
    roi = plan.mask_cells
    bg = plan.valid & ~roi
    intensity = float(norms[roi].mean())
    snr = float(intensity / norms[bg].mean()) if bg.any() and norms[bg].mean() > 0 else None
    return SampleQuality(100.0 * roi.sum() / roi.size, intensity, snr)


def grid_search(
    encoder: PatchEncoderLike,
    samples: Sequence[tuple[Image.Image, np.ndarray]],
    taus: Sequence[float] = DEFAULT_TAUS,
    margins: Sequence[float] = DEFAULT_MARGINS,
    base: ROIParams | None = None,
) -> list[QualityRow]:
    """Mean coverage / intensity / SNR for every (tau, margin) over (image, mask) samples."""
    base = base or ROIParams()
    g = encoder.grid
    full_plans = [plan_roi(im, m, g, base, force="full") for im, m in samples]
    ratios = [p.mask_ratio for p in full_plans]
    full_raw = encoder.encode(
        [p.image for p in full_plans], normalize=False, block_output=True
    ).numpy()  # (N, G, G, D)
    full_q = [sample_quality(p, r) for p, r in zip(full_plans, full_raw, strict=True)]
    crop_q: dict[float, list[SampleQuality]] = {}
    for margin in margins:
        params = replace(base, margin=margin)
        plans = [plan_roi(im, m, g, params, force="crop") for im, m in samples]
        raw = encoder.encode(
            [p.image for p in plans], normalize=False, block_output=True
        ).numpy()  # (N, G, G, D)
        crop_q[margin] = [sample_quality(p, r) for p, r in zip(plans, raw, strict=True)]
    rows = []
    for tau in taus:
        for margin in margins:
            picked = [full_q[i] if ratios[i] >= tau else crop_q[margin][i] for i in range(len(samples))]
            snrs = [q.snr for q in picked if q.snr is not None]
            n_full = sum(r >= tau for r in ratios)
            rows.append(
                QualityRow(
                    tau=tau,
                    margin=margin,
                    coverage=float(np.mean([q.coverage for q in picked])),
                    intensity=float(np.mean([q.intensity for q in picked])),
                    snr=float(np.mean(snrs)) if snrs else None,
                    n_full=n_full,
                    n_crop=len(samples) - n_full,
                    n_snr=len(snrs),
                )
            )
    return rows


def choose(rows: Sequence[QualityRow], min_coverage: float = MIN_COVERAGE) -> QualityRow:
    """The paper's trade-off: highest SNR among configurations with enough coverage, then intensity."""
    ok = [r for r in rows if r.snr is not None and r.coverage >= min_coverage] or [r for r in rows if r.snr]
    if not ok:
        return rows[0]
    return max(ok, key=lambda r: (round(r.snr, 4), r.intensity))


def format_table(rows: Sequence[QualityRow]) -> str:
    """A fixed-width text table of the grid search."""
    lines = [
        f"{'tau':>6} {'margin':>6} {'coverage%':>9} {'intensity':>10} {'SNR':>7} {'full':>5} {'crop':>5}"
    ]
    for r in rows:
        snr = f"{r.snr:7.4f}" if r.snr is not None else "    n/a"
        lines.append(
            f"{r.tau:6.3f} {r.margin:6.3f} {r.coverage:9.2f} {r.intensity:10.3f} {snr} {r.n_full:5d} {r.n_crop:5d}"
        )
    return "\n".join(lines)


def save_results(
    rows: Sequence[QualityRow], chosen: QualityRow, out_dir: str | Path, info: dict
) -> list[Path]:
    """Write grid.json and one heatmap PNG per metric (tau rows x margin columns); return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = {"rows": [asdict(r) for r in rows], "chosen": asdict(chosen), **info}
    (out / "grid.json").write_text(json.dumps(data, indent=1))
    return [out / "grid.json", *_heatmaps(rows, chosen, out)]


def _heatmaps(rows: Sequence[QualityRow], chosen: QualityRow, out: Path) -> list[Path]:
    """Three annotated heatmaps like the paper's Figure 9 (matplotlib Agg, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    taus = sorted({r.tau for r in rows})
    margins = sorted({r.margin for r in rows})
    paths = []
    for metric in ("coverage", "intensity", "snr"):
        table = np.full((len(taus), len(margins)), np.nan)
        for r in rows:
            v = getattr(r, metric)
            table[taus.index(r.tau), margins.index(r.margin)] = np.nan if v is None else v
        fig, ax = plt.subplots(figsize=(1.2 * len(margins) + 2, 0.6 * len(taus) + 1.5))
        im = ax.imshow(table, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(margins)), [f"{m:g}" for m in margins])
        ax.set_yticks(range(len(taus)), [f"{t:g}" for t in taus])
        ax.set_xlabel("crop margin")
        ax.set_ylabel("tau (area threshold)")
        ax.set_title(metric + (" (%)" if metric == "coverage" else ""))
        for i in range(len(taus)):
            for j in range(len(margins)):
                if np.isfinite(table[i, j]):
                    ax.text(j, i, f"{table[i, j]:.3g}", ha="center", va="center", color="w", fontsize=8)
        ax.add_patch(
            plt.Rectangle(
                (margins.index(chosen.margin) - 0.5, taus.index(chosen.tau) - 0.5),
                1,
                1,
                fill=False,
                ec="red",
                lw=2,
            )
        )
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        path = out / f"grid_{metric}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
