"""Server benchmark: latency and throughput of a real `vital serve` process under concurrent clients.

For 1, 4, 16 and 64 concurrent clients, with batching on and off (ratio in the same run): p50/p99
latency and throughput of POST /answer. Also HTTP overhead (end-to-end latency of one client over the
in-process model call for the same request), /explain over /answer latency, and /answer latency under
mixed load (answer clients alongside /explain clients, ratio to the same answer clients alone, on
the same server in the same run; `--mixed-only` runs just that part). `--explain-cold` measures the
first /explain after `/ready` against warm ones, with the explain path warmed at start-up
(VITAL_EXPLAIN_PRELOAD=true, the default) and loaded on first use (false), fresh servers interleaved.

    python bench/server_bench.py --bundle bundles/vital-tiny --out bench/results
    python bench/server_bench.py --mixed-only --out bench/results
    python bench/server_bench.py --explain-cold --out bench/results
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

QUESTION = "Where is the lesion located?"


def _machine() -> dict:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"cpu": cpu, "cores": os.cpu_count()}


def _pinning() -> str:
    cpus = sorted(os.sched_getaffinity(0))
    omp = os.environ.get("OMP_NUM_THREADS", "unset")
    return f"pinned to CPU {','.join(map(str, cpus))}, OMP_NUM_THREADS={omp}"


def _png(seed: int, side: int = 128) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `vital serve` subprocess."""

    def __init__(self, bundle: str, batching: bool, max_batch: int, wait_ms: float, preload: bool = False):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "VITAL_BATCHING": str(batching).lower(),
            "VITAL_MAX_BATCH_SIZE": str(max_batch),
            "VITAL_MAX_WAIT_MS": str(wait_ms),
            "VITAL_LOG_LEVEL": "warning",
            "VITAL_MAX_QUEUE": "1024",
            "VITAL_EXPLAIN_PRELOAD": str(preload).lower(),
            "VITAL_DRAIN_SECONDS": "0",
        }
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vital_core.cli", "serve", "--bundle", bundle, "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def __enter__(self) -> Server:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.base}/ready", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not become ready")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


async def _load(base: str, clients: int, requests: int, images: list[bytes], route: str = "/answer") -> dict:
    """`clients` concurrent loops sharing `requests` requests; latency per request and throughput."""
    latencies: list[float] = []
    counter = iter(range(requests))

    async def client(c: httpx.AsyncClient) -> None:
        for i in counter:
            files = {"image": ("x.png", images[i % len(images)], "image/png")}
            data = {"question": QUESTION, "k": "4", "max_new_tokens": "16"}
            t = time.perf_counter()
            r = await c.post(f"{base}{route}", files=files, data=data)
            r.raise_for_status()
            latencies.append(time.perf_counter() - t)

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*[client(c) for _ in range(clients)])
        wall = time.perf_counter() - t0
    lat = sorted(latencies)
    return {
        "clients": clients,
        "requests": len(lat),
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        "throughput_rps": len(lat) / wall,
    }


async def _mixed(
    base: str, answer_clients: int, explain_clients: int, requests: int, images: list[bytes]
) -> dict:
    """/answer p50/p99 with `explain_clients` /explain loops running alongside (until the answers are done)."""
    stop = asyncio.Event()
    explained = 0

    async def explain_loop(c: httpx.AsyncClient, seed: int) -> None:
        nonlocal explained
        i = seed
        while not stop.is_set():
            files = {"image": ("x.png", images[i % len(images)], "image/png")}
            data = {"question": QUESTION, "k": "4", "max_new_tokens": "16"}
            (await c.post(f"{base}/explain", files=files, data=data)).raise_for_status()
            explained += 1
            i += 1

    async def answers() -> dict:
        try:
            return await _load(base, answer_clients, requests, images)
        finally:
            stop.set()

    async with httpx.AsyncClient(timeout=300) as c:
        row, *_ = await asyncio.gather(answers(), *[explain_loop(c, j) for j in range(explain_clients)])
    return {**row, "explain_clients": explain_clients, "explains_done": explained}


def mixed_load(
    bundle: str, answer_clients: int, explain_clients: int, requests: int, images: list[bytes]
) -> dict:
    """Answer-only vs mixed /answer + /explain load on one server (explain modules preloaded)."""
    with Server(bundle, True, 16, 0.0, preload=True) as srv:
        asyncio.run(_load(srv.base, 4, 16, images))  # warm-up
        asyncio.run(_load(srv.base, 1, 4, images, route="/explain"))
        alone = asyncio.run(_load(srv.base, answer_clients, requests, images))
        mixed = asyncio.run(_mixed(srv.base, answer_clients, explain_clients, requests, images))
        again = asyncio.run(_load(srv.base, answer_clients, requests, images))  # drift check
    out = {"answer_only": alone, "mixed": mixed, "answer_only_after": again}
    out["p50_ratio_mixed_over_alone"] = mixed["p50_ms"] / alone["p50_ms"]
    out["p99_ratio_mixed_over_alone"] = mixed["p99_ms"] / alone["p99_ms"]
    return out


def _explain_once(base: str, image: bytes) -> float:
    files = {"image": ("x.png", image, "image/png")}
    data = {"question": QUESTION, "k": "4", "max_new_tokens": "16"}
    t = time.perf_counter()
    httpx.post(f"{base}/explain", files=files, data=data, timeout=300).raise_for_status()
    return 1000 * (time.perf_counter() - t)


def explain_cold(bundle: str, rounds: int, warm_calls: int, images: list[bytes]) -> dict:
    """Per arm (explain warmed before /ready or not), `rounds` fresh servers, interleaved: the first
    /explain right after /ready turned 200, then the median of `warm_calls` more (other images)."""
    arms: dict[str, list[dict]] = {"warmed": [], "lazy": []}
    for _ in range(rounds):
        for arm in arms:
            with Server(bundle, True, 16, 0.0, preload=arm == "warmed") as srv:
                t_ready = time.perf_counter() - srv.started
                first = _explain_once(srv.base, images[0])
                warm = [_explain_once(srv.base, images[1 + i % (len(images) - 1)]) for i in range(warm_calls)]
            med = statistics.median(warm)
            arms[arm].append(
                {"ready_s": t_ready, "first_ms": first, "warm_p50_ms": med, "ratio": first / med}
            )
            print(
                f"{arm:6s} ready {t_ready:5.1f} s  first {first:7.1f} ms  warm p50 {med:6.1f} ms  {first / med:.2f}×"
            )
    summary = {
        arm: {
            key: statistics.median(r[key] for r in rows)
            for key in ("ready_s", "first_ms", "warm_p50_ms", "ratio")
        }
        for arm, rows in arms.items()
    }
    return {"rounds": arms, "summary": summary}


def _save_explain_cold(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "explain-cold.json").write_text(json.dumps(result, indent=2))
    m, cold, sm = result["machine"], result["explain_cold"], result["explain_cold"]["summary"]
    lines = [
        f"# First /explain after /ready — {Path(result['bundle']).name} on CPU",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores visible, {result['pinning']} (shared with other jobs). "
        f"Command: `{result['command']}`. A fresh `vital serve` per round, arms interleaved; the first "
        "/explain (128×128 PNG, K = 4, 16 tokens) is sent as soon as /ready is 200, then "
        f"{result['warm_calls']} more with other images; medians over {len(cold['rounds']['warmed'])} rounds.",
        "",
        "| start-up | /ready after s | first /explain ms | warm /explain p50 ms | first / warm (median of rounds) |",
        "|---|---|---|---|---|",
    ]
    for arm, label in (
        ("lazy", "modules load on first use (`VITAL_EXPLAIN_PRELOAD=false`, old default)"),
        ("warmed", "warmed before /ready (`VITAL_EXPLAIN_PRELOAD=true`, default)"),
    ):
        r = sm[arm]
        lines.append(
            f"| {label} | {r['ready_s']:.1f} | {r['first_ms']:.1f} | {r['warm_p50_ms']:.1f} | **{r['ratio']:.2f}×** |"
        )
    lines += [
        "",
        "Per round (first / warm): "
        + "; ".join(
            f"{arm} " + ", ".join(f"{x['ratio']:.2f}×" for x in rows) for arm, rows in cold["rounds"].items()
        )
        + ".",
    ]
    if "load_avg_1min_at_end" in result:
        lines.append(f"1-min load average at the end: {result['load_avg_1min_at_end']:.1f}.")
    (out / "explain-cold.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _in_process_ms(bundle: str, images: list[bytes], n: int) -> float:
    """Median latency of the same request through the model directly (decode + answer), no HTTP."""
    from server.images import decode_image
    from vital_core.bundle import load_bundle

    model = load_bundle(bundle)
    times = []
    for i in range(n + 2):
        t = time.perf_counter()
        img = decode_image(images[i % len(images)], max_pixels=40_000_000).image
        model.answer([img], [QUESTION], k=4, max_new_tokens=16)
        if i >= 2:
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="bundles/vital-tiny")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--clients", default="1,4,16,64")
    p.add_argument("--requests", type=int, default=128, help="requests per concurrency level")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--wait-ms", type=float, default=5.0)
    p.add_argument("--mixed-answer-clients", type=int, default=8)
    p.add_argument("--mixed-explain-clients", type=int, default=8)
    p.add_argument("--mixed-requests", type=int, default=64, help="/answer requests per mixed-load phase")
    p.add_argument("--mixed-only", action="store_true", help="run only the mixed /answer + /explain part")
    p.add_argument("--explain-cold", action="store_true", help="run only the first-/explain arm")
    p.add_argument("--cold-rounds", type=int, default=5, help="fresh servers per arm for --explain-cold")
    p.add_argument("--warm-calls", type=int, default=10, help="warm /explain calls per server")
    args = p.parse_args()
    levels = [int(x) for x in args.clients.split(",")]
    images = [_png(i) for i in range(16)]
    mixed_args = (args.mixed_answer_clients, args.mixed_explain_clients, args.mixed_requests, images)
    if args.explain_cold:
        result = {
            "benchmark": "explain-cold",
            "bundle": args.bundle,
            "machine": _machine(),
            "pinning": _pinning(),
            "command": "python bench/server_bench.py " + " ".join(sys.argv[1:]),
            "warm_calls": args.warm_calls,
        }
        result["explain_cold"] = explain_cold(args.bundle, args.cold_rounds, args.warm_calls, images)
        result["load_avg_1min_at_end"] = os.getloadavg()[0]
        _save_explain_cold(result, Path(args.out))
        return 0
    if args.mixed_only:
        result = {"benchmark": "server-mixed", "bundle": args.bundle, "machine": _machine()}
        result["mixed"] = mixed_load(args.bundle, *mixed_args)
        _save_mixed(result, Path(args.out))
        return 0
    result: dict = {"benchmark": "server", "bundle": args.bundle, "machine": _machine(), "levels": {}}
    for batching in (True, False):
        key = "batching_on" if batching else "batching_off"
        with Server(args.bundle, batching, args.max_batch, args.wait_ms) as srv:
            asyncio.run(_load(srv.base, 4, 16, images))  # warm-up
            rows = []
            for n in levels:
                row = asyncio.run(_load(srv.base, n, max(args.requests, 2 * n), images))
                rows.append(row)
                print(
                    f"{key:13s} clients={n:3d}  p50 {row['p50_ms']:8.1f} ms  p99 {row['p99_ms']:8.1f} ms  "
                    f"{row['throughput_rps']:6.2f} req/s"
                )
            result["levels"][key] = rows
            if batching:
                single = asyncio.run(_load(srv.base, 1, 32, images))
                explain = asyncio.run(_load(srv.base, 1, 16, images, route="/explain"))
                result["single_client_answer_p50_ms"] = single["p50_ms"]
                result["single_client_explain_p50_ms"] = explain["p50_ms"]
    result["mixed"] = mixed_load(args.bundle, *mixed_args)
    result["in_process_p50_ms"] = _in_process_ms(args.bundle, images, 32)
    result["http_overhead_ratio"] = result["single_client_answer_p50_ms"] / result["in_process_p50_ms"]
    result["explain_over_answer_ratio"] = (
        result["single_client_explain_p50_ms"] / result["single_client_answer_p50_ms"]
    )
    _save(result, Path(args.out))
    return 0


def _save(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "server-cpu.json").write_text(json.dumps(result, indent=2))
    m = result["machine"]
    on, off = result["levels"]["batching_on"], result["levels"]["batching_off"]
    lines = [
        f"# Server benchmark — {Path(result['bundle']).name} on CPU",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores. A real `vital serve` process; POST /answer with a 128×128 "
        "PNG, K = 4, 16 answer tokens max; clients are asyncio httpx loops.",
        "",
        "| clients | p50 ms (on) | p99 ms (on) | req/s (on) | p50 ms (off) | p99 ms (off) | req/s (off) | "
        "throughput on/off |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a, b in zip(on, off):
        lines.append(
            f"| {a['clients']} | {a['p50_ms']:.1f} | {a['p99_ms']:.1f} | {a['throughput_rps']:.2f} | "
            f"{b['p50_ms']:.1f} | {b['p99_ms']:.1f} | {b['throughput_rps']:.2f} | "
            f"{a['throughput_rps'] / b['throughput_rps']:.2f}× |"
        )
    lines += [
        "",
        f"- HTTP overhead: single-client end-to-end p50 {result['single_client_answer_p50_ms']:.1f} ms vs the "
        f"in-process call {result['in_process_p50_ms']:.1f} ms → ratio {result['http_overhead_ratio']:.2f}.",
        f"- /explain vs /answer (single client, p50): {result['single_client_explain_p50_ms']:.1f} ms vs "
        f"{result['single_client_answer_p50_ms']:.1f} ms → ratio {result['explain_over_answer_ratio']:.2f}.",
    ]
    lines += ["", *_mixed_lines(result)]
    (out / "server-cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _mixed_lines(result: dict) -> list[str]:
    mx = result["mixed"]
    a, m, b = mx["answer_only"], mx["mixed"], mx["answer_only_after"]
    return [
        f"/answer under mixed load: {a['clients']} /answer clients, alone and with "
        f"{m['explain_clients']} /explain clients running alongside ({m['explains_done']} explanations "
        "done meanwhile); one server, explain modules preloaded, K = 4, 16 tokens.",
        "",
        "| /answer load | p50 ms | p99 ms | answers/s |",
        "|---|---|---|---|",
        f"| alone | {a['p50_ms']:.1f} | {a['p99_ms']:.1f} | {a['throughput_rps']:.2f} |",
        f"| with /explain clients | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} | {m['throughput_rps']:.2f} |",
        f"| alone, again (drift check) | {b['p50_ms']:.1f} | {b['p99_ms']:.1f} | {b['throughput_rps']:.2f} |",
        "",
        f"Ratio mixed / alone: p50 {mx['p50_ratio_mixed_over_alone']:.2f}×, "
        f"p99 {mx['p99_ratio_mixed_over_alone']:.2f}×.",
    ]


def _save_mixed(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "server-cpu-mixed.json").write_text(json.dumps(result, indent=2))
    m = result["machine"]
    lines = [
        f"# Server benchmark, mixed /answer + /explain — {Path(result['bundle']).name} on CPU",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores (shared with other jobs while measured). A real "
        "`vital serve` process; clients are asyncio httpx loops.",
        "",
        *_mixed_lines(result),
    ]
    (out / "server-cpu-mixed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
