"""Session fixtures for the training tests: one small phantom dataset shared by every test."""

from __future__ import annotations

from pathlib import Path

import pytest

PHANTOM = {"n": 216, "seed": 0, "size": 128}
"""Four full cycles of the 9 modalities x 6 question types, at the default image size."""


@pytest.fixture(scope="session")
def phantom_params() -> dict[str, int]:
    """n, seed and size of `phantom_dir`."""
    return dict(PHANTOM)


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A phantom dataset generated with two worker processes."""
    from training.phantom import generate

    out = tmp_path_factory.mktemp("phantom")
    generate(out, workers=2, progress=False, **PHANTOM)
    return out


@pytest.fixture(scope="session")
def phantom_samples(phantom_dir: Path):
    """The validated samples of `phantom_dir`."""
    from training.data.manifest import load_manifest

    return load_manifest(phantom_dir / "manifest.jsonl")


@pytest.fixture(scope="session")
def roi_store(phantom_dir, tmp_path_factory):
    """ROI features (sample masks and step masks) of `phantom_dir` from the tiny encoder."""
    from index_builder.encoder import load_encoder
    from index_builder.roi import ROIParams
    from index_builder.samples import read_manifest, read_step_masks
    from index_builder.store import extract_to_store
    from vital_core.presets import tiny

    out = tmp_path_factory.mktemp("roi")
    enc = load_encoder(tiny().encoder, device="cpu", seed=0)
    manifest = phantom_dir / "manifest.jsonl"
    extract_to_store(
        enc,
        read_manifest(manifest, require_mask=True) + read_step_masks(manifest),
        out,
        ROIParams(),
        spec={"test": 1},
        progress=False,
    )
    return out
