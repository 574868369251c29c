"""Deployment settings, from environment variables (prefix `VITAL_`) or a `.env` file.

Only deployment values live here; the model's own config is read from the bundle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BUNDLE = "bundles/vital-tiny"


class Settings(BaseSettings):
    """Everything an operator sets when deploying the service."""

    model_config = SettingsConfigDict(env_prefix="VITAL_", env_file=".env", extra="ignore")

    bundle: Path = Field(Path(DEFAULT_BUNDLE), description="bundle directory to serve")
    device: str = Field("auto", description="cpu, cuda, cuda:N, or auto (cuda when available)")
    dtype: str | None = Field(None, description="weight dtype override: float32, bfloat16, float16")
    k_default: int | None = Field(
        None, ge=0, description="K when a request gives none (default: the bundle's)"
    )
    k_max: int | None = Field(None, ge=0, description="largest K accepted (default: the bundle's)")
    max_new_tokens: int = Field(64, ge=1, le=4096, description="largest max_new_tokens a request may ask for")
    max_batch_size: int = Field(8, ge=1, le=256, description="requests gathered into one forward pass")
    max_wait_ms: float = Field(
        0.0,
        ge=0,
        description="extra wait for more requests before a batch starts; batches also form while the "
        "previous batch runs (measured best on CPU: 0, see bench/results/server-cpu*.md)",
    )
    batching: bool = Field(True, description="gather concurrent requests into batches (off: batch size 1)")
    max_queue: int = Field(256, ge=1, description="requests waiting beyond this get 429")
    step_mode: Literal["dynamic", "static", "graphs"] = Field(
        "static",
        description="latent/decode steps: dynamic (the training cache), static (preallocated cache), "
        "graphs (static + CUDA graphs per batch bucket; static on CPU)",
    )
    prefix_cache_bytes: int = Field(
        256 * 1024 * 1024, ge=0, description="bytes of image-prefix KV kept for repeat images (0: off)"
    )
    static_cache_bytes: int | None = Field(
        None,
        ge=1,
        description="bytes the static-cache buckets may hold together, least recently used evicted beyond; "
        "a batch whose bucket alone is larger runs on the dynamic cache (default: a quarter of the device's "
        "free memory at start-up, of the available RAM on CPU)",
    )
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="largest request body (413 beyond)")
    max_pixels: int = Field(
        40_000_000, ge=1, description="largest declared image size in pixels (413 beyond)"
    )
    max_decoded_bytes: int = Field(
        128 * 1024 * 1024,
        ge=1024,
        description="largest single decoded frame/slice/image in bytes (413 beyond)",
    )
    max_stream_bytes: int = Field(
        512 * 1024 * 1024,
        ge=1024,
        description="largest inflated stream / declared pixel data of one file in bytes (413 beyond)",
    )
    max_instances: int = Field(
        1000,
        ge=1,
        description="most DICOM instances in one series: a zip or several image parts (413 beyond)",
    )
    max_series_bytes: int = Field(
        1024 * 1024 * 1024,
        ge=1024,
        description="largest total of a series' instance files, uncompressed as a zip declares them (413 beyond)",
    )
    max_volume_bytes: int = Field(
        512 * 1024 * 1024,
        ge=1024,
        description="largest assembled series volume, slices x rows x columns x bytes per voxel (413 beyond)",
    )
    request_timeout_s: float = Field(60.0, gt=0, description="a request not answered by then gets 504")
    header_timeout_s: float = Field(
        10.0, gt=0, description="a connection that has not sent a complete request head by then is closed"
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="a request body not fully received this long after its head gets 408"
    )
    max_discard_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="an oversize body up to this size is read and dropped before the 413, so the client "
        "reads the 413 instead of a reset; a larger one gets the 413 and the connection closes",
    )
    api_key: SecretStr | None = Field(
        None, description="bearer key required on model routes and the API docs when set"
    )
    docs_public: bool = Field(
        False, description="serve /docs, /redoc and /openapi.json without the key even when one is set"
    )
    explain: bool = Field(True, description="serve /explain (needs scaffolding in the bundle)")
    explain_preload: bool = Field(
        True,
        description="when /explain is enabled, load its modules and run one tiny explanation before "
        "/ready turns 200, so the first /explain costs what later ones do (false: load on first use)",
    )
    index_path: Path | None = Field(
        None, description="FAISS patch index for /explain (default: BUNDLE/index)"
    )
    drain_seconds: float = Field(
        15.0,
        ge=0,
        description="after SIGTERM: keep serving but fail /ready this long, so load balancers stop "
        "routing here first (a second SIGTERM ends the wait); then finish accepted requests and exit",
    )
    dicomweb_url: str | None = Field(
        None, description="DICOMweb root of the PACS that /answer and /explain may read from and store to"
    )
    dicomweb_auth_header: SecretStr | None = Field(
        None, description="Authorization header value sent to the PACS, e.g. 'Bearer abc'"
    )
    dicomweb_username: str | None = Field(None, description="HTTP basic user for the PACS")
    dicomweb_password: SecretStr | None = Field(None, description="HTTP basic password for the PACS")
    dicomweb_connect_timeout_s: float = Field(5.0, gt=0, description="PACS connect timeout (504 beyond)")
    dicomweb_timeout_s: float = Field(30.0, gt=0, description="PACS read timeout per request (504 beyond)")
    host: str = Field("127.0.0.1", description="bind address for `vital serve`")
    port: int = Field(8000, ge=1, le=65535, description="port for `vital serve`")
    log_level: str = Field("info", description="debug, info, warning, error")
    # Ray Serve (`vital serve --ray`, server/ray_app.py; docs/scaling.md). Read only there.
    ray_num_replicas: int | None = Field(
        None, ge=1, description="Ray Serve: a fixed number of replicas (unset: autoscale between min and max)"
    )
    ray_min_replicas: int = Field(1, ge=0, description="Ray Serve autoscaling: fewest replicas")
    ray_max_replicas: int = Field(4, ge=1, description="Ray Serve autoscaling: most replicas")
    ray_target_ongoing_requests: float = Field(
        8.0,
        gt=0,
        description="Ray Serve autoscaling: ongoing requests per replica the autoscaler aims for (one "
        "batch's worth at the default VITAL_MAX_BATCH_SIZE)",
    )
    ray_upscale_delay_s: float = Field(
        30.0,
        ge=0,
        description="Ray Serve autoscaling: load must stay above target this long to add a replica",
    )
    ray_downscale_delay_s: float = Field(
        300.0,
        ge=0,
        description="Ray Serve autoscaling: load must stay below target this long to remove one (Ray's own "
        "default is 600)",
    )
    ray_max_ongoing_requests: int = Field(
        32, ge=1, description="Ray Serve: requests one replica holds at once; more wait in Ray's router"
    )
    ray_num_gpus: float | None = Field(
        None,
        ge=0,
        description="Ray Serve: GPUs per replica (unset: 1 when the cluster has GPUs and VITAL_DEVICE is auto "
        "or cuda, else 0)",
    )
    ray_num_cpus: float = Field(1.0, ge=0, description="Ray Serve: CPUs per replica")
    ray_graceful_shutdown_s: float = Field(
        65.0,
        ge=0,
        description="Ray Serve: how long a stopping replica may finish its accepted requests before it is "
        "killed (Ray's graceful_shutdown_timeout_s; default VITAL_REQUEST_TIMEOUT_S + 5)",
    )
    ray_metrics_interval_s: float = Field(
        2.0, gt=0, description="Ray Serve: how often a replica copies its vital_* metrics to Ray's exporter"
    )

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str | None) -> str | None:
        if v is not None and v not in ("float32", "bfloat16", "float16"):
            raise ValueError("dtype must be float32, bfloat16 or float16")
        return v

    def resolved_device(self) -> str:
        """The torch device string to load onto."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
