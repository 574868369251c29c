"""/answer with the prefix cache: hit/miss in the timings and the metrics, answers as without it; the
static-cache byte cap (VITAL_STATIC_CACHE_BYTES) reaches the runner and the metrics."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def cached_client(tiny_bundle, wait_ready):
    from server import Settings, create_app

    app = create_app(Settings(bundle=tiny_bundle, step_mode="static", prefix_cache_bytes=64 << 20))
    with TestClient(app) as c:
        wait_ready(c)
        yield c


def _metric(text: str, name: str) -> float:
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def test_second_question_on_an_image_hits(cached_client, ask, encode_image, tiny_model, image_factory):
    data = encode_image(7)
    first = ask(cached_client, data, "Is there a lesion?", k=2, max_new_tokens=6).json()
    second = ask(cached_client, data, "Where is the liver?", k=3, max_new_tokens=6).json()
    assert first["timings_ms"]["prefix_cache_hit"] == 0 and "vision" in first["timings_ms"]
    assert second["timings_ms"]["prefix_cache_hit"] == 1 and "vision" not in second["timings_ms"]
    direct = tiny_model.answer([image_factory(7)], ["Where is the liver?"], k=3, max_new_tokens=6)[0]
    assert second["answer"] == direct.text
    metrics = cached_client.get("/metrics").text
    assert _metric(metrics, "vital_prefix_cache_hits_total") == 1
    assert _metric(metrics, "vital_prefix_cache_misses_total") == 1
    assert _metric(metrics, "vital_prefix_cache_bytes") > 0
    runner = cached_client.app.state.service.engine.runner
    assert 0 < _metric(metrics, "vital_static_cache_bytes") == runner.nbytes <= runner.max_bytes


def test_static_cache_byte_cap_setting(tiny_bundle, wait_ready, ask, encode_image, tiny_model, image_factory):
    """A cap below any bucket: the runner gets it, holds nothing, and answers come from the dynamic cache."""
    from server import Settings, create_app

    settings = Settings(
        bundle=tiny_bundle, step_mode="static", static_cache_bytes=4096, explain_preload=False
    )
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        body = ask(c, encode_image(3), "Where is the liver?", k=2, max_new_tokens=5).json()
        runner = c.app.state.service.engine.runner
        assert runner.max_bytes == 4096 and runner.nbytes == 0
        assert _metric(c.get("/metrics").text, "vital_static_cache_bytes") == 0
    direct = tiny_model.answer([image_factory(3)], ["Where is the liver?"], k=2, max_new_tokens=5)[0]
    assert body["answer"] == direct.text


def test_cache_off_reports_nothing(tiny_bundle, wait_ready, ask, encode_image):
    from server import Settings, create_app

    with TestClient(create_app(Settings(bundle=tiny_bundle, step_mode="dynamic", prefix_cache_bytes=0))) as c:
        wait_ready(c)
        body = ask(c, encode_image(7), "Is there a lesion?", k=1, max_new_tokens=4).json()
        assert "prefix_cache_hit" not in body["timings_ms"]
        assert _metric(c.get("/metrics").text, "vital_prefix_cache_misses_total") == 0
