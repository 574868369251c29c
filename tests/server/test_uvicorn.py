"""A real `vital serve` (uvicorn) process: traffic, SIGTERM mid-load, every accepted request answered."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_flight(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return float(re.search(r"^vital_in_flight_requests (\S+)", text, re.M).group(1))


def test_sigterm_mid_load_answers_every_accepted_request(tiny_bundle, encode_image, tmp_path):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "VITAL_MAX_BATCH_SIZE": "2", "VITAL_MAX_WAIT_MS": "1", "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "server.log", "w+")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [sys.executable, "-m", "vital_core.cli", "serve", "--bundle", str(tiny_bundle), "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "server never became ready"
            time.sleep(0.1)
        assert httpx.get(f"{base}/health").json() == {"status": "ok"}

        n = 12

        def call(i: int) -> httpx.Response:
            files = {"image": ("img.png", encode_image(i), "image/png")}
            data = {"question": "Where is the liver?", "k": "4", "max_new_tokens": "24"}
            return httpx.post(f"{base}/answer", files=files, data=data, timeout=120)

        with ThreadPoolExecutor(n) as pool:
            futures = [pool.submit(call, i) for i in range(n)]
            while _in_flight(base) < n + 1:  # all n accepted (+ this /metrics request)
                assert time.time() < deadline + 60
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            results = [f.result() for f in futures]
        assert [r.status_code for r in results] == [200] * n, [r.text for r in results]
        assert all(r.json()["answer"] is not None for r in results)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    lines = [json.loads(x) for x in (tmp_path / "server.log").read_text().splitlines() if x.startswith("{")]
    requests = [x for x in lines if x.get("msg") == "request" and x.get("path") == "/answer"]
    assert len(requests) == n and all(
        len(x["request_id"]) == 32 for x in requests
    )  # JSON logs with request ids
    assert any("draining" in x["msg"] for x in lines) and any("shut down cleanly" in x["msg"] for x in lines)
