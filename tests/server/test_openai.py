"""The OpenAI-compatible routes, driven by the real `openai` client against a real `vital serve` process."""

from __future__ import annotations

import base64
import io
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # a live server, then real requests (about a minute on 2 busy cores)
openai = pytest.importorskip(
    "openai", reason="the openai client is a dev dependency: pip install -e '.[dev]'"
)

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "vital-tiny"
KEY = "live-test-key"  # the live_server fixture's (tests/server/conftest.py)
MAX_BODY = 2 * 1024 * 1024
MODEL = "vital-tiny"
QUESTION = "Describe the appearance of the aorta in this CT scan."


def phantom_png(index: int = 36) -> bytes:
    """A phantom CT slice like the ones the bundle was trained on."""
    from training.phantom.generate import make_sample

    buf = io.BytesIO()
    Image.fromarray(make_sample(index, seed=0).scene.to_uint8()).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def user(image_url: str | None, text: str | None = QUESTION) -> list[dict]:
    parts = []
    if image_url is not None:
        parts.append({"type": "image_url", "image_url": {"url": image_url}})
    if text is not None:
        parts.append({"type": "text", "text": text})
    return [{"role": "user", "content": parts}]


@pytest.fixture(scope="module")
def server(live_server):
    return live_server.base


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def png():
    return phantom_png()


def _answer(base: str, data: bytes, question: str = QUESTION, **fields) -> dict:
    r = httpx.post(
        f"{base}/answer",
        files={"image": ("img", data)},
        data={"question": question, **fields},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_models(client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    card = client.models.retrieve(MODEL)
    assert card.id == MODEL and card.owned_by == "vital" and card.created > 0
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_chat_completion_equals_answer(client, server, png):
    resp = client.chat.completions.create(
        model=MODEL, messages=user(data_uri(png)), max_tokens=24, extra_body={"k": 3}
    )
    ref = _answer(server, png, k="3", max_new_tokens="24")
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == ref["answer"] != ""
    assert resp.model == MODEL and resp.object == "chat.completion" and resp.id.startswith("chatcmpl-")
    assert resp.vital["k"] == 3 and resp.vital["image"] == {"format": "png", "width": 128, "height": 128}
    assert choice.finish_reason == ("length" if resp.usage.completion_tokens == 24 else "stop")
    # prompt tokens are the model's real prompt length (image tokens included)
    from vital_core.bundle import load_bundle

    model = load_bundle(BUNDLE, device="cpu", scaffold=False)
    prompt = model.encode([Image.open(io.BytesIO(png))], [QUESTION])
    assert resp.usage.prompt_tokens == prompt.input_ids.shape[1] > 20
    assert 0 < resp.usage.completion_tokens <= 24
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_streaming_matches_non_streaming(client, png):
    kw = {"model": MODEL, "messages": user(data_uri(png)), "max_tokens": 24, "extra_body": {"k": 2}}
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == whole.choices[0].message.content
    assert len(pieces) > 1  # token by token, not one blob
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert len({c.id for c in chunks}) == 1


def test_max_tokens_auto_k_and_dicom(client, server, png):
    short = client.chat.completions.create(model=MODEL, messages=user(data_uri(png)), max_completion_tokens=2)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2
    from vital_core.qtypes import auto_k

    q = "Is there a spleen in this CT scan?"
    auto = client.chat.completions.create(
        model=MODEL, messages=user(data_uri(png), q), extra_body={"k": "auto"}
    )
    assert auto.vital["k"] == auto_k(q, 4) == 1
    from pydicom.data import get_testdata_file

    dcm = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    # image first, question in a second user message, a system prompt (not used) and a plain string part
    messages = [
        {"role": "system", "content": "You are a radiologist."},
        *user(data_uri(dcm, "application/dicom"), None),
        {"role": "user", "content": "Is there a lesion?"},
    ]
    resp = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, extra_body={"k": 1})
    assert resp.vital["image"]["format"] == "dicom"
    assert (
        resp.choices[0].message.content
        == _answer(server, dcm, "Is there a lesion?", k="1", max_new_tokens="8")["answer"]
    )


def test_explain_extras_carry_the_regions_of_explain(client, server):
    """`explain: true`: vital.steps carries each step's box and COCO RLE mask, the same as /explain's for
    the same image (a non-square one: the regions are on its own 200 x 120 pixels); not with stream."""
    from pycocotools import mask as coco_mask

    buf = io.BytesIO()
    Image.open(io.BytesIO(phantom_png(7))).resize((200, 120)).save(buf, format="PNG")
    data = buf.getvalue()
    resp = client.chat.completions.create(
        model=MODEL,
        messages=user(data_uri(data)),
        max_tokens=4,
        extra_body={"k": 2, "explain": True, "region_fraction": 0.6},
    )
    r = httpx.post(
        f"{server}/explain",
        files={"image": ("img", data)},
        data={"question": QUESTION, "k": "2", "max_new_tokens": "4", "region_fraction": "0.6"},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    ref = r.json()
    assert resp.choices[0].message.content == ref["answer"]
    assert resp.vital["region_fraction"] == ref["region_fraction"] == 0.6 and resp.vital["k"] == 2
    assert resp.vital["plane"] == ref["plane"] == {"frame": None, "slice": None, "axis": None}
    assert 0 < resp.usage.completion_tokens <= 4
    steps = resp.vital["steps"]
    assert [s["step"] for s in steps] == [1, 2]
    for s, e in zip(steps, ref["steps"]):
        assert (s["box"], s["mask"], s["sentence"]) == (e["box"], e["mask"], e["sentence"])
        m = coco_mask.decode({"size": s["mask"]["size"], "counts": s["mask"]["counts"].encode()})
        assert m.shape == (120, 200) and m.any()
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model=MODEL, messages=user(data_uri(data)), stream=True, extra_body={"explain": True}
        )
    assert _error(exc)["param"] == "explain"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model=MODEL, messages=user(data_uri(data)), extra_body={"region_fraction": 0.5}
        )
    assert _error(exc)["param"] == "region_fraction"


def test_same_engine_batches_chat_with_answer(server, png):
    """Concurrent /v1 and /answer requests go through the one queue: they can share a batch."""
    chat = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=60)
    with ThreadPoolExecutor(8) as pool:
        futs = [
            pool.submit(
                chat.chat.completions.create,
                model=MODEL,
                messages=user(data_uri(png)),
                max_tokens=4,
                extra_body={"k": 2},
            )
            for _ in range(6)
        ]
        futs += [pool.submit(_answer, server, png, k="2", max_new_tokens="4") for _ in range(2)]
        results = [f.result() for f in futs]
    sizes = [r.vital["batch_size"] for r in results[:6]] + [r["batch_size"] for r in results[6:]]
    assert max(sizes) > 1, sizes  # 8 concurrent requests on one worker: later ones wait and batch
    answers = {r.choices[0].message.content for r in results[:6]} | {r["answer"] for r in results[6:]}
    assert len(answers) == 1  # batched or not, the same answer


def _error(exc_info) -> dict:
    body = exc_info.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def _counter(metrics: str, code: str, status: int) -> float:
    m = re.search(rf'^vital_errors_total\{{code="{code}",status="{status}"\}} (\S+)', metrics, re.M)
    return float(m.group(1)) if m else 0.0


def test_errors_in_openai_shape(client, server, png):
    uri = data_uri(png)
    metrics = httpx.get(f"{server}/metrics").text
    before = {c: _counter(metrics, c, s) for c, s in (("remote_image_url", 400), ("unauthorized", 401))}
    cases = [  # (kwargs, exception, status, code, param)
        (
            {"messages": user("https://example.org/scan.png")},
            openai.BadRequestError,
            400,
            "remote_image_url",
            "messages[0].content[0].image_url.url",
        ),
        (
            {"messages": user("file:///etc/passwd")},
            openai.BadRequestError,
            400,
            "invalid_image_url",
            "messages[0].content[0].image_url.url",
        ),
        ({"messages": user(None)}, openai.BadRequestError, 400, "invalid_request", "messages"),
        ({"messages": user(uri, None)}, openai.BadRequestError, 400, "invalid_request", "messages"),
        ({"messages": user(uri) + user(uri)}, openai.BadRequestError, 400, "invalid_request", "messages"),
        (
            {"messages": [*user(uri), {"role": "assistant", "content": "hi"}]},
            openai.BadRequestError,
            400,
            "invalid_request",
            "messages[1].role",
        ),
        ({"messages": user(uri), "model": "gpt-4o"}, openai.NotFoundError, 404, "model_not_found", "model"),
        (
            {"messages": user(uri), "extra_body": {"k": 9}},
            openai.BadRequestError,
            400,
            "invalid_request",
            "k",
        ),
        (
            {"messages": user(uri), "max_tokens": 33},
            openai.BadRequestError,
            400,
            "invalid_request",
            "max_tokens",
        ),
        ({"messages": user(uri), "n": 2}, openai.BadRequestError, 400, "invalid_request", "n"),
        (
            {"messages": user(uri), "frequency_penalty": 0.5},
            openai.BadRequestError,
            400,
            "invalid_request",
            "frequency_penalty",
        ),
        (
            {"messages": user("data:image/png;base64,@@@")},
            openai.BadRequestError,
            400,
            "unreadable_image",
            "messages[0].content[0].image_url.url",
        ),
        (
            {"messages": user(data_uri(b"%PDF-1.4" + b"\0" * 64))},
            openai.APIStatusError,
            415,
            "unsupported_image",
            None,
        ),
        (
            {"messages": user(data_uri(b"\0" * (MAX_BODY + 1)))},
            openai.APIStatusError,
            413,
            "body_too_large",
            None,
        ),
        (
            {"messages": user(uri), "stream": True},
            None,
            200,
            None,
            None,
        ),  # control: the same body streams fine
        (
            {"messages": user("http://127.0.0.1:1/x.png"), "stream": True},
            openai.BadRequestError,
            400,
            "remote_image_url",
            "messages[0].content[0].image_url.url",
        ),
    ]
    for kwargs, exc, status, code, param in cases:
        kwargs = {"model": MODEL, **kwargs}
        if exc is None:
            assert list(client.chat.completions.create(**kwargs))
            continue
        with pytest.raises(exc) as info:
            client.chat.completions.create(**kwargs)
        assert info.value.status_code == status, (kwargs.keys(), info.value)
        err = _error(info)
        assert (err["code"], err["param"]) == (code, param), err
        assert err["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    bad_key = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0)
    for call in (
        lambda: bad_key.models.list(),
        lambda: bad_key.chat.completions.create(model=MODEL, messages=user(uri)),
    ):
        with pytest.raises(openai.AuthenticationError) as info:
            call()
        assert _error(info)["type"] == "authentication_error"
        assert info.value.response.headers["www-authenticate"] == "Bearer"
    r = httpx.post(
        f"{server}/v1/chat/completions",
        content=b"{not json",
        headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
    r = httpx.get(f"{server}/v1/completions", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"  # routing errors too
    metrics = httpx.get(f"{server}/metrics").text
    assert re.search(
        r'^vital_requests_total\{route="/v1/chat/completions",status="200"\} [1-9]', metrics, re.M
    )
    after = {c: _counter(metrics, c, s) for c, s in (("remote_image_url", 400), ("unauthorized", 401))}
    assert after == {c: before[c] + 2 for c in before}, (before, after)


def test_failures_in_process_and_helpers(tiny_bundle, png):
    """In process: a model that failed to load (503) or fails a request (500), in OpenAI's shape; data URIs;
    token deltas."""
    from fastapi.testclient import TestClient

    from server import Settings, create_app
    from server.errors import APIError
    from server.openai_api import decode_data_uri
    from server.openai_stream import token_deltas

    def broken(settings, device):
        raise RuntimeError("no weights here")

    with TestClient(create_app(Settings(bundle=tiny_bundle), loader=broken)) as c:
        deadline = time.time() + 30
        while "no weights" not in c.get("/v1/models").text:
            assert time.time() < deadline
            time.sleep(0.02)
        r = c.post("/v1/chat/completions", json={"model": MODEL, "messages": user(data_uri(b"x"))})
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
        assert r.json()["error"]["code"] == "not_ready"
        assert (
            c.get("/answer").status_code == 405 and "type" not in c.get("/answer").json()["error"]
        )  # others keep theirs
    with TestClient(create_app(Settings(bundle=tiny_bundle))) as c:  # a model failure: 500, OpenAI's shape
        while c.get("/ready").status_code != 200:
            time.sleep(0.02)

        def broken_answer(*args, **kwargs):
            raise RuntimeError("CUDA error: device-side assert")

        c.app.state.service.engine.model.answer = broken_answer
        r = c.post("/v1/chat/completions", json={"model": MODEL, "messages": user(data_uri(png))})
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
        assert r.json()["error"]["type"] == "server_error" and "CUDA" not in r.text
        assert c.get("/ready").status_code == 200  # the server lives on
    assert decode_data_uri("data:application/octet-stream;base64,aGVsbG8=") == b"hello"
    for bad in ("data:image/png,hello", "ftp://x/y.png", "HTTPS://x/y.png", "/etc/passwd"):
        with pytest.raises(APIError) as info:
            decode_data_uri(bad)
        assert info.value.status == 400
    from vital_core.bundle import load_bundle

    tok = load_bundle(BUNDLE, device="cpu", scaffold=False).tokenizer
    for text in ("The liver is in the left part.", "Größe 5 mm — ok ✓", "  spaced   out  "):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        final = tok.decode(ids, skip_special_tokens=True).strip()
        deltas = token_deltas(tok, ids, final)
        assert "".join(deltas) == final and all(deltas)
        assert "\ufffd" not in "".join(deltas)


# -- streaming as the engine decodes: an in-process uvicorn, so the tests can hold the model thread -----------
@pytest.fixture(scope="module")
def inproc():
    """`vital-tiny` served by uvicorn on a thread of this process: `.base`, `.engine`, `.engine_settings`,
    `.metric(name)`."""
    import socket
    import threading
    from types import SimpleNamespace

    import uvicorn

    from server import Settings, create_app

    app = create_app(Settings(bundle=BUNDLE, max_wait_ms=0))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.time() < deadline and thread.is_alive(), "in-process server never became ready"
        time.sleep(0.05)

    def metric(name: str) -> float:
        m = re.search(rf"^{re.escape(name)} (\S+)", httpx.get(f"{base}/metrics").text, re.M)
        return float(m.group(1)) if m else 0.0

    try:
        svc = app.state.service
        yield SimpleNamespace(base=base, engine=svc.engine, engine_settings=svc.settings, metric=metric)
    finally:
        srv.should_exit = True
        thread.join(timeout=30)


class HeldDecode:
    """Wraps the engine's `model.answer`: the streaming batch's decode loop blocks in its first per-step
    callback until `release()`; records each step, what the engine's callback returned, and the end."""

    def __init__(self, engine, monkeypatch):
        import threading

        self.real, self.gate = engine.model.answer, threading.Event()
        self.steps: list[list[int | None]] = []
        self.stops: list[bool] = []
        self.held = self.returned = None
        self.jobs: list = []
        monkeypatch.setattr(engine.model, "answer", self.answer)
        run_answers = engine._run_answers

        def spy(batch, started):
            self.jobs = batch
            return run_answers(batch, started)

        monkeypatch.setattr(engine, "_run_answers", spy)

    def answer(self, *args, on_tokens=None, **kwargs):
        def hooked(step):
            self.steps.append(step)  # before the tokens go out: the client cannot see them first
            self.stops.append(bool(on_tokens(step)))
            if len(self.steps) == 1:
                self.held = self.gate.wait(60)  # the first token is out; decoding waits here
            return self.stops[-1]

        out = self.real(*args, on_tokens=hooked if on_tokens else None, **kwargs)
        self.returned = out
        return out

    def release(self) -> None:
        self.gate.set()


def _sse(lines) -> dict | None:
    """The next `data: {...}` event from an iterator of SSE lines (None at the end)."""
    for line in lines:
        if line.startswith("data: {"):
            import json

            return json.loads(line[6:])
    return None


def _content(event: dict) -> str:
    return (event["choices"][0]["delta"].get("content") or "") if event["choices"] else ""


def test_stream_sends_tokens_while_the_batch_decodes(inproc, png, monkeypatch):
    """Deterministic: the model thread is held inside decode step 1 while the client reads the first token."""
    from server.openai_stream import DeltaDecoder

    held = HeldDecode(inproc.engine, monkeypatch)
    ref = held.real([Image.open(io.BytesIO(png))], [QUESTION], k=2, max_new_tokens=24)[0]
    assert len(ref.tokens) >= 3 and DeltaDecoder(inproc.engine.model.tokenizer).push(ref.tokens[0])
    body = {"model": MODEL, "messages": user(data_uri(png)), "max_tokens": 24, "k": 2, "stream": True}
    with httpx.stream("POST", f"{inproc.base}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        assert _sse(lines)["choices"][0]["delta"]["role"] == "assistant"
        first = _content(_sse(lines))
        # the first token's text arrived while the engine had delivered one step and not finished
        assert first and len(held.steps) == 1 and held.returned is None
        held.release()
        pieces, event = [first], _sse(lines)
        while event is not None and _content(event):
            pieces.append(_content(event))
            event = _sse(lines)
        assert event["choices"][0]["finish_reason"] in ("stop", "length")
    assert held.held is True and len(held.steps) >= len(ref.tokens) and not any(held.stops)
    assert "".join(pieces) == ref.text
    whole = httpx.post(
        f"{inproc.base}/v1/chat/completions", json={**body, "stream": False}, timeout=60
    ).json()
    assert whole["choices"][0]["message"]["content"] == ref.text
    assert [s[0] for s in held.steps if s[0] is not None] == ref.tokens  # streamed ids == the answer's


def test_stream_client_disconnect_cancels_the_job(inproc, png, monkeypatch, caplog):
    """A client gone mid-stream: its job is cancelled, decoding stops at the next step, no 500, nothing in flight."""
    held = HeldDecode(inproc.engine, monkeypatch)
    route = 'vital_requests_total{route="/v1/chat/completions",status="500"}'
    errors_before = inproc.metric(route)
    body = {"model": MODEL, "messages": user(data_uri(png)), "max_tokens": 24, "k": 2, "stream": True}
    with (
        httpx.Client(timeout=60) as c,
        c.stream("POST", f"{inproc.base}/v1/chat/completions", json=body) as r,
    ):
        lines = r.iter_lines()
        _sse(lines)
        assert _content(_sse(lines)) and len(held.steps) == 1
        assert inproc.metric("vital_in_flight_requests") == 1
    # the connection is closed; the model thread is still held inside decode step 1
    deadline = time.time() + 30
    while not (held.jobs and held.jobs[0].cancelled):
        assert time.time() < deadline, "the disconnect did not cancel the job"
        time.sleep(0.02)
    held.release()
    while held.returned is None or inproc.metric("vital_in_flight_requests") != 0:
        assert time.time() < deadline, "decoding or the request did not end"
        time.sleep(0.02)
    assert held.stops == [False, True] and len(held.returned[0].tokens) == 2  # stopped at the next check
    assert inproc.metric(route) == errors_before
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    ok = httpx.post(f"{inproc.base}/v1/chat/completions", json={**body, "stream": False}, timeout=60)
    assert ok.status_code == 200  # the engine serves on


def test_stream_batched_with_plain_requests(inproc, png):
    """A streaming request sharing a batch with plain ones: every answer equals the plain one."""
    body = {"model": MODEL, "messages": user(data_uri(png)), "max_tokens": 24, "extra_body": {"k": 2}}
    chat = openai.OpenAI(base_url=f"{inproc.base}/v1", api_key="unused", max_retries=0, timeout=60)

    def streamed() -> str:
        return "".join(_content(c.model_dump()) for c in chat.chat.completions.create(stream=True, **body))

    def plain() -> tuple[str, int]:
        r = chat.chat.completions.create(**body)
        return r.choices[0].message.content, r.vital["batch_size"]

    inproc.engine.max_wait = 0.5  # gather: the first request's batch waits for the others
    try:
        with ThreadPoolExecutor(4) as pool:
            futs = [pool.submit(streamed), pool.submit(plain), pool.submit(streamed), pool.submit(plain)]
            out = [f.result() for f in futs]
    finally:
        inproc.engine.max_wait = 0.0
    texts = {out[0], out[2], out[1][0], out[3][0]}
    assert len(texts) == 1 and "" not in texts
    assert max(out[1][1], out[3][1]) > 1  # they did share a batch


def test_timeout_after_the_stream_started_is_an_error_event(inproc, png, monkeypatch):
    """The request timeout mid-answer: an OpenAI error event ends the stream (no [DONE]); the client raises it."""
    held = HeldDecode(inproc.engine, monkeypatch)
    monkeypatch.setattr(inproc.engine_settings, "request_timeout_s", 1.0)
    chat = openai.OpenAI(base_url=f"{inproc.base}/v1", api_key="unused", max_retries=0, timeout=60)
    stream = chat.chat.completions.create(
        model=MODEL, messages=user(data_uri(png)), max_tokens=24, stream=True, extra_body={"k": 2}
    )
    try:
        events = iter(stream)
        assert next(events).choices[0].delta.role == "assistant"
        assert next(events).choices[0].delta.content and len(held.steps) == 1  # decoding is held
        with pytest.raises(openai.APIError, match="no answer within 1 s"):
            next(events)  # the job timed out while held: its 504 arrives as an event
    finally:
        held.release()
        stream.close()
    deadline = time.time() + 30
    while held.returned is None or inproc.metric("vital_in_flight_requests") != 0:
        assert time.time() < deadline
        time.sleep(0.02)
    assert held.stops[-1] is True  # the timed-out job was dropped: decoding stopped at the next step
