"""The persisted repository index: one SQLite file with an FTS5 table.

Why SQLite/FTS5 rather than tantivy or a vector database: it ships with Python (no service, no
native wheel to build), one file holds everything (files, chunks, symbols, imports, lexical
index, optional vectors) so an index is copied or deleted as a unit, writes are transactional
(a crash mid-update leaves the previous state), WAL mode lets the server read while the indexer
writes, and FTS5 ranks with BM25 out of the box. Opening an index is a file open: nothing is
loaded into memory at `serve` start.

Tokens are made by `splice.retrieval.tokens` (identifier-aware) and stored pre-split, so FTS5's
own tokenizer only separates on spaces.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .chunking import Chunk, Import
from .tokens import fts_query, index_terms, text_terms

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    language TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,   -- -1 while the indexed text is an unsaved editor buffer
    module TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS files_module ON files(module);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    qualname TEXT NOT NULL,
    start_line INTEGER NOT NULL,
    end_line INTEGER NOT NULL,
    signature TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_file ON chunks(file_id);
CREATE INDEX IF NOT EXISTS chunks_name ON chunks(name);
CREATE TABLE IF NOT EXISTS imports (
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    module TEXT NOT NULL,
    name TEXT NOT NULL,      -- '' for `import module`
    local TEXT NOT NULL,     -- the name it is bound to in the importing file
    line INTEGER NOT NULL,
    level INTEGER NOT NULL,
    system INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS imports_file ON imports(file_id);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(terms, tokenize = "unicode61 tokenchars '_'");
CREATE TABLE IF NOT EXISTS vectors (
    chunk_id INTEGER PRIMARY KEY REFERENCES chunks(id) ON DELETE CASCADE,
    vector BLOB NOT NULL
);
"""


class Embedder(Protocol):
    """Optional dense retrieval: anything that maps texts to fixed-size vectors."""

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:  # [len(texts), dim] float32
        ...


@dataclass(frozen=True, slots=True)
class StoredChunk:
    id: int
    path: str
    language: str
    kind: str
    name: str
    qualname: str
    start_line: int
    end_line: int
    signature: str
    text: str


@dataclass(frozen=True, slots=True)
class StoredImport:
    module: str
    name: str
    local: str
    line: int
    level: int
    system: bool


@dataclass(frozen=True, slots=True)
class FileState:
    path: str
    language: str
    size: int
    mtime_ns: int
    module: str


_CHUNK_COLUMNS = (
    "c.id, f.path, f.language, c.kind, c.name, c.qualname, c.start_line, c.end_line, c.signature, c.text"
)


def _chunk_terms(path: str, chunk: Chunk) -> str:
    names = [chunk.name, *chunk.qualname.split(".")] if chunk.name else []
    stem = Path(path).stem
    terms = index_terms(names) + index_terms([stem]) + text_terms(chunk.text)
    return " ".join(terms)


class IndexStore:
    """Thread-safe access to one index file. Writers hold `transaction()`; reads are short."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        self._version = 0  # bumped by every write; keys the in-memory vector matrix
        self._vectors: tuple[int, np.ndarray, np.ndarray] | None = None  # (version, ids, matrix)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise ValueError(
                    f"{path} is an index of schema version {version}; this Splice reads {SCHEMA_VERSION}. "
                    "Delete it and run `splice index` again."
                )
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- metadata ---------------------------------------------------------------------------

    def get_meta(self, key: str, default: str = "") -> str:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- writes -----------------------------------------------------------------------------

    def replace_file(
        self,
        path: str,
        language: str,
        size: int,
        mtime_ns: int,
        module: str,
        chunks: Iterable[Chunk],
        imports: Iterable[Import],
    ) -> int:
        """Store one file's chunks and imports in place of what was there. Returns its id."""
        with self._lock:
            self._version += 1
            self._delete_file_rows(path)
            cur = self._db.execute(
                "INSERT INTO files(path, language, size, mtime_ns, module) VALUES (?, ?, ?, ?, ?)",
                (path, language, size, mtime_ns, module),
            )
            file_id = int(cur.lastrowid or 0)
            for chunk in chunks:
                cur = self._db.execute(
                    "INSERT INTO chunks(file_id, kind, name, qualname, start_line, end_line, signature, text)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        file_id,
                        chunk.kind,
                        chunk.name,
                        chunk.qualname,
                        chunk.start_line,
                        chunk.end_line,
                        chunk.signature,
                        chunk.text,
                    ),
                )
                self._db.execute(
                    "INSERT INTO chunks_fts(rowid, terms) VALUES (?, ?)",
                    (cur.lastrowid, _chunk_terms(path, chunk)),
                )
            rows: list[tuple[int, str, str, str, int, int, int]] = []
            for imp in imports:
                if imp.names:
                    rows.extend(
                        (file_id, imp.module, name, local, imp.line, imp.level, int(imp.system))
                        for name, local in imp.names
                    )
                else:
                    rows.append((file_id, imp.module, "", imp.local, imp.line, imp.level, int(imp.system)))
            self._db.executemany(
                "INSERT INTO imports(file_id, module, name, local, line, level, system)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            return file_id

    def remove_file(self, path: str) -> bool:
        with self._lock:
            self._version += 1
            return self._delete_file_rows(path)

    def forget_files(self) -> None:
        """Make every file look changed (the next build re-reads them all) and drop the vectors:
        after the embedder changed."""
        with self._lock:
            self._version += 1
            self._db.execute("UPDATE files SET mtime_ns = -2")
            self._db.execute("DELETE FROM vectors")

    def _delete_file_rows(self, path: str) -> bool:
        row = self._db.execute("SELECT id FROM files WHERE path=?", (path,)).fetchone()
        if row is None:
            return False
        file_id = row[0]
        self._db.execute(
            "DELETE FROM chunks_fts WHERE rowid IN (SELECT id FROM chunks WHERE file_id=?)", (file_id,)
        )
        self._db.execute("DELETE FROM files WHERE id=?", (file_id,))  # cascades to chunks/imports/vectors
        return True

    def set_vectors(self, chunk_ids: Sequence[int], vectors: np.ndarray) -> None:
        with self._lock:
            self._version += 1
            self._db.executemany(
                "INSERT OR REPLACE INTO vectors(chunk_id, vector) VALUES (?, ?)",
                [
                    (cid, np.asarray(v, dtype=np.float32).tobytes())
                    for cid, v in zip(chunk_ids, vectors, strict=True)
                ],
            )

    # -- reads ------------------------------------------------------------------------------

    def file_states(self) -> dict[str, FileState]:
        with self._lock:
            rows = self._db.execute("SELECT path, language, size, mtime_ns, module FROM files").fetchall()
        return {r[0]: FileState(*r) for r in rows}

    def file_state(self, path: str) -> FileState | None:
        with self._lock:
            row = self._db.execute(
                "SELECT path, language, size, mtime_ns, module FROM files WHERE path=?", (path,)
            ).fetchone()
        return None if row is None else FileState(*row)

    def is_empty(self) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM files LIMIT 1").fetchone() is None

    def counts(self) -> dict[str, int]:
        with self._lock:
            files = self._db.execute("SELECT count(*) FROM files").fetchone()[0]
            chunks = self._db.execute("SELECT count(*) FROM chunks").fetchone()[0]
            symbols = self._db.execute("SELECT count(*) FROM chunks WHERE name != ''").fetchone()[0]
            imports = self._db.execute("SELECT count(*) FROM imports").fetchone()[0]
            vectors = self._db.execute("SELECT count(*) FROM vectors").fetchone()[0]
        return {"files": files, "chunks": chunks, "symbols": symbols, "imports": imports, "vectors": vectors}

    def _chunks(self, where: str, params: Sequence[object]) -> list[StoredChunk]:
        sql = f"SELECT {_CHUNK_COLUMNS} FROM chunks c JOIN files f ON f.id = c.file_id WHERE {where}"
        with self._lock:
            rows = self._db.execute(sql, tuple(params)).fetchall()
        return [StoredChunk(*r) for r in rows]

    def chunks_in_file(self, path: str) -> list[StoredChunk]:
        return self._chunks("f.path = ? ORDER BY c.start_line", (path,))

    def chunk(self, chunk_id: int) -> StoredChunk | None:
        found = self._chunks("c.id = ?", (chunk_id,))
        return found[0] if found else None

    def definitions(self, name: str, paths: Sequence[str] | None = None) -> list[StoredChunk]:
        """Chunks that define `name` (any kind but the header), optionally only in `paths`."""
        if paths is not None:
            if not paths:
                return []
            marks = ",".join("?" * len(paths))
            return self._chunks(f"c.name = ? AND f.path IN ({marks})", (name, *paths))
        return self._chunks("c.name = ? AND c.kind != 'header'", (name,))

    def imports_of(self, path: str) -> list[StoredImport]:
        with self._lock:
            rows = self._db.execute(
                "SELECT i.module, i.name, i.local, i.line, i.level, i.system FROM imports i"
                " JOIN files f ON f.id = i.file_id WHERE f.path = ? ORDER BY i.line",
                (path,),
            ).fetchall()
        return [StoredImport(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in rows]

    def paths_with_module(self, module: str) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT path FROM files WHERE module = ?", (module,)).fetchall()
        return [r[0] for r in rows]

    @property
    def version(self) -> int:
        """Bumped by every write (in this process)."""
        return self._version

    def paths(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT path FROM files ORDER BY path")]

    def search(
        self, terms: Sequence[str], limit: int = 20, exclude_path: str | None = None
    ) -> list[tuple[StoredChunk, float]]:
        """BM25 over identifier-aware terms; returns (chunk, score) best first, score > 0."""
        query = fts_query(terms)
        if not query:
            return []
        with self._lock:
            rows = self._db.execute(
                "SELECT rowid, bm25(chunks_fts) AS s FROM chunks_fts WHERE chunks_fts MATCH ?"
                " ORDER BY s LIMIT ?",
                (query, limit + 16),
            ).fetchall()
        scores = {int(r[0]): -float(r[1]) for r in rows}
        if not scores:
            return []
        marks = ",".join("?" * len(scores))
        chunks = {c.id: c for c in self._chunks(f"c.id IN ({marks})", list(scores))}
        ranked = [
            (chunks[cid], score)
            for cid, score in sorted(scores.items(), key=lambda kv: -kv[1])
            if cid in chunks and chunks[cid].path != exclude_path
        ]
        return ranked[:limit]

    def vector_search(
        self, query: np.ndarray, limit: int = 20, exclude_path: str | None = None
    ) -> list[tuple[StoredChunk, float]]:
        """Cosine similarity against every stored vector (exact; the matrix is kept in memory
        until the next write; fine to ~10^5 chunks)."""
        with self._lock:
            cached = self._vectors
            if cached is None or cached[0] != self._version:
                rows = self._db.execute("SELECT chunk_id, vector FROM vectors").fetchall()
                ids = np.array([r[0] for r in rows], dtype=np.int64)
                mat = (
                    np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
                    if rows
                    else np.zeros((0, 1), dtype=np.float32)
                )  # [N, dim]
                mat = mat / np.maximum(np.linalg.norm(mat, axis=1, keepdims=True), 1e-9)
                cached = self._vectors = (self._version, ids, mat)
        _, ids, mat = cached
        if not len(ids):
            return []
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        sims = mat @ (q / max(float(np.linalg.norm(q)), 1e-9))  # [N]
        order = np.argsort(-sims)[: limit + 16]
        marks = ",".join("?" * len(order))
        chunks = {c.id: c for c in self._chunks(f"c.id IN ({marks})", [int(ids[i]) for i in order])}
        out = [(chunks[int(ids[i])], float(sims[i])) for i in order if int(ids[i]) in chunks]
        return [(c, s) for c, s in out if c.path != exclude_path][:limit]


def python_module(path: str) -> str:
    """Dotted module name of a Python file relative to the index root (`a/b/__init__.py` -> a.b)."""
    parts = list(Path(path).with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts.pop()
    if parts and parts[0] in ("src", "lib"):
        parts.pop(0)
    return ".".join(parts)


__all__ = [
    "SCHEMA_VERSION",
    "Embedder",
    "FileState",
    "IndexStore",
    "StoredChunk",
    "StoredImport",
    "python_module",
]
