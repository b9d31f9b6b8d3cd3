"""Repositories the service knows: registration (inside an allow-list of roots), background
indexing with progress, editor buffers feeding the index, and context for completions.

Every repository belongs to the tenant that registered it: its id, index (which follows that
tenant's unsaved editor buffers), search and completion context are that tenant's alone, and
another tenant's id answers 404 like an id that does not exist. Two tenants that register the same
folder get two registrations and two indexes.

The registry itself (what is registered, by whom, and each index's status) is kept by a
`RegistryStore`: a JSON file under SPLICE_HOME by default, Redis with `--redis` so that every
replica reopens the same repositories.

Security: a path is accepted only when, after resolving symlinks and `..`, it lies inside one of
`SPLICE_REPOSITORY_ROOTS`; with no roots configured, registration is refused. Files the walker
treats as secret (`.env`, keys, credential patterns) are never indexed, so never returned.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from splice.assistant.auth import DEFAULT_TENANT
from splice.assistant.errors import ApiError
from splice.retrieval.context import (
    ContextAssembler,
    ContextSlots,
    RenderStyle,
    Snippet,
    render_context,
    render_snippet,
)
from splice.retrieval.files import WalkConfig, check_path
from splice.retrieval.indexer import IndexReport, RepositoryIndex, default_index_dir
from splice.retrieval.languages import FAMILIES, expand_languages, language_for_path

log = logging.getLogger(__name__)

REGISTRY_FILE = "repositories.json"


@dataclass
class Repository:
    tenant: str
    id: str
    root: Path
    languages: list[str] | None
    index: RepositoryIndex
    status: str = "queued"  # queued | indexing | ready | failed
    done: int = 0
    total: int = 0
    error: str = ""
    report: IndexReport | None = None
    started_at: float = 0.0
    finished_at: float = 0.0
    git_token: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "path": str(self.root),
            "languages": self.languages,
            "status": self.status,
            "progress": {"done": self.done, "total": self.total},
            "error": self.error or None,
            "index": self.index.store.counts(),
            "last_index": self.report.as_dict() if self.report else None,
            "started_at": self.started_at or None,
            "finished_at": self.finished_at or None,
        }


def parse_roots(value: str) -> list[Path]:
    """`SPLICE_REPOSITORY_ROOTS`: absolute folders separated by commas or the path separator."""
    roots = []
    for part in value.replace(";", ",").replace(":", ",").split(","):
        part = part.strip()
        if part:
            roots.append(Path(part).expanduser().resolve())
    return roots


def file_uri_path(uri: str) -> Path | None:
    """The local path of a `file://` URI (None for other schemes)."""
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return None
    return Path(unquote(parsed.path))


def tenant_index_dir(root: Path, home: Path, tenant: str) -> Path:
    """Where `tenant`'s index of `root` lives: the default tenant shares `splice index`'s
    `<home>/indexes/<name>-<hash>`; any other tenant has its own folder (and its own repository
    id, the folder's name), so that its unsaved buffers never reach another tenant's index."""
    base = default_index_dir(root, home)
    if tenant == DEFAULT_TENANT:
        return base
    digest = hashlib.sha1(tenant.encode()).hexdigest()[:8]
    return home / "indexes" / "tenants" / tenant_dir_name(tenant) / f"{base.name}-{digest}"


def tenant_dir_name(tenant: str) -> str:
    """A folder name for `tenant`'s files: readable, and distinct for distinct tenants."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", tenant)[:48]
    return f"{safe}-{hashlib.sha1(tenant.encode()).hexdigest()[:8]}"


def registered_repositories(home: Path) -> list[dict[str, Any]]:
    """The entries of `<home>/indexes/repositories.json` (empty when absent or unreadable)."""
    path = home / "indexes" / REGISTRY_FILE
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return []
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("path"), str)]


def record_repository(
    home: Path, root: Path, languages: list[str] | None, origin: str, tenant: str = DEFAULT_TENANT
) -> None:
    """Add (or update) `root` for `tenant` in the registry file that `splice serve` reopens at
    start. `origin` is "cli" (`splice index`, trusted) or "api" (checked against the allowed roots
    again)."""
    path = home / "indexes" / REGISTRY_FILE
    entries = registered_repositories(home)
    same = [e for e in entries if e["path"] == str(root) and e.get("tenant", DEFAULT_TENANT) == tenant]
    if any(e.get("origin") == "cli" for e in same):
        origin = "cli"  # the operator's `splice index` stays trusted
    entries = [e for e in entries if not any(e is x for x in same)]
    entries.append({"path": str(root), "languages": languages, "origin": origin, "tenant": tenant})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(entries, indent=2))
    tmp.replace(path)


class RegistryStore(Protocol):
    """Where the registry lives: what is registered (path, languages, origin, tenant) and the
    last known status of each index."""

    def entries(self) -> list[dict[str, Any]]: ...

    def record(self, tenant: str, root: Path, languages: list[str] | None, origin: str) -> None: ...

    def status(self, repo: Repository) -> None: ...


class FileRegistryStore:
    """`<home>/indexes/repositories.json`, shared with `splice index` (statuses stay in memory)."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def entries(self) -> list[dict[str, Any]]:
        return registered_repositories(self.home)

    def record(self, tenant: str, root: Path, languages: list[str] | None, origin: str) -> None:
        record_repository(self.home, root, languages, origin, tenant)

    def status(self, repo: Repository) -> None:
        pass


class RepositoryRegistry:
    def __init__(
        self,
        home: Path,
        roots: list[Path],
        token_counter: Callable[[str], int],
        file_sep: str | None = None,
        context_tokens: int = 512,
        refresh_interval_s: float = 10.0,
        context_snippets: int = 5,
        commented: bool = False,
        store: RegistryStore | None = None,
    ) -> None:
        self.home = home
        self.roots = roots
        self.count_tokens = token_counter
        self.file_sep = file_sep
        self.context_tokens = context_tokens
        self.refresh_interval_s = refresh_interval_s
        self.commented = commented
        self.store: RegistryStore = store or FileRegistryStore(home)
        self.repos: dict[tuple[str, str], Repository] = {}  # (tenant, id)
        self.slots = ContextSlots(max_snippets=context_snippets)
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str, str], tuple[str, tuple[int, int] | None]] = {}
        self._synced: dict[str, float] = {}

    # -- registration ------------------------------------------------------------------------

    def check_allowed(self, raw: str) -> Path:
        if not raw or "\x00" in raw:
            raise ApiError(422, "invalid_path", "path must be a non-empty string without NUL bytes")
        if not self.roots:
            raise ApiError(
                403,
                "repositories_disabled",
                "no repository roots are configured; set SPLICE_REPOSITORY_ROOTS to the folders "
                "this server may index",
            )
        path = Path(raw).expanduser()
        if not path.is_absolute():
            raise ApiError(422, "invalid_path", f"path must be absolute: {raw!r}")
        resolved = path.resolve()
        if not any(resolved == r or resolved.is_relative_to(r) for r in self.roots):
            raise ApiError(
                403, "path_not_allowed", f"{raw!r} is outside the allowed repository roots of this server"
            )
        if not resolved.is_dir():
            raise ApiError(404, "not_found", f"no such directory: {raw!r}")
        return resolved

    @staticmethod
    def _check_trusted(raw: str) -> Path:
        path = Path(raw).expanduser()
        if not path.is_absolute() or not path.is_dir():
            raise ApiError(404, "not_found", f"no such directory: {raw!r}")
        return path.resolve()

    def register(
        self,
        tenant: str,
        raw_path: str,
        languages: list[str] | None = None,
        background: bool = True,
        trusted: bool = False,
        record: bool = True,
    ) -> Repository:
        """Register (or re-index) the repository at `raw_path` for `tenant`; `trusted` (entries
        `splice index` wrote) skips the allow-list, never the other checks; `record` False for
        entries read back from the registry store."""
        root = self._check_trusted(raw_path) if trusted else self.check_allowed(raw_path)
        if languages is not None:
            unknown = [name for name in languages if name not in FAMILIES]
            if unknown:
                raise ApiError(
                    422, "invalid_request", f"unknown language(s) {unknown}; known: {', '.join(FAMILIES)}"
                )
        index_dir = tenant_index_dir(root, self.home, tenant)
        repo_id = index_dir.name
        with self._lock:
            repo = self.repos.get((tenant, repo_id))
            if repo is None:
                config = WalkConfig(languages=expand_languages(languages))
                index = RepositoryIndex(root, index_dir, config)
                repo = Repository(tenant, repo_id, root, languages, index)
                self.repos[(tenant, repo_id)] = repo
                if record and not trusted:
                    self.store.record(tenant, root, languages, "api")
        self.reindex(repo, background=background)
        return repo

    def reindex(self, repo: Repository, background: bool = True) -> None:
        with repo.lock:
            if repo.status in ("queued", "indexing") and repo.started_at:
                return  # already running
            repo.status, repo.started_at, repo.error = "queued", time.time(), ""
        self._status(repo)
        if background:
            threading.Thread(target=self._build, args=(repo,), name=f"index-{repo.id}", daemon=True).start()
        else:
            self._build(repo)

    def _build(self, repo: Repository) -> None:
        def progress(done: int, total: int) -> None:
            repo.done, repo.total = done, total

        repo.status = "indexing"
        self._status(repo)
        try:
            repo.report = repo.index.build(progress=progress)
            repo.git_token = repo.index.git_head()
            repo.status = "ready"
            log.info("indexed %s: %s", repo.root, repo.report.as_dict())
        except Exception as exc:  # reported through GET /v1/repositories/{id}
            log.exception("indexing %s failed", repo.root)
            repo.status, repo.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            repo.finished_at = time.time()
            repo.started_at = 0.0 if repo.status != "ready" else repo.started_at
            self._status(repo)

    def _status(self, repo: Repository) -> None:
        try:
            self.store.status(repo)
        except Exception:  # a status is informative; the registry store being down must not stop indexing
            log.warning("could not record the status of %s", repo.root, exc_info=True)

    def owned(self, tenant: str) -> list[Repository]:
        """`tenant`'s repositories (registrations another replica made are picked up)."""
        self.sync(tenant)
        return [r for (owner, _), r in self.repos.items() if owner == tenant]

    def has_repositories(self, tenant: str) -> bool:
        return any(owner == tenant for owner, _ in self.repos)

    def get(self, tenant: str, repo_id: str) -> Repository:
        """`tenant`'s repository `repo_id`; 404 for an id that is unknown or another tenant's."""
        repo = self.repos.get((tenant, repo_id))
        if repo is None:
            self.sync(tenant, force=True)
            repo = self.repos.get((tenant, repo_id))
        if repo is None:
            raise ApiError(404, "unknown_repository", f"no repository {repo_id!r} is registered")
        return repo

    def load(self) -> None:
        """Re-open the repositories registered before a restart (or by another replica), by the
        API or by `splice index` (indexes are on disk: the refresh only re-reads files that changed
        meanwhile). Entries from the API must still lie inside the allowed roots; `splice index`
        ones were added by the operator on this machine and are trusted."""
        for entry in self.store.entries():
            self._open_entry(entry)

    def sync(self, tenant: str, force: bool = False) -> None:
        """Open `tenant`'s registrations that another replica recorded (at most once a second
        unless `force`)."""
        now = time.monotonic()
        if not force and now - self._synced.get(tenant, 0.0) < 1.0:
            return
        self._synced[tenant] = now
        try:
            entries = self.store.entries()
        except Exception:
            log.warning("could not read the repository registry", exc_info=True)
            return
        for entry in entries:
            if entry.get("tenant", DEFAULT_TENANT) == tenant:
                root = entry.get("path")
                if isinstance(root, str) and not any(
                    owner == tenant and str(r.root) == root for (owner, _), r in self.repos.items()
                ):
                    self._open_entry(entry)

    def _open_entry(self, entry: dict[str, Any]) -> None:
        try:
            trusted = entry.get("origin") == "cli"
            tenant = entry.get("tenant", DEFAULT_TENANT)
            if not isinstance(tenant, str):
                raise TypeError(f"tenant {tenant!r} is not a string")
            self.register(tenant, entry["path"], entry.get("languages"), trusted=trusted, record=False)
        except (ApiError, KeyError, TypeError, AttributeError) as exc:
            log.warning("not reopening repository %r: %s", entry, exc)

    def close(self) -> None:
        for repo in self.repos.values():
            repo.index.close()

    # -- locating documents ------------------------------------------------------------------

    def locate(
        self, tenant: str, filepath: str | None, repo_id: str | None = None
    ) -> tuple[Repository, str] | None:
        """(one of `tenant`'s repositories, path relative to its root) for a request's file, or None."""
        if not filepath:
            return None
        if repo_id:
            candidates = [self.get(tenant, repo_id)]
        else:
            candidates = [r for (owner, _), r in self.repos.items() if owner == tenant]
        local = file_uri_path(filepath) if filepath.startswith("file:") else Path(filepath)
        if local is None:
            return None
        for repo in candidates:
            if local.is_absolute():
                try:
                    rel = local.resolve().relative_to(repo.root).as_posix()
                except ValueError:
                    continue
            else:
                rel = local.as_posix()
                if rel.startswith("../") or "/../" in rel or rel == "..":
                    continue
            return repo, rel
        return None

    # -- editor buffers ------------------------------------------------------------------------

    def buffer_changed(self, tenant: str, uri: str, text: str, lines: tuple[int, int] | None) -> None:
        """`tenant`'s editor changed `uri` (unsaved). Applied lazily, before the next context is built."""
        where = self.locate(tenant, uri)
        if where is None:
            return
        repo, rel = where
        with self._lock:
            previous = self._pending.get((tenant, repo.id, rel))
            if previous is not None and previous[1] is not None and lines is not None:
                lines = (min(lines[0], previous[1][0]), max(lines[1], previous[1][1]))
            self._pending[(tenant, repo.id, rel)] = (text, lines)

    def buffer_closed(self, tenant: str, uri: str) -> None:
        where = self.locate(tenant, uri)
        if where is None:
            return
        repo, rel = where
        with self._lock:
            self._pending.pop((tenant, repo.id, rel), None)
        if check_path(rel) is None and rel in repo.index.buffers:
            repo.index.close_buffer(rel)

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for (tenant, repo_id, rel), (text, lines) in pending.items():
            repo = self.repos.get((tenant, repo_id))
            if repo is not None:  # safe during a build too: the build leaves open buffers alone
                repo.index.update_buffer(rel, text, lines)

    def _maybe_refresh(self, repo: Repository) -> None:
        """Files saved or changed by `git` (checkout, pull) are re-indexed one by one, found by
        stat in a background pass: at once when .git/index or HEAD changed, else at most every
        `refresh_interval_s`. Open editor buffers keep their unsaved text."""
        if repo.status != "ready":
            return
        token = repo.index.git_head()
        stale = time.time() - repo.finished_at > self.refresh_interval_s
        if token != repo.git_token or stale:
            repo.git_token = token
            self.reindex(repo)

    # -- context -----------------------------------------------------------------------------

    def context(
        self,
        tenant: str,
        filepath: str | None,
        prefix: str,
        suffix: str,
        language: str | None,
        document: str,
        repo_id: str | None = None,
        budget: int | None = None,
        edits: str = "",
    ) -> tuple[str, list[Snippet]]:
        """Rendered context from `tenant`'s repositories and its snippets for a cursor, in
        `budget` tokens (default: `context_tokens`), with the recent `edits` nearest the document
        ('' and [] without a repository)."""
        where = self.locate(tenant, filepath, repo_id)
        if where is None and repo_id is not None:
            repo = self.get(tenant, repo_id)
            where = (repo, "")
        if where is None:
            return "", []
        repo, rel = where
        if repo.status != "ready" and repo.index.store.is_empty():  # per request: no COUNT(*) scans
            return "", []
        self.flush()
        self._maybe_refresh(repo)
        style = RenderStyle.for_language(language or language_for_path(rel), self.file_sep, self.commented)
        assembler = ContextAssembler(repo.index)
        ranked = assembler.candidates(rel or None, prefix, suffix, language)
        chosen = self.slots.arrange(
            f"{tenant}:{repo.id}:{document}",
            ranked,
            self.context_tokens if budget is None else budget,
            lambda s: self.count_tokens(render_snippet(s, style)),
        )
        return render_context(chosen, style, rel or None, edits), chosen
