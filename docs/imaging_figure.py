"""Draw docs/imaging.png: one volume and one DICOM through `vital_core.imaging` (run from the repo root).

python docs/imaging_figure.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402

from vital_core.imaging import ImagingSpec, load_model_image  # noqa: E402

OUT = Path(__file__).with_name("imaging.png")


def phantom_lps() -> bytes:
    """A CT-like phantom (HU) with a bright marker on the patient's LEFT, stored in LPS voxel order."""
    x, y, z = np.meshgrid(np.arange(96), np.arange(80), np.arange(40), indexing="ij")  # RAS voxel grid
    body = ((x - 48) / 40) ** 2 + ((y - 40) / 30) ** 2 + ((z - 20) / 22) ** 2 < 1
    ras = np.where(body, 40.0, -1000.0).astype(np.float32)
    lung = (((x - 48) / 8) ** 2 + ((y - 44) / 12) ** 2 < 1) & (np.abs(z - 20) < 12)
    ras[lung] = -800.0  # a low-density region near the centre
    ras[18:30, 50:60, 14:26] = 700.0  # marker: low x = patient's left, high y = anterior
    lps = ras[::-1, ::-1].copy()  # stored L→R reversed and P→A reversed
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = [95, 79, 0]
    return nib.Nifti1Image(lps, affine).to_bytes()


def main() -> None:
    vol = phantom_lps()
    stored = nib.Nifti1Image.from_bytes(vol).get_fdata()[:, :, 20]
    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()  # bundled with pydicom
    panels = [
        (
            "NIfTI (LPS): np.rot90 of the raw slice\n(the old serving path: mirrored)",
            np.rot90(stored),
            "gray",
        ),
        ("axial (default)", load_model_image(vol, ImagingSpec(slice=20)).pixels, "gray"),
        ("coronal, slice 55", load_model_image(vol, ImagingSpec(axis="coronal", slice=55)).pixels, "gray"),
        ("sagittal, slice 24", load_model_image(vol, ImagingSpec(axis="sagittal", slice=24)).pixels, "gray"),
        (
            "CT_small.dcm: raw stored values",
            __import__("pydicom").dcmread(get_testdata_file("CT_small.dcm")).pixel_array,
            "gray",
        ),
        ("DICOM, default: abdomen W400/L40", load_model_image(ct).pixels, "gray"),
        ("window=lung (W1500/L-600)", load_model_image(ct, ImagingSpec(window="lung")).pixels, "gray"),
        ("window=bone (W1800/L400)", load_model_image(ct, ImagingSpec(window="bone")).pixels, "gray"),
    ]
    fig, axes = plt.subplots(2, 4, figsize=(12, 6.4))
    for ax, (title, img, cmap) in zip(axes.ravel(), panels):
        ax.imshow(img, cmap=cmap, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[0, 1:3]:
        ax.text(0.02, 0.5, "R", color="yellow", transform=ax.transAxes, fontsize=11, va="center")
        ax.text(0.95, 0.5, "L", color="yellow", transform=ax.transAxes, fontsize=11, va="center")
    axes[0, 3].text(0.02, 0.5, "A", color="yellow", transform=axes[0, 3].transAxes, fontsize=11, va="center")
    axes[0, 3].text(0.95, 0.5, "P", color="yellow", transform=axes[0, 3].transAxes, fontsize=11, va="center")
    fig.suptitle(
        "vital_core.imaging: the bright marker is on the patient's LEFT → the image's RIGHT (radiological)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(OUT, dpi=72)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
