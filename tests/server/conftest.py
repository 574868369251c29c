"""Server fixtures: a tiny bundle on disk (random weights, LoRA, scaffolding) and a ready app."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient


def _wait_ready(client: TestClient, timeout: float = 60.0) -> None:
    t0 = time.time()
    while client.get("/ready").status_code != 200:
        if time.time() - t0 > timeout:
            raise TimeoutError("app never became ready")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def client(tiny_bundle):
    from server import Settings, create_app

    app = create_app(Settings(bundle=tiny_bundle, max_wait_ms=2.0))
    with TestClient(app) as c:
        _wait_ready(c)
        yield c


@pytest.fixture(scope="session")
def wait_ready():
    return _wait_ready


@pytest.fixture(scope="session")
def ask():
    """`ask(client, data, question, route="/answer", **fields)` -> multipart POST response."""

    def post(
        client: TestClient,
        data: bytes,
        question: str = "Where is the liver?",
        route: str = "/answer",
        **fields,
    ):
        form = {"question": question, **{k: str(v) for k, v in fields.items()}}
        return client.post(route, files={"image": ("img", data, "application/octet-stream")}, data=form)

    return post


@pytest.fixture(scope="session")
def live_server(tmp_path_factory):
    """A real `vital serve` (uvicorn) of the committed vital-tiny bundle with an API key, shared by the
    /v1 and /ui tests: `.base` URL, `.key`, `.max_body`, `.max_new_tokens`, `.bundle`, `.log`."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    import httpx

    bundle = Path(__file__).resolve().parents[2] / "bundles" / "vital-tiny"
    if not (bundle / "vital.yaml").is_file():
        pytest.skip(f"the committed bundle is missing at {bundle}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    live = SimpleNamespace(
        base=f"http://127.0.0.1:{port}",
        key="live-test-key",
        max_body=2 * 1024 * 1024,
        max_new_tokens=32,
        bundle=bundle,
        log=tmp_path_factory.mktemp("live") / "server.log",
    )
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "VITAL_API_KEY": live.key,
        "VITAL_MAX_WAIT_MS": "0",
        "VITAL_MAX_BODY_BYTES": str(live.max_body),
        "VITAL_MAX_NEW_TOKENS": str(live.max_new_tokens),
    }
    with open(live.log, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vital_core.cli", "serve", "--bundle", str(bundle), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, live.log.read_text()
            try:
                if httpx.get(f"{live.base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "server never became ready:\n" + live.log.read_text()
            time.sleep(0.1)
        yield live
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
