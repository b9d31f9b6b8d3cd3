"""Replicas of `splice serve` on loopback behind HAProxy, sharing one Redis: started by one
command, for the failover tests, the load benchmark and a local try of the deployment.

    splice bench cluster --model PATH --redis redis://127.0.0.1:6379/0 --replicas 2 --port 8600

HAProxy (the Debian package) listens on `--port` and routes:
- an editor's WebSocket stays on the replica it connected to while the connection lives (all
  of that editor's documents live there; a reconnect re-opens them wherever it lands, and the
  replica rebuilds them from Redis);
- a REST call with `X-Splice-Document: <uri>` goes to the replica that uri hashes to (consistent
  hashing: a document's KV cache is reused while its replica lives; a replica that goes down moves
  only its own documents); without the header, round robin;
- health checks on `/v1/health` every 500 ms take a dead replica out after two failures; a
  connection refused by a dead replica is retried on another (`option redispatch`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from splice.bench.server import free_port, wait_healthy

HAPROXY_CONFIG = """\
global
    maxconn 8192
    log stderr format short local0 warning

defaults
    mode http
    log global
    option redispatch
    retries 3
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    timeout http-keep-alive 10s

frontend splice
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance hdr(X-Splice-Document)
    hash-type consistent
    option httpchk GET /v1/health
    http-check expect status 200
    default-server check inter 500ms fall 2 rise 2
{servers}
"""


def haproxy_config(port: int, replicas: list[tuple[str, int]]) -> str:
    servers = "\n".join(f"    server {name} 127.0.0.1:{p}" for name, p in replicas)
    return HAPROXY_CONFIG.format(port=port, servers=servers)


@dataclass
class Replica:
    """One `splice serve` process; `kill()` is kill -9, `start()` (re)starts it on its port."""

    name: str
    model: str
    port: int
    env: dict[str, str]
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self, wait: bool = True, timeout: float = 300.0) -> None:
        cmd = [sys.executable, "-m", "splice.assistant", "serve", "--model", self.model]
        cmd += ["--port", str(self.port), "--device", "cpu"]
        env = {**os.environ, **self.env, "SPLICE_REPLICA_ID": self.name}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        if wait:
            self.wait(timeout)

    def wait(self, timeout: float = 300.0) -> None:
        wait_healthy(self.url, timeout, self.proc, self.log)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Cluster:
    url: str  # HAProxy's
    replicas: list[Replica]
    workdir: Path
    haproxy: subprocess.Popen[bytes] | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/v1/documents"


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).is_file()), None
    )


@contextmanager
def cluster(
    model: str,
    redis_url: str,
    replicas: int = 2,
    port: int | None = None,
    env: dict[str, str] | None = None,
    workdir: Path | None = None,
) -> Iterator[Cluster]:
    """`replicas` servers of `model` on `redis_url` behind HAProxy; everything stops on exit."""
    binary = haproxy_binary()
    if binary is None:
        raise RuntimeError("haproxy is not installed (Debian/Ubuntu: apt-get install haproxy)")
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="splice-cluster-")
        workdir = Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    base = {"SPLICE_REDIS_URL": redis_url, **(env or {})}
    nodes = [Replica(f"r{i}", model, free_port(), base, workdir) for i in range(replicas)]
    front = port or free_port()
    config = workdir / "haproxy.cfg"
    config.write_text(haproxy_config(front, [(r.name, r.port) for r in nodes]))
    check = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"haproxy rejects {config}:\n{check.stdout}{check.stderr}")
    proxy = None
    try:
        for node in nodes:  # one at a time: two model loads at once only compete for the cores
            node.start()
        log = (workdir / "haproxy.log").open("ab")
        proxy = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_healthy(f"http://127.0.0.1:{front}", 30, proxy, workdir / "haproxy.log")
        yield Cluster(f"http://127.0.0.1:{front}", nodes, workdir, proxy)
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(timeout=10)
        for node in nodes:
            node.stop()
        if tmp is not None:
            tmp.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="splice bench cluster",
        description="Start N `splice serve` replicas sharing Redis behind HAProxy, until Ctrl-C.",
    )
    parser.add_argument("--model", required=True, help="model folder, GGUF file or hub id (as for serve)")
    parser.add_argument("--redis", default=os.environ.get("SPLICE_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--port", type=int, default=8600, help="HAProxy's port (default 8600)")
    parser.add_argument("--workdir", type=Path, help="logs and haproxy.cfg (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.replicas < 1:
        parser.error("--replicas must be at least 1")
    try:
        with cluster(args.model, args.redis, args.replicas, args.port, workdir=args.workdir) as c:
            print(f"HAProxy on {c.url} (editors: {c.ws_url}), config and logs in {c.workdir}")
            for node in c.replicas:
                print(f"  replica {node.name}: {node.url} (pid {node.proc.pid if node.proc else '-'})")
            print("Ctrl-C stops everything.", flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    except RuntimeError as exc:
        print(f"splice bench cluster: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
