"""A multi-node Ray cluster on one machine: `ray start --head` and `ray start --address`, each node with its own
temp dir, ports and CPUs, on the loopback address 127.0.0.2 and off the network. For the tests and benchmarks
of `vital serve --ray` / `vital batch --ray`, and for trying them on a laptop:

    python -m server.ray_local --nodes 2        # prints the address; Ctrl-C stops every node it started

Why each flag (measured on Ray 2.60, ../shared/reference/ray-on-one-machine.md): Ray rewrites 127.0.0.1 to the
host's routable address, so 127.0.0.2 keeps the traffic on loopback; fixed default ports (52365, 6379, 8265,
10001, 44217, 44227, 8000) collide between two nodes on one host, so every port is given; AF_UNIX socket paths
stop at 107 bytes, so the temp dirs are short (/tmp/rXXXX); usage stats, cloud-metadata probes and the per-user
auth token are switched off (`RAY_ENV`). Nodes are stopped by their own process sessions (each `ray start
--block` runs under `setsid`), never with `ray stop`, which kills every Ray process on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

IP = "127.0.0.2"
# What keeps a Ray on loopback, silent, and free of the per-user auth token (~/.ray/auth_token).
RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,127.0.0.2,localhost,::1,127.0.0.0/8",
}
PORTS_PER_NODE = 6  # node manager, object manager, agent listen and grpc, runtime env, metrics


def free_port_block(
    n: int, low: int = 20000, high: int = 32000, tries: int = 200, taken: set[int] | None = None
) -> list[int]:
    """`n` consecutive ports on IP, all free now and none in `taken` (which gets them), below the ephemeral
    range as Ray's docs advise."""
    taken = set() if taken is None else taken
    for _ in range(tries):
        base = random.randrange(low, high - n)
        ports = list(range(base, base + n))
        if not taken.intersection(ports) and all(_free(p) for p in ports):
            taken.update(ports)
            return ports
    raise RuntimeError(f"no block of {n} free ports between {low} and {high}")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((IP, port))
        except OSError:
            return False
    with socket.socket() as s:  # Ray's workers and proxies also bind 0.0.0.0
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid:  # field 6 of stat: the session id
                pids.append(int(entry.name))
    return pids


@dataclass
class Node:
    index: int
    proc: subprocess.Popen
    temp_dir: Path
    metrics_port: int
    log: Path


@dataclass
class LocalRayCluster:
    """`nodes` Ray nodes on this machine, `cpus` CPUs each. `start()` blocks until every node is alive."""

    nodes: int = 2
    cpus: int = 1
    object_store_bytes: int = 150 * 1024 * 1024
    env: dict[str, str] = field(default_factory=dict)
    started: list[Node] = field(default_factory=list)
    gcs_port: int = 0
    root: Path | None = None
    taken: set[int] = field(default_factory=set)  # every port given to a node so far

    @property
    def address(self) -> str:
        return f"{IP}:{self.gcs_port}"

    def process_env(self) -> dict[str, str]:
        """The nodes' environment: RAY_ENV without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which makes `ray start`
        refuse a second node (it is for a process that may start a one-node Ray of its own)."""
        env = {**os.environ, **RAY_ENV, **self.env}
        env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        return env

    def start(self, timeout: float = 120.0) -> LocalRayCluster:
        self.root = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # AF_UNIX paths stop at 107 bytes
        head_ports = free_port_block(
            PORTS_PER_NODE + 5, taken=self.taken
        )  # + dashboard, client, 2 metrics, GCS
        self.gcs_port = head_ports[-1]
        try:
            self.started.append(self._start_node(0, head_ports))
            _wait_port(IP, self.gcs_port, timeout, self.started[0])
            for i in range(1, self.nodes):
                self.started.append(self._start_node(i, free_port_block(PORTS_PER_NODE, taken=self.taken)))
            self.wait_alive(self.nodes, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self, index: int, ports: list[int]) -> Node:
        temp = self.root / f"n{index}"
        temp.mkdir()
        ray = str(Path(sys.executable).with_name("ray"))
        workers = free_port_block(100, taken=self.taken)
        cmd = [
            ray, "start", "--block", "--disable-usage-stats",
            "--num-cpus", str(self.cpus), "--num-gpus", "0",
            "--temp-dir", str(temp), "--node-ip-address", IP,
            "--node-manager-port", str(ports[0]), "--object-manager-port", str(ports[1]),
            "--dashboard-agent-listen-port", str(ports[2]), "--dashboard-agent-grpc-port", str(ports[3]),
            "--runtime-env-agent-port", str(ports[4]), "--metrics-export-port", str(ports[5]),
            "--min-worker-port", str(workers[0]), "--max-worker-port", str(workers[-1]),
            "--object-store-memory", str(self.object_store_bytes),
        ]  # fmt: skip
        env = self.process_env()
        if index == 0:
            cmd += [
                "--head", "--port", str(self.gcs_port), "--include-dashboard", "false",
                "--dashboard-host", IP, "--dashboard-port", str(ports[6]),
                "--ray-client-server-port", str(ports[7]),
            ]  # fmt: skip
            env.update(DASHBOARD_METRIC_PORT=str(ports[8]), AUTOSCALER_METRIC_PORT=str(ports[9]))
        else:
            cmd += ["--address", self.address]
        log = self.root / f"n{index}.log"
        proc = subprocess.Popen(
            cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
        )
        return Node(index, proc, temp, ports[5], log)

    def wait_alive(self, n: int, timeout: float = 120.0) -> None:
        """Until `n` nodes are alive in the GCS (asked by a short-lived subprocess: no driver kept here)."""
        code = (
            "import ray,sys\n"
            f"ray.init(address='{self.address}', log_to_driver=False)\n"
            "sys.stdout.write(str(sum(1 for x in ray.nodes() if x['Alive'])))\n"
        )
        deadline = time.monotonic() + timeout
        seen = "?"
        while time.monotonic() < deadline:
            for node in self.started:
                if node.proc.poll() is not None:
                    raise RuntimeError(f"Ray node {node.index} exited: {node.log.read_text()[-2000:]}")
            out = subprocess.run(
                [sys.executable, "-c", code],
                env=self.process_env(),
                capture_output=True,
                text=True,
                timeout=60,
            )
            seen = out.stdout.strip() or "?"
            if seen.isdigit() and int(seen) >= n:
                return
            time.sleep(1.0)
        raise TimeoutError(f"{seen} of {n} Ray nodes alive after {timeout:g} s")

    def kill_node(self, index: int) -> None:
        """SIGKILL every process of one node (its `ray start --block` session)."""
        _kill_session(self.started[index].proc, signal.SIGKILL)

    def stop(self) -> None:
        """Stop every node this cluster started (and nothing else), then remove the temp dirs."""
        for node in reversed(self.started):
            _kill_session(node.proc, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for node in reversed(self.started):
            while time.monotonic() < deadline and _session_pids(node.proc.pid):
                time.sleep(0.2)
            _kill_session(node.proc, signal.SIGKILL)
            node.proc.wait(timeout=10)
        self.started.clear()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _kill_session(proc: subprocess.Popen, sig: int) -> None:
    for pid in _session_pids(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_port(host: str, port: int, timeout: float, node: Node) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.proc.poll() is not None:
            raise RuntimeError(f"the Ray head exited: {node.log.read_text()[-2000:]}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"the Ray head's GCS did not open {host}:{port} in {timeout:g} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m server.ray_local",
        description="Start a Ray cluster of several nodes on this machine (loopback only) and keep it "
        "until Ctrl-C or SIGTERM; prints its address for `vital serve --ray` / `vital batch --ray`.",
    )
    p.add_argument("--nodes", type=int, default=2, help="nodes (default 2)")
    p.add_argument("--cpus", type=int, default=1, help="CPUs per node (default 1)")
    args = p.parse_args(argv)
    if args.nodes < 1 or args.cpus < 1:
        p.error("--nodes and --cpus must be at least 1")
    with LocalRayCluster(nodes=args.nodes, cpus=args.cpus) as cluster:
        print(f"Ray cluster of {args.nodes} nodes at {cluster.address}", flush=True)
        for node in cluster.started:
            print(f"  node {node.index}: metrics at http://{IP}:{node.metrics_port}/metrics", flush=True)
        print("use the same environment in clients: " + " ".join(f"{k}={v}" for k, v in RAY_ENV.items()))
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
