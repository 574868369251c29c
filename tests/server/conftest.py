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
