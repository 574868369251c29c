"""`vital --help` stays fast: registering the subcommands imports no heavy library."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "peft", "faiss", "fastapi", "uvicorn", "numpy", "PIL", "pydantic")

PROBE = f"""
import sys, time
t = time.perf_counter()
from vital_core.cli import build_parser
parser = build_parser()
dt = time.perf_counter() - t
print(round(dt, 3))
print(",".join(m for m in {HEAVY!r} if m in sys.modules))
"""


def test_registering_every_subcommand_imports_no_heavy_module():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    seconds, heavy = out.stdout.splitlines()
    assert heavy == "", f"`vital --help` imports {heavy}: move those imports into the run functions"
    # the import check above is the guarantee; the time is a loose bound for a loaded CI machine
    assert float(seconds) < 5.0


def test_help_lists_every_subcommand():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "vital_core.cli", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    for command in ("serve", "batch", "train", "eval", "bench", "build-index", "bundle"):
        assert command in out.stdout
