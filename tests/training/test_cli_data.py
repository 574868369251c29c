"""`vital phantom` and `vital check-data` through their register() function."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from training.cli.data import register
from vital_core.cli import CLIError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vital")
    register(parser.add_subparsers(dest="command"))
    return parser


@pytest.mark.parametrize("command", ["phantom", "check-data"])
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _parser().parse_args([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert f"vital {command}" in out
    if command == "phantom":
        assert "--seed" in out and "--workers" in out and "--size" in out


def test_phantom_small_run_then_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ph"
    args = _parser().parse_args(
        ["phantom", "--out", str(out), "--n", "18", "--size", "64", "--workers", "1", "--no-progress"]
    )
    assert args.func(args) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 18 and (out / "images" / f"{rows[0]['id']}.png").is_file()
    assert json.loads((out / "phantom.json").read_text())["size"] == 64
    with pytest.raises(CLIError, match="--force"):
        args.func(args)
    check = _parser().parse_args(["check-data", str(out / "manifest.jsonl")])
    capsys.readouterr()
    assert check.func(check) == 0
    assert "18 valid samples" in capsys.readouterr().out


def test_check_data_reports_bad_rows(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n')
    args = _parser().parse_args(["check-data", str(bad)])
    with pytest.raises(CLIError, match=r"bad.jsonl:1 \(id 'x'\): field 'image': missing"):
        args.func(args)


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--n", "0"], "--n"), (["--size", "8"], "--size"), (["--splits", "0.5", "0.5", "0.5"], "--splits")],
)
def test_phantom_rejects_bad_arguments(tmp_path: Path, extra: list[str], message: str) -> None:
    args = _parser().parse_args(["phantom", "--out", str(tmp_path / "x"), *extra])
    with pytest.raises(CLIError, match=message):
        args.func(args)
