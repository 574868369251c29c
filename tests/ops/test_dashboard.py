"""The Grafana dashboard against a live server and a real Prometheus.

- every PromQL expression parses (promtool, from Debian's prometheus package);
- every metric it names is one the server exports (read from a live /metrics, not a hand-kept list);
- a real Prometheus scrapes a live `vital serve` under a little traffic and every query returns data.

Prometheus is installed by `make test` (target test-deps) where apt-get is available; elsewhere these
tests skip with a reason, except under CI where a missing Prometheus is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "vital.json"
GRAFANA_VARS = {"$__rate_interval": "30s", "$__interval": "15s", "$job": ".*"}


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(
            f"{binary} is missing: `make test` installs Debian's prometheus package (target test-deps)"
        )
    pytest.skip(f"{binary} not installed (Debian package prometheus; `make test-deps` installs it)")


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard, with Grafana's variables substituted."""
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        m = re.fullmatch(
            r"label_values\((\w+),\s*\w+\)", var.get("query", "") if isinstance(var.get("query"), str) else ""
        )
        if m:
            exprs.append(m.group(1))
    out = []
    for e in exprs:
        for k, v in GRAFANA_VARS.items():
            e = e.replace(k, v)
        out.append(e)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


@pytest.fixture(scope="module")
def live_server(tiny_bundle, tmp_path_factory):
    port = _free_port()
    log = open(tmp_path_factory.mktemp("srv") / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "vital_core.cli", "serve", "--bundle", str(tiny_bundle), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{base}/ready")
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


def _traffic(base: str, png: bytes, rounds: int = 1) -> None:
    for _ in range(rounds):
        files = {"image": ("x.png", png, "image/png")}
        httpx.post(
            f"{base}/answer", files=files, data={"question": "Where?", "max_new_tokens": "4"}, timeout=60
        )
        httpx.post(
            f"{base}/explain",
            files=files,
            data={"question": "Where?", "k": "2", "max_new_tokens": "2"},
            timeout=60,
        )
        httpx.post(f"{base}/answer", files={"image": ("x", b"junk")}, data={"question": "q"}, timeout=60)


def _exported(base: str) -> set[str]:
    text = httpx.get(f"{base}/metrics").text
    return {
        re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
        for line in text.splitlines()
        if line and line[0] != "#"
    }


def test_every_query_parses():
    promtool = _need("promtool")
    queries = dashboard_queries()
    assert len(queries) >= 12
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:q{i}", "expr": q} for i, q in enumerate(queries)],
            }
        ]
    }
    path = ROOT / ".pytest_cache" / "dashboard_rules.yml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(rules))  # JSON is valid YAML
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dashboard_names_only_exported_metrics(live_server, encode_image):
    _traffic(live_server, encode_image(0))
    exported = _exported(live_server)
    named = {m for q in dashboard_queries() for m in re.findall(r"\bvital_[a-z0-9_]+\b", q)}
    assert named, "the dashboard queries no vital_ metric"
    missing = sorted(named - exported)
    assert not missing, f"dashboard queries metrics the server does not export: {missing}"


def test_prometheus_scrapes_and_every_query_returns_data(live_server, encode_image, tmp_path):
    prometheus = _need("prometheus")
    port = _free_port()
    target = live_server.removeprefix("http://")
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s}\n"
        f"scrape_configs: [{{job_name: vital, static_configs: [{{targets: ['{target}']}}]}}]\n"
    )
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        _wait(f"http://127.0.0.1:{port}/-/ready", 60)
        png = encode_image(1)
        t_end = time.time() + 8
        while time.time() < t_end:  # traffic across several scrapes
            _traffic(live_server, png)
            time.sleep(0.3)
        time.sleep(2.5)
        empty = []
        for q in dashboard_queries():
            r = httpx.get(f"{api}/query", params={"query": q}, timeout=10).json()
            assert r["status"] == "success", (q, r)
            if not r["data"]["result"]:
                empty.append(q)
        assert not empty, f"queries with no data: {empty}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
