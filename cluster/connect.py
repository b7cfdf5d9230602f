"""Connecting to Ray the way every tsa command does: a cluster that cannot be reached, or that
refuses us (token authentication), is one line within seconds, before anything is written,
where `ray.init` would retry for minutes or end in a traceback.

`tsa preprocess`, `tsa train` and `tsa sample --workers` all connect through it; it imports
Ray only when called.
"""
from __future__ import annotations

import contextlib
import os
import socket
from typing import Any, Optional

CONNECT_TIMEOUT_S = 10.0
TOKEN_HINT = ("set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token")


class RayConnectError(RuntimeError):
    """The Ray cluster cannot be reached or refuses this client; the message is one line."""


def reachable(address: str) -> Optional[str]:
    """For HOST:PORT, None when a TCP connection opens within CONNECT_TIMEOUT_S, else why not
    (ray.init would retry for minutes)."""
    host, _, port = address.rpartition(":")
    if address.startswith(("ray://", "http://", "https://")) or not host or not port.isdigit():
        return None
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        return f"{type(e).__name__}: {e.strerror or e}"
    return None


def refused(address: str) -> Optional[str]:
    """One direct GCS request (milliseconds): why the cluster refuses us (a token it does not
    accept), or None. ray.init would retry for ~20 s and then report only a ConnectionError."""
    if address.startswith(("ray://", "http://", "https://")):
        return None
    try:
        from ray._raylet import GcsClient

        with _native_stderr_silenced():  # its C++ client logs the refusal too, as a raw line
            GcsClient(address=address).cluster_id
    except Exception as e:  # noqa: BLE001 (only an authentication refusal is decided here)
        if "Authentication" in type(e).__name__:
            first = str(e).split(". ")[0]
            return f"{type(e).__name__}: {first}; for a token-authenticated cluster {TOKEN_HINT}"
    return None


@contextlib.contextmanager
def _native_stderr_silenced():
    """fd 2 to /dev/null for the duration (native code writes there directly)."""
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_ray_loggers() -> None:
    """Ray's token-auth notice is advice for cluster admins, not for this run's output."""
    import logging

    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


def connect(address: Optional[str], *, runtime_env: Optional[dict[str, Any]] = None,
            local_env: Optional[dict[str, str]] = None, **init_kwargs) -> bool:
    """Connect to (or start) Ray; True when this call started it (the caller shuts it down).
    `address` None: RAY_ADDRESS (set by `ray job submit`) or a new local Ray, never a `ray start`
    cluster that happens to run on this machine (ray.init()'s own default). Raises
    RayConnectError (one line) when the cluster cannot be reached or refuses us.

    `runtime_env`: for this job's workers, except under RAY_ADDRESS alone (`ray job submit`):
    a submitted job keeps the runtime_env it was submitted with. `local_env`: environment
    variables only for a Ray this call starts on this machine (the machine's TSA_CACHE): a
    cluster's workers keep theirs (this machine's paths need not exist there)."""
    import ray

    if ray.is_initialized():
        return False
    quiet_ray_loggers()
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    if address is None and target != "local":
        runtime_env = None
    if target == "local" and local_env:
        runtime_env = dict(runtime_env or {})
        runtime_env["env_vars"] = {**local_env, **runtime_env.get("env_vars", {})}
    named = f"--ray-address {address}" if address else f"RAY_ADDRESS={target}"
    if target not in ("auto", "local"):
        why = reachable(target) or refused(target)
        if why:
            raise RayConnectError(f"{named}: cannot reach the Ray cluster ({why})")
    try:
        ray.init(address=target, include_dashboard=False, configure_logging=False, runtime_env=runtime_env,
                 **init_kwargs)
    except Exception as e:  # AuthenticationError, ConnectionError, a wrong address: one clear line each
        ray.shutdown()
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        # Ray reports a refused token as AuthenticationError, or (after ~20 s of retries) as a
        # ConnectionError whose cause is only in its native log lines.
        hint = f" (if the cluster uses token authentication: {TOKEN_HINT})" \
            if "auth" in f"{type(e).__name__} {e}".lower() or (target != "local" and isinstance(e, ConnectionError)) \
            else ""
        where = named if target != "local" else "a local Ray"
        raise RayConnectError(f"{where}: cannot connect to Ray: {type(e).__name__}: {first[:300]}{hint}") from None
    return True
