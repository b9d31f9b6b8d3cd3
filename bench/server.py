"""Start the real `splice serve` as a subprocess on a free port and wait until it answers (the
benchmarks that measure the service from outside, and the integration tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(
    url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None
) -> None:
    """Wait until `url`/v1/health answers 200; RuntimeError with the log's tail if `proc` exits
    or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-4000:] if log is not None else ""
            raise RuntimeError(f"server exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/v1/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            tail = log.read_text()[-4000:] if log is not None else ""
            raise RuntimeError(f"{url} did not answer in {timeout} s:\n{tail}")
        time.sleep(0.1)


@contextmanager
def running_server(
    model: str, *, env: dict[str, str] | None = None, device: str = "cpu", startup_timeout: float = 300.0
) -> Iterator[str]:
    """Yield the base URL of a live server; its log is shown if it fails to start."""
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="splice-serve-", suffix=".log", delete=False)  # noqa: SIM115
    cmd = [
        sys.executable,
        "-m",
        "splice.assistant",
        "serve",
        "--model",
        model,
        "--port",
        str(port),
        "--device",
        device,
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, startup_timeout, proc, Path(log.name))
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        os.unlink(log.name)
