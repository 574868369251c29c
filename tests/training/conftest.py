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
