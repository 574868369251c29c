"""extract-roi under torchrun: two gloo processes produce exactly one process's features."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from index_builder.store import FeatureStore

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # ~25 s on 2 cores: three interpreter start-ups importing torch + transformers
def test_torchrun_two_ranks_equal_one_process(synthetic_manifest, tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    common = ["extract-roi", str(synthetic_manifest), "--shard-size", "3", "--no-progress"]
    one = subprocess.run(
        [sys.executable, "-m", "index_builder.cli", *common, "--out", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(_free_port()),
            "-m",
            "index_builder.cli",
            *common,
            "--out",
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = FeatureStore(tmp_path / "one"), FeatureStore(tmp_path / "two")
    assert a.keys() == b.keys() and len(a) == 12
    ka, fa = a.features()
    kb, fb = b.features()
    np.testing.assert_allclose(fa, fb, atol=1e-6)
    for key in ka:
        np.testing.assert_array_equal(a.load(key)[1], b.load(key)[1])
    # each rank logged its own shards: 4 shards -> rank 0 builds 0, 2 and rank 1 builds 1, 3
    assert "rank 0/2: wrote 2 shards" in two.stderr and "rank 1/2: wrote 2 shards" in two.stderr
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["count"] == 12
