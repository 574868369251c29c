"""Teacher distillation against a local fake OpenAI-compatible server: client retries, overlay, prompts,
gates + retries end to end, resume after a kill, the CLI, and the final manifest."""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from training.data.manifest import load_manifest
from training.distill.client import (
    FatalTeacherError,
    RateLimiter,
    RequestRejected,
    RetriesExhausted,
    TeacherClient,
    TeacherSettings,
)
from training.distill.gates import run_gates
from training.distill.overlay import CONTOUR_RGB, OVERLAY_ALPHA, png_data_url, render_overlay
from training.distill.prompts import GUIDANCE, SYSTEM_PROMPT, user_prompt
from training.distill.runner import DistillConfig, distill_async
from training.sources import read_folder
from training.sources.questions import build_question_set
from vital_core.cli import CLIError
from vital_core.qtypes import REASONING_DEPTH

ROOT = Path(__file__).resolve().parents[2]


# -- the fake teacher ------------------------------------------------------------------------------


def good_reply(user_text: str, n_steps: int | None = None, extra: str = "", **fields) -> str:
    """A reply that passes every gate, built from the prompt's target, type and expected answer."""
    qtype = re.search(r"Question type: (\w+)", user_text).group(1)
    target = re.search(r"red shading: (.+?) \(target type", user_text).group(1)
    expected = re.search(r"correct final answer is: (Yes|No)\.", user_text)
    answer = {
        "yesno": expected.group(1) + "." if expected else "Yes.",
        "identify": target,
        "location_choice": "left",
        "location": f"The {target} is in the upper left part of the image.",
    }.get(qtype, f"The {target} has a smooth border and a uniform texture.")
    lo, _ = REASONING_DEPTH[qtype]
    steps = [
        f"The {target} shows a smooth border and uniform texture, step {i + 1}." for i in range(n_steps or lo)
    ]
    if extra:
        steps[0] += " " + extra
    return json.dumps({"final_answer": answer, "reasoning_chain": steps, **fields})


def flip_yes_no(reply: str) -> str:
    """The same reply with the opposite yes/no answer."""
    data = json.loads(reply)
    data["final_answer"] = "No." if data["final_answer"] == "Yes." else "Yes."
    return json.dumps(data)


class FakeTeacher:
    """Scripted chat-completions server: per sample a list of reply kinds, then `default`."""

    def __init__(self, script: dict[str, list[str]] | None = None, default: str = "good", delay: float = 0.0):
        self.script, self.default, self.delay = script or {}, default, delay
        self.calls: Counter[str] = Counter()
        self.phase_calls: Counter[tuple[int, str]] = Counter()
        self.phase = 1
        self.texts: dict[tuple[str, int], str] = {}
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reply(self, kind: str, user_text: str) -> tuple[int, str]:
        if kind in ("429", "500", "400", "401"):
            return int(kind), json.dumps({"error": {"message": kind}})
        content = {
            "good": lambda: good_reply(user_text),
            "slow": lambda: good_reply(user_text),
            "leak": lambda: good_reply(user_text, extra="The highlighted area is bright."),
            "malformed": lambda: "Here you go: " + good_reply(user_text),
            "fence": lambda: "```json\n" + good_reply(user_text) + "\n```",
            "extra_key": lambda: good_reply(user_text, confidence=0.9),
            "wrong_len": lambda: good_reply(user_text, n_steps=5),
            "pathology": lambda: good_reply(user_text, extra="A small lesion is seen."),
            "patient": lambda: good_reply(user_text, extra="It lies on the patient's right."),
            "wrong_yesno": lambda: flip_yes_no(good_reply(user_text)),
        }[kind]()
        return 200, json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                sid = unquote(self.headers.get("X-Vital-Sample-Id", ""))
                texts = []
                for message in body["messages"][1:]:
                    content = message["content"]
                    if isinstance(content, str):
                        texts.append(content)
                        continue
                    assert content[0]["image_url"]["url"].startswith("data:image/png;base64,")
                    texts += [p["text"] for p in content if p["type"] == "text"]
                text = "\n".join(texts)
                with fake.lock:
                    n = fake.calls[sid]
                    fake.calls[sid] += 1
                    fake.phase_calls[(fake.phase, sid)] += 1
                    fake.texts[(sid, n)] = text
                script = fake.script.get(sid, [])
                kind = script[n] if n < len(script) else fake.default
                time.sleep(1.0 if kind == "slow" else fake.delay)
                status, payload = fake.reply(kind, text)
                data = payload.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


@pytest.fixture()
def teacher():
    fake = FakeTeacher()
    yield fake
    fake.close()


def fast_settings(fake: FakeTeacher, **kw) -> TeacherSettings:
    base = dict(
        base_url=fake.url, model="fake-teacher", api_key="k", rpm=0, backoff_base_s=0.01, backoff_max_s=0.05
    )
    return TeacherSettings(**(base | kw))


# -- the data --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def questions(tmp_path_factory) -> Path:
    """A question manifest from a CSV folder: 8 images x (liver, spleen, polyp on half) -> 20 records x 2."""
    src = tmp_path_factory.mktemp("pairs")
    rows = ["image,mask,target,target_type,modality"]
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 200, (32, 32), dtype=np.uint8)).save(src / f"im{i}.png")
        targets = [("liver", (2, 14, 2, 14)), ("spleen", (18, 30, 18, 30))] + (
            [("polyp", (20, 26, 4, 10))] if i % 2 else []
        )
        for target, (y0, y1, x0, x1) in targets:
            m = np.zeros((32, 32), np.uint8)
            m[y0:y1, x0:x1] = 255
            Image.fromarray(m).save(src / f"im{i}_{target}.png")
            rows.append(f"im{i}.png,im{i}_{target}.png,{target},,CT")
    (src / "pairs.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path_factory.mktemp("questions")
    return build_question_set(read_folder(src / "pairs.csv"), out, per_record=2, seed=1)


# -- client ----------------------------------------------------------------------------------------


def run(coro):
    return asyncio.run(coro)


async def _complete(settings: TeacherSettings, sid: str = "s") -> tuple[str, int]:
    client = TeacherClient(settings)
    try:
        return await client.complete(
            [{"role": "user", "content": "Question type: yesno"}], sample_id=sid
        ), client.requests
    finally:
        await client.aclose()


def test_client_retries_429_500_and_timeouts(teacher):
    teacher.script = {"a": ["429", "500", "good"], "b": ["slow", "good"]}
    teacher.reply = lambda kind, text: FakeTeacher.reply(
        teacher, kind, "Question type: yesno\nred shading: liver (target type"
    )
    text, requests = run(_complete(fast_settings(teacher), "a"))
    assert json.loads(text)["final_answer"] == "Yes." and requests == 3 and teacher.calls["a"] == 3
    text, requests = run(_complete(fast_settings(teacher, timeout_s=0.3), "b"))
    assert requests == 2 and json.loads(text)["reasoning_chain"]


def test_client_gives_up_or_fails_fast(teacher):
    teacher.script = {"x": ["500"] * 10, "auth": ["401"], "bad": ["400"]}
    with pytest.raises(RetriesExhausted):
        run(_complete(fast_settings(teacher, http_retries=2), "x"))
    assert teacher.calls["x"] == 3
    with pytest.raises(FatalTeacherError):
        run(_complete(fast_settings(teacher), "auth"))
    with pytest.raises(RequestRejected):
        run(_complete(fast_settings(teacher), "bad"))
    assert teacher.calls["auth"] == teacher.calls["bad"] == 1


def test_rate_limiter_spaces_requests():
    async def go() -> float:
        limiter = RateLimiter(rpm=1200)  # one start every 50 ms
        start = time.monotonic()
        await asyncio.gather(*(limiter.wait() for _ in range(5)))
        return time.monotonic() - start

    assert asyncio.run(go()) >= 0.19


def test_settings_read_the_environment(monkeypatch):
    monkeypatch.setenv("VITAL_TEACHER_BASE_URL", "http://localhost:9/v1")
    monkeypatch.setenv("VITAL_TEACHER_MODEL", "gpt-x")
    monkeypatch.setenv("VITAL_TEACHER_API_KEY", "secret")
    s = TeacherSettings(rpm=5)
    assert (s.base_url, s.model, s.api_key.get_secret_value(), s.rpm) == (
        "http://localhost:9/v1",
        "gpt-x",
        "secret",
        5,
    )
    assert "secret" not in repr(s)


# -- overlay and prompts -----------------------------------------------------------------------------


def test_overlay_colours_and_data_url():
    img = Image.fromarray(np.full((20, 20), 100, np.uint8))
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    arr = np.asarray(render_overlay(img, mask))
    blended = round((1 - OVERLAY_ALPHA) * 100 + OVERLAY_ALPHA * 255), round((1 - OVERLAY_ALPHA) * 100)
    assert tuple(arr[10, 10]) == (blended[0], blended[1], blended[1])
    assert tuple(arr[5, 10]) == CONTOUR_RGB and tuple(arr[14, 14]) == CONTOUR_RGB
    assert tuple(arr[0, 0]) == (100, 100, 100) and tuple(arr[4, 10]) == (100, 100, 100)
    big = render_overlay(Image.new("L", (2048, 1024)), np.ones((1024, 2048), bool), max_side=1024)
    assert big.size == (1024, 512)
    url = png_data_url(render_overlay(img, mask))
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert url.startswith("data:image/png;base64,") and decoded.size == (20, 20)


def test_prompts_have_the_six_components_and_valid_examples():
    for needle in (
        "teacher",
        "Teacher-only information",
        "Leakage prevention",
        "Image-grounded reasoning",
        "Spatial convention",
        "Output format",
        "final_answer",
        "reasoning_chain",
        "patient-left",
    ):
        assert needle in SYSTEM_PROMPT
    targets = {
        "yesno": "spleen",
        "identify": "liver",
        "location_choice": "kidney",
        "location": "pancreas",
        "describe": "polyp",
        "reasoning": "liver tumor",
    }
    for qtype, g in GUIDANCE.items():
        result = run_gates(
            json.dumps(g.example),
            question_type=qtype,
            target=targets[qtype],
            target_type="lesion" if qtype in ("describe", "reasoning") else "organ",
        )
        assert result.ok, (qtype, result.violations)
    text = user_prompt(
        question="Is there a tumor?",
        question_type="yesno",
        target="liver",
        target_type="organ",
        modality="CT",
        asked_target="liver tumor",
        expected_answer="No.",
    )
    assert (
        "liver tumor, which is not present" in text
        and "exactly 1" in text
        and "correct final answer is: No." in text
    )


# -- the pipeline ----------------------------------------------------------------------------------


def test_distill_gates_retries_report_and_manifest(teacher, questions, tmp_path):
    samples = load_manifest(questions)
    by_type = {}
    for s in samples:
        by_type.setdefault((s.question_type, s.target_type), s.id)
    organ_describe = by_type[("describe", "organ")]
    yesno = by_type[("yesno", "organ")]
    a, b, c, d, e, f = [s.id for s in samples if s.id not in (organ_describe, yesno)][:6]
    teacher.script = {
        a: ["leak", "malformed", "good"],  # bad twice, then good: accepted
        b: ["fence"] * 5,  # bad 5 times: rejected and logged
        c: ["wrong_len", "429", "good"],
        d: ["patient", "extra_key", "500", "good"],
        organ_describe: ["pathology", "good"],
        f: ["400"],
        yesno: ["wrong_yesno", "good"],
    }
    out = tmp_path / "distilled"
    summary = asyncio.run(distill_async(DistillConfig(questions, out), fast_settings(teacher, concurrency=3)))
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    status = {r["id"]: r for r in results}
    assert len(results) == len(samples) == len(status)
    assert status[a]["status"] == "accepted" and len(status[a]["attempts"]) == 3
    assert [v["gate"] for v in status[a]["attempts"][0]] == ["leakage"]
    assert "STRICT RULES" in teacher.texts[(a, 1)] and "forbidden annotation wording" in teacher.texts[(a, 1)]
    # progressively stricter: the third attempt lists both earlier violations
    assert "[schema]" in teacher.texts[(a, 2)] and "[leakage]" in teacher.texts[(a, 2)]
    assert "STRICT RULES" not in teacher.texts[(a, 0)]
    assert status[b]["status"] == "rejected" and len(status[b]["attempts"]) == 5 and teacher.calls[b] == 5
    assert status[b]["last_reply"].startswith("```")
    assert status[c]["status"] == status[d]["status"] == status[organ_describe]["status"] == "accepted"
    assert status[f]["status"] == "rejected" and status[f]["attempts"][0][0]["gate"] == "request"
    assert status[e]["status"] == "accepted" and len(status[e]["attempts"]) == 1

    report = json.loads((out / "report.json").read_text())
    assert report["accepted"] == len(samples) - 2 and report["rejected"] == 2 and report["pending"] == 0
    assert report["by_gate"]["schema"] == {"failed_attempts": 7, "retried": 2, "rejected": 1}
    assert report["by_gate"]["leakage"]["retried"] == 1 and report["by_gate"]["steps"]["retried"] == 1
    assert (
        report["by_gate"]["patient_space"]["retried"] == 1 and report["by_gate"]["pathology"]["retried"] == 1
    )
    assert report["by_gate"]["request"]["rejected"] == 1 and report["by_gate"]["answer"]["retried"] == 1
    assert "correct answer to this question" in teacher.texts[(yesno, 1)]
    assert summary.report.accepted == report["accepted"] and "leakage" in summary.report.table()

    final = load_manifest(out / "manifest.jsonl")
    assert {s.id for s in final} == {s.id for s in samples} - {b, f}
    meta = {
        json.loads(x)["id"]: json.loads(x)
        for x in questions.with_name("questions.meta.jsonl").read_text().splitlines()
    }
    for s in final:
        assert (
            "PENDING" not in s.answer
            and s.answer.endswith(".")
            and s.k == len(status[s.id]["reasoning_chain"])
        )
        if s.question_type == "yesno":
            assert s.answer == meta[s.id]["expected_answer"].capitalize() + "."
        if s.question_type == "location_choice":
            assert s.answer == f"The {s.target} is in the left part of the image."
        assert s.roi_key == s.id

    # a rerun requests nothing; --retry-rejected redoes only the rejected two
    before = sum(teacher.calls.values())
    asyncio.run(distill_async(DistillConfig(questions, out), fast_settings(teacher)))
    assert sum(teacher.calls.values()) == before
    teacher.script = {}
    again = asyncio.run(
        distill_async(DistillConfig(questions, out, retry_rejected=True), fast_settings(teacher))
    )
    assert again.requested == 2 and again.report.accepted == len(samples) and again.report.rejected == 0


def test_resume_after_kill_loses_and_duplicates_nothing(teacher, questions, tmp_path):
    teacher.delay = 0.1
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "training.cli.distill",
        "distill",
        str(questions),
        "--out",
        str(out),
        "--base-url",
        teacher.url,
        "--model",
        "fake",
        "--concurrency",
        "2",
        "--rpm",
        "0",
        "--backoff",
        "0.01",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITAL_TEACHER_")}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if results.is_file() and len(results.read_text().splitlines()) >= 4:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = [json.loads(x)["id"] for x in results.read_text().splitlines() if x.endswith("}")]
    total = len(load_manifest(questions))
    assert 4 <= len(first) < total, "the kill should land mid-run"
    with results.open("a") as f:
        f.write('{"id": "torn')  # a write cut short by the kill

    teacher.phase, teacher.delay = 2, 0.0
    from training.cli.distill import main

    assert (
        main(
            [
                "distill",
                str(questions),
                "--out",
                str(out),
                "--base-url",
                teacher.url,
                "--model",
                "fake",
                "--concurrency",
                "4",
                "--rpm",
                "0",
            ]
        )
        == 0
    )
    ids = [json.loads(x)["id"] for x in results.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == total  # nothing lost, nothing duplicated
    assert all(teacher.phase_calls[(2, sid)] == 0 for sid in first)  # finished ones not re-requested
    assert len(load_manifest(out / "manifest.jsonl")) == total


# -- the CLI ---------------------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    from training.cli.distill import register

    parser = argparse.ArgumentParser(prog="vital")
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_build_questions_and_dry_run(questions, tmp_path, capsys, monkeypatch):
    csv = next(questions.parent.parent.glob("pairs*/pairs.csv"))
    args = _parse(
        [
            "build-questions",
            "--folder",
            str(csv),
            "--out",
            str(tmp_path / "q"),
            "--types",
            "yesno",
            "location",
        ]
    )
    assert args.func(args) == 0
    samples = load_manifest(tmp_path / "q" / "questions.jsonl")
    assert {s.question_type for s in samples} == {"yesno", "location"}
    with pytest.raises(CLIError, match="already holds"):
        args.func(args)
    with pytest.raises(CLIError, match="at least one source"):
        a = _parse(["build-questions", "--out", str(tmp_path / "z")])
        a.func(a)
    monkeypatch.delenv("VITAL_TEACHER_MODEL", raising=False)
    a = _parse(["distill", str(tmp_path / "q" / "questions.jsonl")])
    with pytest.raises(CLIError, match="no teacher model"):
        a.func(a)
    capsys.readouterr()
    a = _parse(["distill", str(tmp_path / "q" / "questions.jsonl"), "--dry-run"])
    assert a.func(a) == 0
    printed = capsys.readouterr().out
    assert "Leakage prevention" in printed and "Student-visible question" in printed
    assert (tmp_path / "q" / "overlay-preview.png").is_file()
