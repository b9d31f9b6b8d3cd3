"""Redis as the service's state store (`splice serve --redis URL`): documents, telemetry events and
the repository registry, shared by every replica, so that a restarted or second replica rebuilds
any document from Redis. KV caches stay in each replica's memory.

Keys (all under `splice:`, or SPLICE_REDIS_PREFIX for deployments sharing a server; tenant
names are length-prefixed so that no tenant can forge another's key):

- `splice:doc:<len>:<tenant>:<uri>` a hash: text, version, language, removed, refs.
  A change is applied in Python (UTF-16 positions, all-or-nothing) to the text read from Redis and
  written back by a Lua compare-and-set on the version: two replicas can never apply the same
  version twice or out of order; the loser re-reads and answers the version gap.
- `splice:events:<len>:<tenant>` a stream per tenant (XADD MAXLEN ~), and `splice:event-counts`.
- `splice:repositories` a hash of registrations (JSON per tenant and path) and
  `splice:repository-status` the last status each replica saw of each index.

Durability: an edit is written before the server answers anything that depends on it (the next
`get`, `complete` or resync reads what the write left). Whether it survives a Redis restart is
Redis's AOF setting: `appendonly yes` with `appendfsync always` makes the write durable before
Redis acknowledges it; `splice serve --redis` logs a warning when the server is not set up so.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio as aioredis

from splice.assistant.documents import (
    Change,
    Document,
    DocumentTooLarge,
    UnknownDocument,
    VersionGap,
    apply_changes,
    check_text,
    last_removed,
)
from splice.assistant.events import CompletionEvent
from splice.assistant.repositories import registered_repositories
from splice.completion.token_edits import TextEdit

if TYPE_CHECKING:
    from splice.assistant.repositories import Repository
    from splice.assistant.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "splice:"

# KEYS[1] the document; ARGV: expected version, new version, text, removed.
# Returns 1 when written, else the version Redis holds (0: no such document).
_CAS = """
local current = redis.call('HGET', KEYS[1], 'version')
if not current then return 0 end
if tonumber(current) ~= tonumber(ARGV[1]) then return tonumber(current) end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'text', ARGV[3], 'removed', ARGV[4])
return -1
"""

# KEYS[1] the document: one holder less; the document goes with the last one.
_RELEASE = """
local refs = redis.call('HINCRBY', KEYS[1], 'refs', -1)
if refs <= 0 then redis.call('DEL', KEYS[1]) end
return refs
"""


def _str(value: object) -> str:
    """A reply field as text (clients here decode replies; bytes only from a foreign client)."""
    if value is None:
        return ""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def scoped(prefix: str, kind: str, tenant: str, name: str = "") -> str:
    """`<prefix><kind>:<len(tenant)>:<tenant>[:<name>]`: unambiguous for any tenant and name."""
    key = f"{prefix}{kind}:{len(tenant)}:{tenant}"
    return f"{key}:{name}" if name else key


def check_durability(client: redis.Redis) -> str | None:
    """A warning when the Redis server would lose acknowledged edits on its own restart."""
    try:
        config: dict[str, str] = client.config_get("append*")  # type: ignore[assignment]
    except redis.ResponseError:  # CONFIG disabled (managed Redis): nothing to check
        return None
    if config.get("appendonly") != "yes":
        return "Redis runs without AOF (appendonly no): documents survive a replica's restart, not Redis's"
    if config.get("appendfsync") != "always":
        return (
            f"Redis fsyncs its AOF {config.get('appendfsync')!r}: a crash of Redis itself may lose "
            "the last second of edits (appendfsync always makes every edit durable)"
        )
    return None


class RedisDocumentStore:
    """`DocumentStore` in Redis, shared by replicas; reference counts count holders on all of them.
    The client decodes replies (`decode_responses=True`), as every client here does."""

    def __init__(
        self,
        client: aioredis.Redis,
        max_chars: int = 4 << 20,
        ttl_s: int = 7 * 24 * 3600,
        prefix: str = PREFIX,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.max_chars = max_chars
        self.ttl_s = ttl_s  # a document no replica touches for this long goes (crashed holders)
        self._cas = client.register_script(_CAS)
        self._release = client.register_script(_RELEASE)
        self._count = 0

    def __len__(self) -> int:
        """Documents this replica opened and has not closed (for the gauge; Redis holds the rest)."""
        return self._count

    async def open(
        self, tenant: str, uri: str, language_id: str, version: int, text: str, *, new_holder: bool = True
    ) -> Document:
        check_text(text)
        self._check_size(text)
        key = scoped(self.prefix, "doc", tenant, uri)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"text": text, "version": version, "language": language_id, "removed": ""})
            if new_holder:
                pipe.hincrby(key, "refs", 1)
            else:
                pipe.hsetnx(key, "refs", 1)
            pipe.expire(key, self.ttl_s)
            await pipe.execute()
        if new_holder:
            self._count += 1
        return Document(tenant, uri, language_id, version, text)

    async def get(self, tenant: str, uri: str) -> Document:
        raw = await self.client.hmget(
            scoped(self.prefix, "doc", tenant, uri), ["text", "version", "language", "removed"]
        )
        if raw[1] is None:
            raise UnknownDocument(f"document {uri!r} is not open")
        text, version, language, removed = (_str(v) for v in raw)
        return Document(tenant, uri, language, int(version), text, removed)

    async def hold(self, tenant: str, uri: str) -> Document:
        """One more holder of a document that is in Redis already (an editor resuming it)."""
        doc = await self.get(tenant, uri)
        await self.client.hincrby(scoped(self.prefix, "doc", tenant, uri), "refs", 1)
        self._count += 1
        return doc

    async def change(
        self, tenant: str, uri: str, version: int, changes: list[Change]
    ) -> tuple[Document, list[TextEdit]]:
        for _ in range(8):  # each retry follows a write by another replica
            doc = await self.get(tenant, uri)
            if version != doc.version + 1:
                raise VersionGap(doc.version + 1, version)
            text, edits = apply_changes(doc.text, changes)
            self._check_size(text)
            removed = last_removed(doc.text, edits, doc.removed)
            key = scoped(self.prefix, "doc", tenant, uri)
            written = await self._cas(keys=[key], args=[doc.version, version, text, removed])
            if written == -1:
                await self.client.expire(key, self.ttl_s)
                return Document(tenant, uri, doc.language_id, version, text, removed), edits
            if written == 0:
                raise UnknownDocument(f"document {uri!r} is not open")
        raise VersionGap(doc.version + 1, version)

    async def close(self, tenant: str, uri: str) -> None:
        key = scoped(self.prefix, "doc", tenant, uri)
        if not await self.client.exists(key):
            raise UnknownDocument(f"document {uri!r} is not open")
        await self._release(keys=[key])
        self._count = max(0, self._count - 1)

    def _check_size(self, text: str) -> None:
        if len(text) > self.max_chars:
            raise DocumentTooLarge(
                f"document has {len(text)} characters, more than the limit of {self.max_chars}"
            )


class RedisEventStore:
    """Telemetry events in one Redis stream per tenant (bounded), readable later as training data."""

    def __init__(self, client: aioredis.Redis, maxlen: int = 10_000, prefix: str = PREFIX) -> None:
        self.client = client
        self.maxlen = maxlen
        self.prefix = prefix

    async def record(self, event: CompletionEvent) -> None:
        fields: dict[Any, Any] = {k: json.dumps(v) for k, v in asdict(event).items()}
        async with self.client.pipeline(transaction=False) as pipe:
            stream = scoped(self.prefix, "events", event.tenant)
            pipe.xadd(stream, fields, maxlen=self.maxlen, approximate=True)
            pipe.hincrby(f"{self.prefix}event-counts", event.type, 1)
            await pipe.execute()

    async def counts(self) -> dict[str, int]:
        raw = await self.client.hgetall(f"{self.prefix}event-counts")
        return {_str(k): int(v) for k, v in raw.items()}

    async def recent(self, tenant: str, limit: int = 100) -> list[CompletionEvent]:
        rows = await self.client.xrevrange(scoped(self.prefix, "events", tenant), count=limit)
        out = [
            CompletionEvent(**{_str(k): json.loads(v) for k, v in (fields or {}).items()})
            for _, fields in rows or []
        ]
        return out[::-1]


class RedisRegistryStore:
    """The repository registry in Redis (every replica reopens the same repositories), plus the
    entries `splice index` wrote on this machine (its JSON file under SPLICE_HOME)."""

    def __init__(self, client: redis.Redis, home: Path, replica: str, prefix: str = PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self.home = home
        self.replica = replica

    def entries(self) -> list[dict[str, Any]]:
        raw = self.client.hvals(f"{self.prefix}repositories")
        stored = [json.loads(v) for v in raw]
        local = [e for e in registered_repositories(self.home) if e.get("origin") == "cli"]
        return [e for e in stored if isinstance(e, dict) and isinstance(e.get("path"), str)] + local

    def record(self, tenant: str, root: Path, languages: list[str] | None, origin: str) -> None:
        entry = {"path": str(root), "languages": languages, "origin": origin, "tenant": tenant}
        self.client.hset(
            f"{self.prefix}repositories", scoped(self.prefix, "repo", tenant, str(root)), json.dumps(entry)
        )

    def status(self, repo: Repository) -> None:
        value = {
            "replica": self.replica,
            "status": repo.status,
            "done": repo.done,
            "total": repo.total,
            "error": repo.error,
            "at": time.time(),
        }
        self.client.hset(
            f"{self.prefix}repository-status",
            scoped(self.prefix, "repo", repo.tenant, f"{repo.id}:{self.replica}"),
            json.dumps(value),
        )


class RedisUnavailable(RuntimeError):
    """`--redis` names a server that does not answer."""


@dataclass
class RedisStores:
    documents: RedisDocumentStore
    events: RedisEventStore
    registry: RedisRegistryStore
    client: aioredis.Redis
    sync_client: redis.Redis

    async def close(self) -> None:
        await self.client.aclose()
        self.sync_client.close()


def ping(url: str) -> redis.Redis:
    """A client of `url` that answered PING; RedisUnavailable (with the URL) when it does not."""
    try:
        sync_client = redis.Redis.from_url(
            url, socket_connect_timeout=5, socket_timeout=10, decode_responses=True
        )
        sync_client.ping()
    except ValueError as exc:  # not a redis:// URL
        raise RedisUnavailable(f"invalid Redis URL {url!r}: {exc}") from exc
    except (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError) as exc:
        raise RedisUnavailable(f"cannot reach Redis at {url}: {exc}") from exc
    return sync_client


def connect(settings: Settings) -> RedisStores:
    """The stores of `settings.redis_url`; RedisUnavailable when it does not answer."""
    url = settings.redis_url
    sync_client = ping(url)
    warning = check_durability(sync_client)
    if warning:
        log.warning("%s", warning)
    client = aioredis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10, decode_responses=True)
    prefix = settings.redis_prefix
    replica = settings.replica_id or f"{socket.gethostname()}:{settings.port}"
    return RedisStores(
        documents=RedisDocumentStore(client, max_chars=settings.ws_max_message_bytes, prefix=prefix),
        events=RedisEventStore(client, maxlen=settings.events_kept, prefix=prefix),
        registry=RedisRegistryStore(sync_client, settings.home, replica, prefix=prefix),
        client=client,
        sync_client=sync_client,
    )
