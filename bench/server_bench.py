"""Server benchmark: latency and throughput of a real `vital serve` process under concurrent clients.

For 1, 4, 16 and 64 concurrent clients, with batching on and off (ratio in the same run): p50/p99
latency and throughput of POST /answer. Also HTTP overhead (end-to-end latency of one client over the
in-process model call for the same request) and /explain over /answer latency.

    python bench/server_bench.py --bundle bundles/vital-tiny --out bench/results
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

    def __init__(self, bundle: str, batching: bool, max_batch: int, wait_ms: float):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "VITAL_BATCHING": str(batching).lower(), "VITAL_MAX_BATCH_SIZE": str(max_batch),
               "VITAL_MAX_WAIT_MS": str(wait_ms), "VITAL_LOG_LEVEL": "warning", "VITAL_MAX_QUEUE": "1024"}  # fmt: skip
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vital_core.cli", "serve", "--bundle", bundle, "--port", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

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

    def __exit__(self, *exc) -> None:  # noqa: ANN002
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
    args = p.parse_args()
    levels = [int(x) for x in args.clients.split(",")]
    images = [_png(i) for i in range(16)]
    result: dict = {"benchmark": "server", "bundle": args.bundle, "machine": _machine(), "levels": {}}
    for batching in (True, False):
        key = "batching_on" if batching else "batching_off"
        with Server(args.bundle, batching, args.max_batch, args.wait_ms) as srv:
            asyncio.run(_load(srv.base, 4, 16, images))  # warm-up
            rows = []
            for n in levels:
                row = asyncio.run(_load(srv.base, n, max(args.requests, 2 * n), images))
                rows.append(row)
                print(f"{key:13s} clients={n:3d}  p50 {row['p50_ms']:8.1f} ms  p99 {row['p99_ms']:8.1f} ms  "
                      f"{row['throughput_rps']:6.2f} req/s")  # fmt: skip
            result["levels"][key] = rows
            if batching:
                single = asyncio.run(_load(srv.base, 1, 32, images))
                explain = asyncio.run(_load(srv.base, 1, 16, images, route="/explain"))
                result["single_client_answer_p50_ms"] = single["p50_ms"]
                result["single_client_explain_p50_ms"] = explain["p50_ms"]
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
    (out / "server-cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
