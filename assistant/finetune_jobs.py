"""Fine-tune jobs: a tenant asks for an adapter trained on one of its repositories; a worker runs
`training.team.run_team_job`, and the gate decides whether the result becomes the tenant's adapter.

Jobs belong to their tenant (another tenant's id is a 404). States: queued -> running ->
succeeded (registered) | rejected (the gate said it is not better) | failed | cancelled.

Where jobs run:
- without Redis, in the server's process: one background thread takes them in order;
- with Redis (`--redis`), in `splice worker` processes: the server adds the job id to a Redis
  stream, workers read it through a consumer group (XREADGROUP), and acknowledge it once the job
  reached a final state. A worker killed mid-job leaves the entry pending; another worker (or the
  same one restarted) claims it after `claim_idle_s` (XAUTOCLAIM) and the job resumes from its
  last checkpoint (the job's folder under SPLICE_HOME/jobs is its `out`).
Job records live in Redis hashes (or in memory), so any replica answers GET for any job.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, cast

from splice.assistant.adapter_registry import AdapterRegistry
from splice.assistant.settings import Settings

log = logging.getLogger(__name__)

FINAL = ("succeeded", "rejected", "failed", "cancelled")
ACCEPTED = "accepted.jsonl"  # in the job's folder: the tenant's accepted completions when it was created


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class FineTuneJob:
    id: str
    tenant: str
    repository: str  # the tenant's repository id
    repo_path: str
    method: str = "lora"
    max_steps: int = 200
    time_limit_s: float | None = None
    lintseq: bool = True
    history: bool = True
    state: str = "queued"
    phase: str = ""
    step: int = 0
    loss: float | None = None
    eta_s: float | None = None
    gate: dict[str, Any] | None = None
    data: dict[str, Any] | None = None  # what it trained on: files, held-out files, sample counts
    adapter: str | None = None
    error: str | None = None
    cancel_requested: bool = False
    attempts: int = 0
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        for private in ("tenant", "repo_path", "cancel_requested"):
            data.pop(private)
        return data


class JobStore(Protocol):
    def create(self, job: FineTuneJob) -> None: ...
    def get(self, job_id: str) -> FineTuneJob | None: ...
    def list(self, tenant: str) -> list[FineTuneJob]: ...
    def update(self, job_id: str, **fields: Any) -> FineTuneJob | None: ...


class MemoryJobStore:
    def __init__(self) -> None:
        self._jobs: dict[str, FineTuneJob] = {}
        self._lock = threading.Lock()

    def create(self, job: FineTuneJob) -> None:
        with self._lock:
            self._jobs[job.id] = job

    def get(self, job_id: str) -> FineTuneJob | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else FineTuneJob(**asdict(job))

    def list(self, tenant: str) -> list[FineTuneJob]:
        with self._lock:
            return [FineTuneJob(**asdict(j)) for j in self._jobs.values() if j.tenant == tenant]

    def update(self, job_id: str, **fields: Any) -> FineTuneJob | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            for key, value in fields.items():
                setattr(job, key, value)
            job.updated_at = _now()
            return FineTuneJob(**asdict(job))


class RedisJobStore:
    """Job records as JSON in `<prefix>finetune:job:<id>`, each tenant's ids in a set; the queue
    is the stream `<prefix>finetune:queue` read by the consumer group `workers`."""

    GROUP = "workers"

    def __init__(self, url: str, prefix: str) -> None:
        import redis

        self.redis = redis.Redis.from_url(url, decode_responses=True)
        self.prefix = prefix
        self.stream = f"{prefix}finetune:queue"
        try:
            self.redis.xgroup_create(self.stream, self.GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:  # BUSYGROUP: it exists
            if "BUSYGROUP" not in str(exc):
                raise

    def _key(self, job_id: str) -> str:
        return f"{self.prefix}finetune:job:{job_id}"

    def create(self, job: FineTuneJob) -> None:
        pipe = self.redis.pipeline()
        pipe.set(self._key(job.id), json.dumps(asdict(job)))
        pipe.sadd(f"{self.prefix}finetune:tenant:{job.tenant}", job.id)
        pipe.execute()

    def get(self, job_id: str) -> FineTuneJob | None:
        raw = self.redis.get(self._key(job_id))
        return None if raw is None else FineTuneJob(**json.loads(raw))

    def list(self, tenant: str) -> list[FineTuneJob]:
        ids = sorted(str(i) for i in cast(Any, self.redis.smembers(f"{self.prefix}finetune:tenant:{tenant}")))
        jobs = [self.get(i) for i in ids]
        return sorted((j for j in jobs if j is not None), key=lambda j: j.created_at)

    def update(self, job_id: str, **fields: Any) -> FineTuneJob | None:
        import redis

        key = self._key(job_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        return None
                    data = json.loads(raw)
                    data.update(fields, updated_at=_now())
                    pipe.multi()
                    pipe.set(key, json.dumps(data))
                    pipe.execute()
                    return FineTuneJob(**data)
                except redis.WatchError:
                    continue

    def enqueue(self, job_id: str) -> None:
        self.redis.xadd(self.stream, {"job": job_id})

    def take(self, consumer: str, block_ms: int, claim_idle_s: float) -> tuple[str, str] | None:
        """(entry id, job id): first an entry a dead worker left pending, else a new one."""
        claimed: Any = self.redis.xautoclaim(
            self.stream, self.GROUP, consumer, min_idle_time=int(claim_idle_s * 1000), start_id="0-0", count=1
        )
        entries = claimed[1] if claimed else []
        if entries:
            entry_id, data = entries[0]
            return entry_id, data["job"]
        got: Any = self.redis.xreadgroup(self.GROUP, consumer, {self.stream: ">"}, count=1, block=block_ms)
        if not got:
            return None
        entry_id, data = got[0][1][0]
        return entry_id, data["job"]

    def ack(self, entry_id: str) -> None:
        self.redis.xack(self.stream, self.GROUP, entry_id)

    def close(self) -> None:
        self.redis.close()


def new_job_id() -> str:
    return f"ft-{uuid.uuid4().hex[:16]}"


def execute(
    job_id: str, store: JobStore, settings: Settings, adapters: AdapterRegistry
) -> FineTuneJob | None:
    """Run (or resume) one job to a final state. Safe to call again for a job a dead worker left."""
    from splice.training.team import Cancelled, TeamJobSpec, run_team_job

    job = store.get(job_id)
    if job is None or job.state in FINAL:
        return job
    if job.cancel_requested:
        return store.update(job_id, state="cancelled", phase="")
    out = settings.home / "jobs" / job.id
    current = adapters.current(job.tenant)
    job = store.update(job_id, state="running", attempts=job.attempts + 1) or job
    started = time.monotonic()
    last = {"write": 0.0, "check": 0.0, "cancel": False}

    def progress(p: dict[str, Any]) -> None:
        now = time.monotonic()
        fields: dict[str, Any] = {"phase": p.get("phase", "")}
        if p.get("phase") == "train":
            step, total = int(p["step"]), int(p["max_steps"])
            fields.update(step=step, loss=round(float(p["loss"]), 4))
            if step:
                fields["eta_s"] = round((now - started) / step * (total - step), 1)
        final_step = p.get("phase") == "train" and p["step"] == p["max_steps"]
        if now - last["write"] >= 0.5 or p.get("phase") != "train" or final_step:
            last["write"] = now
            store.update(job_id, **fields)

    def should_stop() -> bool:
        now = time.monotonic()
        if now - last["check"] >= 0.5:
            last["check"] = now
            fresh = store.get(job_id)
            last["cancel"] = bool(fresh is None or fresh.cancel_requested)
        return bool(last["cancel"])

    spec = TeamJobSpec(
        repo=job.repo_path,
        out=str(out),
        model=settings.model,
        base_adapter=settings.adapter,
        method=job.method,
        max_steps=job.max_steps,
        time_limit_s=job.time_limit_s,
        use_lintseq=job.lintseq,
        use_history=job.history,
        current_adapter=str(current.folder) if current is not None else None,
        accepted=str(out / ACCEPTED),
        device=settings.device,
        **settings.finetune_overrides(),
    )
    try:
        report = run_team_job(spec, progress=progress, should_stop=should_stop)
    except Cancelled:
        shutil.rmtree(out / "train", ignore_errors=True)
        return store.update(job_id, state="cancelled", phase="")
    except Exception as exc:  # a job's failure is the job's state, never the worker's death
        log.exception("fine-tune job %s failed", job_id)
        return store.update(job_id, state="failed", phase="", error=f"{type(exc).__name__}: {exc}")
    if report["state"] != "trained":
        return store.update(job_id, state="queued", phase="interrupted")
    gate = report["gate"]
    if not gate["beats_current"]:
        return store.update(job_id, state="rejected", phase="", gate=gate, data=report["data"], eta_s=0.0)
    record = adapters.register(
        job.tenant, Path(report["adapter"]), label=f"{Path(job.repo_path).name}-{job.method}"
    )
    return store.update(
        job_id, state="succeeded", phase="", gate=gate, data=report["data"], adapter=record.id, eta_s=0.0
    )


class InlineRunner:
    """Without Redis: the server's own background thread runs the jobs, in order."""

    def __init__(self, store: JobStore, settings: Settings, adapters: AdapterRegistry) -> None:
        self.store, self.settings, self.adapters = store, settings, adapters
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="splice-finetune", daemon=True)
        self._thread.start()

    def enqueue(self, job_id: str) -> None:
        self._queue.put(job_id)

    def _run(self) -> None:
        while (job_id := self._queue.get()) is not None:
            execute(job_id, self.store, self.settings, self.adapters)

    def close(self) -> None:
        self._queue.put(None)


def run_worker(
    settings: Settings,
    *,
    consumer: str | None = None,
    claim_idle_s: float = 60.0,
    once: bool = False,
    should_exit: Callable[[], bool] = lambda: False,
) -> int:
    """`splice worker`: take jobs from Redis until stopped; returns the number of jobs run."""
    if not settings.redis_url:
        raise ValueError("splice worker needs Redis: --redis URL or SPLICE_REDIS_URL")
    store = RedisJobStore(settings.redis_url, settings.redis_prefix)
    adapters = AdapterRegistry(settings.home)
    name = consumer or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    done = 0
    log.info("worker %s waiting for fine-tune jobs on %s", name, store.stream)
    try:
        while not should_exit():
            taken = store.take(name, block_ms=1000, claim_idle_s=claim_idle_s)
            if taken is None:
                continue
            entry_id, job_id = taken
            log.info("worker %s: job %s", name, job_id)
            job = execute(job_id, store, settings, adapters)
            if job is None or job.state in FINAL:
                store.ack(entry_id)
            done += 1
            if once:
                break
    finally:
        store.close()
    return done
