"""Build and keep current one repository's index.

`RepositoryIndex.build()` walks the tree (`splice.retrieval.files`), parses each new or changed
file (`splice.retrieval.chunking`) and stores chunks, symbols and imports
(`splice.retrieval.store`); unchanged files (same size and mtime) are skipped, removed ones
dropped. After that, single files are re-indexed: `index_file` from disk (a save, a `git`
checkout: `refresh` finds them by stat), `update_buffer` from an editor's unsaved text. Edited
line ranges are remembered for context assembly ("recently edited regions of other files").
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .chunking import parse_outline
from .files import Skipped, SourceFile, WalkConfig, check_content, check_path, walk
from .languages import language_for_path
from .resolve import Resolver
from .store import Embedder, IndexStore, python_module

INDEX_FILE = "index.sqlite"


def default_index_dir(root: Path, home: Path) -> Path:
    """`<home>/indexes/<folder name>-<hash of the absolute path>`: one index per checkout."""
    resolved = root.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    return home / "indexes" / f"{resolved.name or 'root'}-{digest}"


@dataclass
class IndexReport:
    files_seen: int = 0
    files_indexed: int = 0
    files_unchanged: int = 0
    files_removed: int = 0
    chunks: int = 0
    bytes: int = 0
    seconds: float = 0.0
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def files_per_s(self) -> float:
        return self.files_seen / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "files_seen": self.files_seen,
            "files_indexed": self.files_indexed,
            "files_unchanged": self.files_unchanged,
            "files_removed": self.files_removed,
            "chunks": self.chunks,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "files_per_s": round(self.files_per_s, 1),
            "skipped": dict(sorted(self.skipped.items())),
        }


@dataclass(frozen=True, slots=True)
class RecentEdit:
    path: str
    start_line: int
    end_line: int
    at: float


ProgressFn = Callable[[int, int], None]  # (done, total)


class RepositoryIndex:
    """One repository: its root on disk, its store, the resolver, and recent edits."""

    def __init__(
        self,
        root: Path,
        index_dir: Path,
        config: WalkConfig | None = None,
        embedder: Embedder | None = None,
        max_recent_edits: int = 32,
    ) -> None:
        if not root.is_dir():
            raise ValueError(f"{root} is not a directory")
        self.root = root.resolve()
        self.index_dir = index_dir
        self.config = config or WalkConfig()
        self.store = IndexStore(index_dir / INDEX_FILE)
        self.store.set_meta("root", str(self.root))
        self.embedder = self._embedder(embedder)
        self._resolver: Resolver | None = None
        self._lock = threading.RLock()
        self.recent: deque[RecentEdit] = deque(maxlen=max_recent_edits)
        self.last_report: IndexReport | None = None
        self.buffers: set[str] = set()  # files whose indexed text is an open editor buffer

    def _embedder(self, embedder: Embedder | None) -> Embedder | None:
        """The given embedder (re-embedding everything when it differs from the one the index was
        built with), or, given none, the index's own, so queries match the stored vectors."""
        stored = self.store.get_meta("embedder")
        if embedder is None:
            if not stored:
                return None
            from .embedding import load_embedder

            try:
                return load_embedder(stored)
            except (ValueError, OSError) as exc:
                raise ValueError(f"{self.index_dir}: cannot load its embedder {stored!r}: {exc}") from exc
        if embedder.name != stored:
            if self.store.counts()["files"]:
                self.store.forget_files()  # the next build re-reads and embeds every file
            self.store.set_meta("embedder", embedder.name)
        return embedder

    def close(self) -> None:
        self.store.close()

    @property
    def resolver(self) -> Resolver:
        with self._lock:
            if self._resolver is None:
                self._resolver = Resolver(self.store, self.root.name)
            return self._resolver

    def _invalidate(self) -> None:
        self._resolver = None

    # -- full and incremental builds -------------------------------------------------------

    def build(
        self,
        progress: ProgressFn | None = None,
        on_skip: Callable[[Skipped], None] | None = None,
        show_progress: bool = False,
    ) -> IndexReport:
        """Bring the index up to date with the tree on disk; returns what was done."""
        start = time.perf_counter()
        report = IndexReport()

        def skipped(s: Skipped) -> None:
            report.skipped[s.reason] += 1
            if on_skip is not None:
                on_skip(s)

        files = list(walk(self.root, self.config, skipped))
        report.files_seen = len(files)
        known = self.store.file_states()
        bar = None
        if show_progress:
            from tqdm import tqdm

            bar = tqdm(total=len(files), unit="file", desc=f"indexing {self.root.name}", dynamic_ncols=True)
        present: set[str] = set()
        try:
            # Commit in batches: a bounded WAL, and readers (and editor updates) get turns.
            for lo in range(0, len(files), 256):
                with self._lock, self.store.transaction():
                    for src in files[lo : lo + 256]:
                        present.add(src.path)
                        state = known.get(src.path)
                        if src.path in self.buffers or (
                            state is not None and (state.size, state.mtime_ns) == (src.size, src.mtime_ns)
                        ):
                            report.files_unchanged += 1
                        else:
                            reason = self._index_source(src, report)
                            if reason is not None:
                                present.discard(src.path)
                                skipped(Skipped(src.path, reason[0], reason[1]))
                done = min(lo + 256, len(files))
                if bar is not None:
                    bar.update(done - bar.n)
                if progress is not None:
                    progress(done, len(files))
            with self._lock, self.store.transaction():
                for path in set(known) - present:
                    self.store.remove_file(path)
                    report.files_removed += 1
        finally:
            if bar is not None:
                bar.close()
        with self._lock:
            self._invalidate()
        report.seconds = time.perf_counter() - start
        self.store.set_meta("indexed_at", str(time.time()))
        self.last_report = report
        return report

    def _index_source(self, src: SourceFile, report: IndexReport) -> tuple[str, str] | None:
        path = self.root / src.path
        try:
            data = path.read_bytes()
        except OSError as exc:
            return ("unreadable", str(exc))
        problem = check_content(data, self.config.max_file_bytes)
        if problem is not None:
            self.store.remove_file(src.path)
            return problem
        text = data.decode("utf-8")
        report.chunks += self._store_text(src.path, src.language, text, src.size, src.mtime_ns)
        report.files_indexed += 1
        report.bytes += len(data)
        return None

    def _store_text(self, rel: str, language: str, text: str, size: int, mtime_ns: int) -> int:
        outline = parse_outline(text, language)
        module = python_module(rel) if language == "python" else ""
        self.store.replace_file(rel, language, size, mtime_ns, module, outline.chunks, outline.imports)
        if self.embedder is not None and outline.chunks:
            chunks = self.store.chunks_in_file(rel)
            vectors = self.embedder.embed([c.text for c in chunks])
            self.store.set_vectors([c.id for c in chunks], vectors)
        return len(outline.chunks)

    # -- single files ----------------------------------------------------------------------

    def index_file(self, rel: str) -> bool:
        """Re-index one file from disk (after a save or a checkout); drops it when it is gone
        or no longer indexable. Returns True when the file is in the index afterwards."""
        reason = check_path(rel)
        if reason is not None:
            raise ValueError(f"{rel!r} is not indexable: {reason}")
        path = self.root / rel
        with self._lock:
            self.buffers.discard(rel)
            existed = self.store.file_state(rel) is not None
            try:
                st = path.lstat()
                data = path.read_bytes() if path.is_file() and not path.is_symlink() else None
            except OSError:
                data = None
            language = language_for_path(rel, data[:65536] if data else None)
            if (
                data is None
                or language is None
                or (self.config.languages is not None and language not in self.config.languages)
                or check_content(data, self.config.max_file_bytes) is not None
            ):
                if existed:
                    self.store.remove_file(rel)
                    self._invalidate()
                return False
            with self.store.transaction():
                self._store_text(rel, language, data.decode("utf-8"), st.st_size, st.st_mtime_ns)
            if not existed:
                self._invalidate()
            return True

    def update_buffer(self, rel: str, text: str, edited_lines: tuple[int, int] | None = None) -> bool:
        """Index an editor's unsaved `text` for `rel` (a path under the root). Secret, vendored
        or otherwise excluded paths and contents are refused with False and never stored."""
        if check_path(rel) is not None:
            return False
        data = text.encode("utf-8")
        language = language_for_path(rel, data[:65536])
        if language is None or (self.config.languages is not None and language not in self.config.languages):
            return False
        with self._lock:
            if check_content(data, self.config.max_file_bytes) is not None:
                if self.store.remove_file(rel):
                    self._invalidate()
                return False
            existed = self.store.file_state(rel) is not None
            with self.store.transaction():
                self._store_text(rel, language, text, len(data), -1)  # -1: the next refresh re-reads disk
            self.buffers.add(rel)
            if not existed:
                self._invalidate()
            if edited_lines is not None:
                self.note_edit(rel, *edited_lines)
        return True

    def close_buffer(self, rel: str) -> None:
        """The editor closed (or saved) `rel`: index the file on disk again."""
        with self._lock:
            self.buffers.discard(rel)
        if check_path(rel) is None:
            self.index_file(rel)

    def note_edit(self, rel: str, start_line: int, end_line: int) -> None:
        """Remember an edited line range (merged with the previous edit when they touch)."""
        now = time.time()
        with self._lock:
            last = self.recent[-1] if self.recent else None
            touches = last is not None and start_line <= last.end_line + 3 and end_line >= last.start_line - 3
            if last is not None and last.path == rel and touches:
                start, end = min(start_line, last.start_line), max(end_line, last.end_line)
                self.recent[-1] = RecentEdit(rel, start, end, now)
            else:
                self.recent.append(RecentEdit(rel, start_line, end_line, now))

    def refresh(self) -> IndexReport:
        """Re-index what changed on disk since the last build (saves, checkouts, pulls)."""
        return self.build()

    def git_head(self) -> str:
        """A token that changes when `git` changes the tree: mtime of .git/index and HEAD."""
        parts = []
        for name in ("index", "HEAD"):
            try:
                parts.append(str(os.stat(self.root / ".git" / name).st_mtime_ns))
            except OSError:
                parts.append("-")
        return ":".join(parts)
