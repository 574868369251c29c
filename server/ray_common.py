"""What `vital serve --ray` and `vital batch --ray` share: connecting to a Ray cluster without hanging.

Ray is the optional extra `.[ray]`; this module imports it only inside `connect`.
"""

from __future__ import annotations

import socket

from vital_core.cli import CLIError


def connect(address: str, flag: str = "--ray"):
    """`ray.init(address=...)` for a `--ray` option (never for a local run: an inherited RAY_ADDRESS must not
    matter). Returns the `ray` module."""
    try:
        import ray
    except ImportError:
        raise CLIError(f"{flag} needs Ray, the optional extra: pip install -e '.[ray]'") from None
    check_reachable(address, flag)
    try:
        ray.init(address=address, log_to_driver=False)
    except Exception as exc:  # ConnectionError, an auth token mismatch, a bad address, ...
        raise CLIError(f"{flag} {address}: cannot connect to the Ray cluster: {exc}") from exc
    return ray


def check_reachable(address: str, flag: str = "--ray", timeout: float = 5.0) -> None:
    """A HOST:PORT address must accept a TCP connection: `ray.init` would otherwise wait for it for many
    minutes (measured: over 10 min for a closed port, and it ignores SIGTERM meanwhile)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # auto, local, or an address form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise CLIError(
            f"{flag} {address}: nothing accepts connections there ({exc}); is the cluster up?"
        ) from exc
