"""Issue 26 on a real two-node Ray cluster on this machine (`ray start --head` + `ray start --address`, one CPU
each, server/ray_local.py): `vital serve --ray` (Ray Serve) and `vital batch --ray` (Ray Data). No mocks.

One cluster for the module; the Serve tests run first (each replica takes a node's CPU), then the app is
deleted and the batch tests take both CPUs with their two actors.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip(
    "ray",
    reason="Ray is not installed: it is the optional extra (pip install -e '.[ray]'); make test installs it",
)
httpx = pytest.importorskip("httpx")

from server.ray_local import IP, RAY_ENV, LocalRayCluster, free_port_block  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "vital-tiny"
KEY = "ray-test-key"
MAX_BODY = 2 * 1024 * 1024
# Spread requests over both replicas (Ray prefers the proxy's own node while a replica there has room).
CLUSTER_ENV = {"RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0", "RAY_metrics_report_interval_ms": "1000"}


@pytest.fixture(scope="module")
def cluster():
    saved = dict(os.environ)
    os.environ.update(RAY_ENV)
    os.environ.pop("RAY_ADDRESS", None)
    try:
        c = LocalRayCluster(nodes=2, cpus=1, env=CLUSTER_ENV)
        try:
            c.start(timeout=180)
        except (RuntimeError, TimeoutError) as exc:
            pytest.skip(f"a two-node Ray cluster cannot start on this machine: {exc}")
        try:
            ray.init(address=c.address, log_to_driver=False)
            yield c
        finally:
            ray.shutdown()
            c.stop()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **RAY_ENV, "PYTHONUNBUFFERED": "1", **extra}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    return env


class RayServe:
    """`vital serve --ray` in a subprocess; `.base` is Ray's HTTP proxy."""

    def __init__(self, cluster: LocalRayCluster, log: Path, **settings: str) -> None:
        self.port = free_port_block(1, taken=cluster.taken)[0]
        self.base = f"http://{IP}:{self.port}"
        self.log = log
        env = _env(VITAL_API_KEY=KEY, VITAL_MAX_WAIT_MS="0", VITAL_MAX_NEW_TOKENS="32", **settings)
        env["VITAL_MAX_BODY_BYTES"] = str(MAX_BODY)
        cmd = [sys.executable, "-m", "vital_core.cli", "serve", "--bundle", str(BUNDLE), "--device", "cpu"]
        cmd += ["--ray", cluster.address, "--host", IP, "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.time() + 240
        while True:
            assert self.proc.poll() is None, log.read_text()[-4000:]
            if "VITAL serving" in log.read_text():
                break
            assert time.time() < deadline, "vital serve --ray never deployed:\n" + log.read_text()[-4000:]
            time.sleep(0.5)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def _readme_calls(base: str, png: bytes, dicom: bytes, auth: dict) -> list[dict]:
    """The README's curl calls (answer PNG, answer DICOM with k=auto, explain, JSON, /v1), as responses."""
    out = []
    with httpx.Client(base_url=base, headers=auth, timeout=120) as c:
        for image, fields in (
            (png, {"question": "Where is the liver located?"}),
            (dicom, {"question": "Is there a lesion?", "k": "auto"}),
        ):
            r = c.post("/answer", files={"image": ("img", image)}, data=fields)
            assert r.status_code == 200, r.text
            out.append({k: r.json()[k] for k in ("answer", "k", "image")})
        r = c.post(
            "/explain",
            files={"image": ("img", png)},
            data={"question": "Describe the lesion.", "top_k": "3"},
        )
        assert r.status_code == 200, r.text
        out.append({"answer": r.json()["answer"], "sentences": [s["sentence"] for s in r.json()["steps"]]})
        r = c.post(
            "/answer",
            json={"image": base64.b64encode(dicom).decode(), "question": "Where is the liver?", "k": 2},
        )
        assert r.status_code == 200, r.text
        out.append({k: r.json()[k] for k in ("answer", "k")})
        url = "data:image/png;base64," + base64.b64encode(png).decode()
        r = c.post(
            "/v1/chat/completions",
            json={
                "model": "vital-tiny",
                "max_tokens": 32,
                "k": "auto",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": url}},
                            {"type": "text", "text": "Where is the liver located?"},
                        ],
                    }
                ],
            },
        )
        assert r.status_code == 200, r.text
        out.append({"content": r.json()["choices"][0]["message"]["content"]})
    return out


def _node_metrics(cluster: LocalRayCluster) -> list[str]:
    lines = []
    for node in cluster.started:
        text = httpx.get(f"http://{IP}:{node.metrics_port}/metrics", timeout=10).text
        lines += [line for line in text.splitlines() if line.startswith("ray_vital_")]
    return lines


def _answers_by_replica(cluster: LocalRayCluster) -> dict[str, float]:
    """`ray_vital_requests_total{route="/answer",status="200"}` per replica, from every node's exporter."""
    got: dict[str, float] = {}
    for line in _node_metrics(cluster):
        if (
            line.startswith("ray_vital_requests_total{")
            and 'route="/answer"' in line
            and 'status="200"' in line
        ):
            replica = re.search(r'replica="([^"]+)"', line).group(1)
            got[replica] = max(got.get(replica, 0.0), float(line.rsplit(" ", 1)[1]))
    return got


def _running_replicas() -> int:
    """RUNNING replicas of the app (0 without one, or without Serve: `vital serve --ray` stops Serve when its
    app was the last one, and a later one starts another controller, so the cached client is dropped)."""
    from ray import serve
    from ray.serve import context

    try:
        apps = serve.status().applications
    except Exception:
        context._set_global_client(None)
        try:
            apps = serve.status().applications
        except Exception:
            return 0
    if "vital" not in apps:
        return 0
    dep = apps["vital"].deployments.get("VitalReplica")
    return dep.replica_states.get("RUNNING", 0) if dep else 0


def _replica_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"ServeReplica:vital:VitalReplica" in cmd:
                pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from pydicom.data import get_testdata_file

    from training.phantom import generate

    out = tmp_path_factory.mktemp("ray-phantom")
    generate(out, n=4, seed=3, workers=1, progress=False)
    png = sorted((out / "images").glob("*.png"))[0].read_bytes()
    return png, Path(get_testdata_file("CT_small.dcm")).read_bytes()


@pytest.fixture(scope="module")
def fixed_serve(cluster, tmp_path_factory):
    serve_proc = RayServe(
        cluster, tmp_path_factory.mktemp("ray-serve") / "serve.log", VITAL_RAY_NUM_REPLICAS="2"
    )
    yield serve_proc
    if serve_proc.proc.poll() is None:
        serve_proc.proc.kill()


def test_serve_two_replicas_answer_like_vital_serve(fixed_serve, live_server, cluster, inputs):
    png, dicom = inputs
    assert _running_replicas() == 2
    want = _readme_calls(live_server.base, png, dicom, {"Authorization": f"Bearer {live_server.key}"})
    got = _readme_calls(fixed_serve.base, png, dicom, _auth())
    assert got == want
    # Same auth, limits and error shapes as vital serve.
    r = httpx.post(f"{fixed_serve.base}/answer", files={"image": ("i", png)}, data={"question": "q"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = httpx.post(f"{fixed_serve.base}/answer", files={"image": ("i", b"not an image")}, data={"question": "q"},
                   headers=_auth())  # fmt: skip
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_image"
    big = b"\0" * (MAX_BODY + 1024)  # through Ray's proxy, the replica's body limit still answers
    r = httpx.post(
        f"{fixed_serve.base}/answer", files={"image": ("i", big)}, data={"question": "q"}, headers=_auth()
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    # Enough concurrent requests that both replicas answer; each replica's metrics reach its node's exporter.
    with httpx.Client(base_url=fixed_serve.base, headers=_auth(), timeout=120) as c:
        threads = [
            threading.Thread(
                target=lambda: c.post(
                    "/answer", files={"image": ("i", png)}, data={"question": "Is there a lesion?"}
                )
            )
            for _ in range(12)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    deadline = time.time() + 30
    want_total = 12 + 3  # the burst and the README's three /answer calls (/v1 has its own route label)
    while (
        len(per := _answers_by_replica(cluster)) < 2 or sum(per.values()) < want_total
    ) and time.time() < deadline:
        time.sleep(1)  # replicas copy their metrics every 2 s, Ray exports them every 1 s here
    assert len(per) == 2, f"answers per replica in the exported metrics: {per}"
    assert sum(per.values()) == want_total, per


def test_prometheus_scrapes_every_replica_through_ray_and_the_dashboard_has_data(
    fixed_serve, cluster, inputs, tmp_path
):
    """docker/prometheus.ray.yml's relabelling on every node's exporter: `vital serve`'s metric names per replica,
    and every query of the Grafana dashboard returns data."""
    import yaml

    sys.path.insert(0, str(ROOT / "tests" / "ops"))
    from test_dashboard import _need, _wait, dashboard_queries

    prometheus = _need("prometheus")
    config = yaml.safe_load((ROOT / "docker" / "prometheus.ray.yml").read_text())
    job = config["scrape_configs"][0]
    del job["file_sd_configs"]  # no dashboard here: the nodes' exporters as static targets
    job["static_configs"] = [{"targets": [f"{IP}:{n.metrics_port}" for n in cluster.started]}]
    config["global"]["scrape_interval"] = "1s"
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port_block(1, taken=cluster.taken)[0]
    proc = subprocess.Popen(
        [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address={IP}:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    api = f"http://{IP}:{port}/api/v1"
    png, _ = inputs
    try:
        _wait(f"http://{IP}:{port}/-/ready", 60)
        with httpx.Client(base_url=fixed_serve.base, headers=_auth(), timeout=120) as c:
            t_end = time.time() + 10
            while time.time() < t_end:  # traffic across several scrapes, on both replicas
                threads = [
                    threading.Thread(target=c.post, args=("/answer",),
                                     kwargs={"files": {"image": ("i", png)}, "data": {"question": "Is there a lesion?"}})
                    for _ in range(4)
                ]  # fmt: skip
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                c.post("/answer", files={"image": ("i", b"junk")}, data={"question": "q"})  # an error series
            time.sleep(4)

        def query(q: str) -> list:
            r = httpx.get(f"{api}/query", params={"query": q}, timeout=10).json()
            assert r["status"] == "success", (q, r)
            return r["data"]["result"]

        replicas = query('count(count by (replica) (vital_requests_total{route="/answer",status="200"}))')
        assert replicas and replicas[0]["value"][1] == "2", replicas
        empty = [q for q in dashboard_queries() if not query(q)]
        assert not empty, f"dashboard queries with no data: {empty}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_killed_replica_loses_no_request_a_client_retries_once(fixed_serve, inputs):
    png, _ = inputs
    results: list[tuple[int, int]] = []  # (first status, final status) per request
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=fixed_serve.base, headers=_auth(), timeout=120) as c:
            while not stop.is_set():
                statuses = []
                for _ in range(2):  # one retry
                    try:
                        r = c.post(
                            "/answer", files={"image": ("i", png)}, data={"question": "Is there a lesion?"}
                        )
                        statuses.append(r.status_code)
                    except httpx.TransportError:
                        statuses.append(0)
                    if statuses[-1] == 200:
                        break
                results.append((statuses[0], statuses[-1]))

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(2.0)  # load running on both replicas
        before = len(results)
        victims = _replica_pids()
        assert len(victims) == 2, victims
        os.kill(victims[0], signal.SIGKILL)
        time.sleep(6.0)  # load goes on through the death and Ray's reaction
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert before > 0 and len(results) > before + 6, (before, len(results))
    failed_first = [first for first, _ in results if first != 200]
    print(
        f"replica killed under load: {len(failed_first)} of {len(results)} first attempts failed "
        f"(statuses {sorted(set(failed_first))}), every one answered on its retry"
    )
    assert [final for _, final in results] == [200] * len(results)
    deadline = time.time() + 120
    while _running_replicas() < 2:  # Ray replaces the replica
        assert time.time() < deadline, "Ray did not replace the killed replica within 120 s"
        time.sleep(1)


def test_sigterm_deletes_the_app_and_exits(fixed_serve):
    assert fixed_serve.stop() == 0
    assert _running_replicas() == 0
    with pytest.raises(httpx.HTTPError):
        r = httpx.get(f"{fixed_serve.base}/ready", timeout=5)
        r.raise_for_status()


def test_autoscaling_from_one_to_two_replicas_and_back(cluster, inputs, tmp_path):
    png, _ = inputs
    app = RayServe(
        cluster,
        tmp_path / "serve.log",
        VITAL_RAY_MIN_REPLICAS="1",
        VITAL_RAY_MAX_REPLICAS="2",
        VITAL_RAY_TARGET_ONGOING_REQUESTS="1",
        VITAL_RAY_UPSCALE_DELAY_S="1",
        VITAL_RAY_DOWNSCALE_DELAY_S="5",
    )
    try:
        assert _running_replicas() == 1
        stop = threading.Event()
        errors: list[int] = []

        def client() -> None:
            with httpx.Client(base_url=app.base, headers=_auth(), timeout=120) as c:
                while not stop.is_set():
                    r = c.post(
                        "/answer", files={"image": ("i", png)}, data={"question": "Is there a lesion?"}
                    )
                    if r.status_code != 200:
                        errors.append(r.status_code)

        threads = [threading.Thread(target=client) for _ in range(6)]
        t0 = time.time()
        for t in threads:
            t.start()
        try:
            while _running_replicas() < 2:
                assert time.time() - t0 < 90, "no second replica within 90 s of a burst of 6 clients"
                time.sleep(0.5)
            up = time.time() - t0
        finally:
            stop.set()
            for t in threads:
                t.join()
        t1 = time.time()
        while _running_replicas() > 1:
            assert time.time() - t1 < 90, "not back to one replica within 90 s of the burst"
            time.sleep(0.5)
        print(
            f"autoscaling: 2 replicas {up:.1f} s into the burst, back to 1 {time.time() - t1:.1f} s after it"
        )
        assert errors == []
    finally:
        assert app.stop() == 0


def _folder(tmp_path: Path, n: int) -> Path:
    from training.phantom import generate

    out = tmp_path / "phantom"
    generate(out, n=n, seed=5, workers=1, progress=False)
    d = out / "images"
    (d / "zz-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return d


def _by_id(path: Path) -> dict:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == len({r["id"] for r in rows}), "an item was answered twice"
    return {r["id"]: (r["answer"], r["k"], r["error"] and r["error"]["code"]) for r in rows}


def test_batch_of_200_on_two_nodes_equals_the_local_run_and_resumes_after_a_kill(cluster, tmp_path):
    assert _running_replicas() == 0  # the Serve tests left the CPUs free
    folder = _folder(tmp_path, 200)
    vital = [sys.executable, "-m", "vital_core.cli", "batch", str(folder), "--bundle", str(BUNDLE)]
    vital += [
        "--question",
        "Is there a lesion?",
        "--max-new-tokens",
        "8",
        "--batch-size",
        "8",
        "--no-progress",
    ]
    local = tmp_path / "local.jsonl"
    subprocess.run([*vital, "--out", str(local)], env=_env(), check=True, timeout=600)

    on_ray = tmp_path / "ray.jsonl"
    cmd = [*vital, "--out", str(on_ray), "--ray", cluster.address, "--ray-actors", "2"]
    first = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not on_ray.is_file() or len(on_ray.read_text().splitlines()) < 60:
        assert first.poll() is None, first.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "the Ray batch wrote fewer than 60 lines in 300 s"
        time.sleep(0.2)
    first.kill()  # the driver, half-way
    first.wait()
    done_before = len(on_ray.read_text().splitlines())
    assert done_before < 201
    second = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    skipped = int(re.search(r"(\d+) already in", second.stdout).group(1))
    assert skipped >= done_before - 1  # a torn last line is cut and redone
    want, got = _by_id(local), _by_id(on_ray)
    assert len(want) == 201 and got == want  # by id: Ray returns batches in completion order
    assert got["zz-corrupt.png"][2] == "unreadable_image"
