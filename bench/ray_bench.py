"""Ray benchmark (issue 26): what one machine's worth of Ray costs and gives, measured in one run.

1. `vital batch` throughput on the same phantom folder: locally (no Ray), on a one-node Ray (one actor) and on a
   two-node Ray (two actors, one per node), each node one CPU (server/ray_local.py). Items/s as the CLI reports
   it (driver start, actors loading the bundle, and every item), and the ratio 2 nodes / 1 node.
2. `/answer` latency p50/p99 and throughput at 1 and 8 concurrent clients: plain `vital serve` (uvicorn) against
   `vital serve --ray` with 1 replica and with 2 replicas on the two-node Ray; ratios to plain vital serve.

    python bench/ray_bench.py --out bench/results            # ~8 min on 2 cores
    python bench/ray_bench.py --items 40 --requests 16 --out /tmp/rb   # a quick check

Needs the extra `.[ray]`. The machine is stated in the output; on a 2-core machine the clients, Ray's own
processes and the replicas share the cores, so the ratios are what this machine gives, not a cluster's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_bench import Server, _load, _machine, _png  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    from server.ray_local import RAY_ENV

    env = {**os.environ, **RAY_ENV, "PYTHONUNBUFFERED": "1", "VITAL_LOG_LEVEL": "warning"}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    return env


def batch_run(
    folder: Path, bundle: str, out: Path, ray: str | None = None, actors: int = 1, batch_size: int = 8
) -> dict:
    """One `vital batch` run through the CLI; the figures it prints."""
    cmd = [
        sys.executable,
        "-m",
        "vital_core.cli",
        "batch",
        str(folder),
        "--bundle",
        bundle,
        "--out",
        str(out),
    ]
    cmd += ["--question", "Is there a lesion?", "--max-new-tokens", "8", "--batch-size", str(batch_size)]
    cmd += ["--no-progress"]
    if ray:
        cmd += ["--ray", ray, "--ray-actors", str(actors)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    m = re.search(r"(\d+) answered, (\d+) errors, in ([\d.]+) s \(([\d.]+) items/s", proc.stdout)
    steady = re.search(r"after the first batch \(([\d.]+) s\): ([\d.]+) items/s", proc.stdout)
    return {"answered": int(m[1]), "errors": int(m[2]), "seconds": float(m[3]), "items_per_s": float(m[4]),
            "first_batch_s": float(steady[1]), "steady_items_per_s": float(steady[2]),
            "process_wall_s": round(wall, 1)}  # fmt: skip


class RayServe:
    """`vital serve --ray` in a subprocess, until deployed."""

    def __init__(self, address: str, bundle: str, port: int, replicas: int) -> None:
        from server.ray_local import IP

        self.base = f"http://{IP}:{port}"
        env = {**_env(), "VITAL_RAY_NUM_REPLICAS": str(replicas), "VITAL_MAX_QUEUE": "1024"}
        cmd = [sys.executable, "-m", "vital_core.cli", "serve", "--bundle", bundle, "--device", "cpu"]
        cmd += ["--ray", address, "--host", IP, "--port", str(port)]
        self.log = Path(f"/tmp/ray-bench-serve-{port}.log")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT)

    def __enter__(self) -> RayServe:
        deadline = time.time() + 300
        while "VITAL serving" not in self.log.read_text():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("vital serve --ray did not deploy:\n" + self.log.read_text()[-3000:])
            time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=180)


def latency_rows(base: str, requests: int, images: list[bytes]) -> list[dict]:
    rows = []
    for clients in (1, 8):
        asyncio.run(_load(base, clients, 4, images))  # warm-up
        rows.append(asyncio.run(_load(base, clients, requests if clients == 1 else 3 * requests, images)))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=str(ROOT / "bundles" / "vital-tiny"))
    p.add_argument("--items", type=int, default=1600, help="phantom images for the batch runs")
    p.add_argument("--requests", type=int, default=40, help="requests at 1 client (3x at 8 clients)")
    p.add_argument("--batch-size", type=int, default=8, help="vital batch --batch-size")
    p.add_argument("--batch-only", action="store_true", help="only the vital batch part")
    p.add_argument("--out", default="bench/results")
    args = p.parse_args(argv)
    from server.ray_local import LocalRayCluster, free_port_block
    from training.phantom import generate

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(f"/tmp/ray-bench-{os.getpid()}")
    generate(work / "phantom", n=args.items, seed=11, workers=1, progress=False)
    folder = work / "phantom" / "images"
    result: dict = {
        "machine": _machine(),
        "items": args.items,
        "batch_size": args.batch_size,
        "ray": __import__("ray").__version__,
        "batch": {},
    }

    print("batch: local", flush=True)
    result["batch"]["local"] = batch_run(
        folder, args.bundle, work / "local.jsonl", batch_size=args.batch_size
    )
    print("batch: one node", flush=True)
    with LocalRayCluster(nodes=1, cpus=1) as one:
        result["batch"]["ray_1_node"] = batch_run(
            folder, args.bundle, work / "one.jsonl", one.address, 1, args.batch_size
        )
    images = [_png(i) for i in range(8)]
    serve_rows: dict[str, list[dict]] = {}
    with LocalRayCluster(nodes=2, cpus=1, env={"RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0"}) as two:
        print("batch: two nodes", flush=True)
        result["batch"]["ray_2_nodes"] = batch_run(
            folder, args.bundle, work / "two.jsonl", two.address, 2, args.batch_size
        )
        for replicas in () if args.batch_only else (1, 2):
            print(f"serve: ray, {replicas} replica(s)", flush=True)
            with RayServe(two.address, args.bundle, free_port_block(1, taken=two.taken)[0], replicas) as app:
                serve_rows[f"ray_serve_{replicas}_replica{'s' if replicas > 1 else ''}"] = latency_rows(
                    app.base, args.requests, images
                )
            time.sleep(3)
    if not args.batch_only:
        print("serve: plain vital serve", flush=True)
        with Server(args.bundle, batching=True, max_batch=8, wait_ms=0.0) as plain:
            serve_rows = {"vital_serve": latency_rows(plain.base, args.requests, images), **serve_rows}
    result["serve"] = serve_rows
    b = result["batch"]
    result["batch_ratio_2_over_1_node"] = round(
        b["ray_2_nodes"]["items_per_s"] / b["ray_1_node"]["items_per_s"], 2
    )
    result["batch_steady_ratio_2_over_1_node"] = round(
        b["ray_2_nodes"]["steady_items_per_s"] / b["ray_1_node"]["steady_items_per_s"], 2
    )
    name = f"ray-bench-batch{args.batch_size}" if args.batch_only else "ray-bench"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    (out / f"{name}.md").write_text(_table(result))
    print(_table(result))
    return 0


def _table(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# Ray: `vital batch` on 1 vs 2 nodes, and Ray Serve vs plain `vital serve`",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, no GPU; Ray {r['ray']}; every Ray node on this machine with "
        f"`--num-cpus 1` (server/ray_local.py). Bundle: bundles/vital-tiny. `python bench/ray_bench.py` (one run).",
        "",
        f"## `vital batch`, {r['items']} phantom images (K = 4, 8 new tokens, --batch-size {r.get('batch_size', 8)})",
        "",
        "| run | items/s after the first batch | first batch, s | items/s overall | run, s | whole process, s "
        "| errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in r["batch"].items():
        lines.append(
            f"| {name} | {row['steady_items_per_s']:.1f} | {row['first_batch_s']:.1f} | {row['items_per_s']:.1f} | "
            f"{row['seconds']:.1f} | {row['process_wall_s']:.1f} | {row['errors']} |"
        )
    lines += [
        "",
        "As the CLI reports them. The run's seconds: locally, the items only (the model is loaded before); with "
        "`--ray`, from sending the items to the last line, so they include starting the actors and each actor "
        "loading the bundle, which the first batch's time shows. The whole process adds Python start-up, imports "
        "and (locally) the model load. Items/s after the first batch is the steady rate.",
    ]
    lines += [
        "",
        f"Two nodes / one node: **{r['batch_steady_ratio_2_over_1_node']:.2f}×** after the first batch, "
        f"{r['batch_ratio_2_over_1_node']:.2f}× overall.",
        "",
    ]
    if not r["serve"]:
        return "\n".join(lines) + "\n"
    lines += [
        "## `/answer` latency (K = 4, 16 new tokens, 128² PNG)",
        "",
        "| server | clients | requests | p50 ms | p99 ms | req/s | p50 / plain | req/s / plain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    plain = {row["clients"]: row for row in r["serve"]["vital_serve"]}
    for name, rows in r["serve"].items():
        for row in rows:
            base = plain[row["clients"]]
            lines.append(
                f"| {name} | {row['clients']} | {row['requests']} | {row['p50_ms']:.0f} | {row['p99_ms']:.0f} | "
                f"{row['throughput_rps']:.1f} | {row['p50_ms'] / base['p50_ms']:.2f} | "
                f"{row['throughput_rps'] / base['throughput_rps']:.2f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
