"""A training corpus of permissively licensed source code found on this machine.

Sources are the Python standard library (PSF) and every installed distribution whose license
metadata is permissive (MIT, BSD, Apache-2.0, PSF, ISC, zlib, Unlicense); the rest are listed in
the manifest with the license they declare. Files go through, in order:

1. the content rules of repository indexing (`splice.retrieval.files.check_content`): binaries,
   files with secrets, generated and minified files are dropped;
2. quality filters: very long lines, a low share of alphabetic characters, too few lines;
3. exact duplicates (SHA-256 of the text with whitespace runs collapsed);
4. near duplicates: MinHash signatures of word 5-gram shingles, banded LSH; a file whose
   estimated Jaccard similarity to a kept file is over the threshold is dropped.

The survivors are split by file into train and held-out sets (a hash of the file's key, so the
split does not depend on the order of discovery) and written as `train.jsonl.gz` and
`heldout.jsonl.gz` with a `manifest.json` of counts, licenses and settings.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import sys
import sysconfig
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from splice.retrieval.files import check_content
from splice.retrieval.languages import language_for_path

PERMISSIVE = ("MIT", "BSD", "Apache-2.0", "PSF", "ISC", "Zlib", "Unlicense", "HPND", "0BSD")
_PERMISSIVE_PATTERNS = (
    ("Apache-2.0", re.compile(r"\bapache\b")),
    ("MIT", re.compile(r"\bmit\b|expat")),
    ("BSD", re.compile(r"\bbsd\b")),
    ("PSF", re.compile(r"\bpsf\b|python software foundation")),
    ("ISC", re.compile(r"\bisc\b")),
    ("Zlib", re.compile(r"\bzlib\b")),
    ("Unlicense", re.compile(r"\bunlicense\b|public domain|\bcc0\b")),
    ("HPND", re.compile(r"\bhpnd\b|historical permission")),
)
_COPYLEFT = re.compile(r"\b(a?gpl|lgpl|gnu|mpl|mozilla|epl|eclipse|cddl|eupl|osl|proprietary|commercial)\b")


@dataclass(frozen=True)
class CorpusConfig:
    """Settings of one corpus build (written into the manifest)."""

    languages: tuple[str, ...] = ("python",)
    include_stdlib: bool = True
    max_file_bytes: int = 200_000
    min_lines: int = 5
    max_line_chars: int = 1000
    min_alpha_ratio: float = 0.25  # letters / non-whitespace characters
    near_dup_threshold: float = 0.85  # estimated Jaccard over word 5-grams
    minhash_permutations: int = 64
    minhash_bands: int = 16
    heldout_percent: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.minhash_permutations % self.minhash_bands:
            raise ValueError("minhash_permutations must be a multiple of minhash_bands")
        if not 0.0 <= self.heldout_percent < 100.0:
            raise ValueError(f"heldout_percent must be in [0, 100), got {self.heldout_percent}")
        if not 0.0 < self.near_dup_threshold <= 1.0:
            raise ValueError(f"near_dup_threshold must be in (0, 1], got {self.near_dup_threshold}")


@dataclass(frozen=True)
class Source:
    """A distribution (or the standard library) whose files may enter the corpus."""

    name: str
    version: str
    license: str  # normalised family ("MIT", "BSD", ...) or what the metadata says
    permissive: bool
    root: Path
    files: tuple[str, ...]  # paths relative to root


@dataclass
class CorpusStats:
    seen: int = 0
    kept: int = 0
    train: int = 0
    heldout: int = 0
    bytes_kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    by_license: Counter[str] = field(default_factory=Counter)
    by_language: Counter[str] = field(default_factory=Counter)


def classify_license(texts: list[str]) -> tuple[str, bool]:
    """(license family, permissive?) from metadata strings (License-Expression, classifiers, License).

    An expression with a permissive alternative (`MIT OR GPL-2.0`) counts as permissive; a
    conjunction with a copyleft license (`MIT AND GPL-2.0`) does not.
    """
    found: list[str] = []
    copyleft = False
    for text in texts:
        low = text.lower()
        alternatives = re.split(r"\s+or\s+", low) if " or " in low else [low]
        for alt in alternatives:
            families = [name for name, pattern in _PERMISSIVE_PATTERNS if pattern.search(alt)]
            if _COPYLEFT.search(alt.replace("lgpl-compatible", "")):
                if len(alternatives) == 1:
                    copyleft = True
                continue
            found.extend(families)
    if copyleft or not found:
        label = next((t.strip() for t in texts if t.strip()), "unknown")
        return label[:80], False
    return Counter(found).most_common(1)[0][0], True


def _license_texts(dist: metadata.Distribution) -> list[str]:
    meta: Any = dist.metadata  # an email.message.Message underneath
    texts = [meta.get("License-Expression") or ""]
    texts += [
        c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::")
    ]
    declared = meta.get("License") or ""
    if declared and len(declared) < 200:  # a whole license text is read by its first line only
        texts.append(declared)
    elif declared:
        texts.append(declared.strip().splitlines()[0])
    return [t for t in texts if t.strip()]


def find_sources(config: CorpusConfig) -> list[Source]:
    """The standard library and the installed distributions, each with its license verdict."""
    sources: list[Source] = []
    if config.include_stdlib:
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        files: list[str] = []
        for path in sorted(stdlib.rglob("*")):
            rel = path.relative_to(stdlib).as_posix()
            if "site-packages" in rel or "dist-packages" in rel or not path.is_file():
                continue
            files.append(rel)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        sources.append(Source("python-stdlib", version, "PSF", True, stdlib, tuple(files)))
    seen: set[str] = set()
    for dist in sorted(metadata.distributions(), key=lambda d: (d.metadata["Name"] or "").lower()):
        name = dist.metadata["Name"] or "?"
        if name.lower() in seen or not dist.files:
            continue
        seen.add(name.lower())
        license_name, permissive = classify_license(_license_texts(dist))
        root = Path(str(dist.locate_file("")))
        dist_files = tuple(sorted(str(f) for f in dist.files if not str(f).startswith("..")))
        sources.append(Source(name, dist.version, license_name, permissive, root, dist_files))
    return sources


def quality_reason(text: str, config: CorpusConfig) -> str | None:
    """Why a decoded file is not good training text, or None."""
    lines = text.split("\n")
    if len(lines) < config.min_lines:
        return "too_short"
    if max(map(len, lines)) > config.max_line_chars:
        return "long_line"
    visible = [c for c in text if not c.isspace()]
    if not visible or sum(c.isalpha() for c in visible) / len(visible) < config.min_alpha_ratio:
        return "low_alpha"
    return None


_WORD = re.compile(r"\w+")
_MERSENNE = (1 << 61) - 1


class NearDuplicateIndex:
    """MinHash + banded LSH over word 5-gram shingles (Broder 1997; Leskovec et al., ch. 3)."""

    def __init__(self, permutations: int, bands: int, threshold: float, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, _MERSENNE, size=permutations, dtype=np.uint64)
        self.b = rng.integers(0, _MERSENNE, size=permutations, dtype=np.uint64)
        self.bands = bands
        self.rows = permutations // bands
        self.threshold = threshold
        self.buckets: list[dict[bytes, int]] = [{} for _ in range(bands)]
        self.signatures: list[np.ndarray] = []

    def signature(self, text: str) -> np.ndarray:
        words = _WORD.findall(text)
        grams = {" ".join(words[i : i + 5]) for i in range(max(1, len(words) - 4))}
        hashes = np.fromiter(
            (
                int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little") >> 4
                for g in grams
            ),
            dtype=np.uint64,
            count=len(grams),
        )
        # a*x + b wraps modulo 2**64 before the mod p: still one fixed random hash function per
        # permutation, which is all MinHash needs.
        mixed = (hashes[:, None] * self.a[None, :] + self.b[None, :]) % np.uint64(_MERSENNE)
        return mixed.min(axis=0)  # [permutations]

    def add_if_new(self, text: str) -> int | None:
        """Index `text` and return None, or return the id of a kept near-duplicate."""
        sig = self.signature(text)
        candidates: set[int] = set()
        keys = [sig[i * self.rows : (i + 1) * self.rows].tobytes() for i in range(self.bands)]
        for band, key in zip(self.buckets, keys, strict=True):
            if key in band:
                candidates.add(band[key])
        for other in sorted(candidates):
            if float(np.mean(self.signatures[other] == sig)) >= self.threshold:
                return other
        new_id = len(self.signatures)
        self.signatures.append(sig)
        for band, key in zip(self.buckets, keys, strict=True):
            band.setdefault(key, new_id)
        return None


def _exact_key(text: str) -> str:
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()


def is_heldout(key: str, percent: float, seed: int = 0) -> bool:
    """Deterministic split by file: a hash of the key, independent of discovery order."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100.0 < percent


Progress = Callable[[int, int, str], None]  # done, total, current source


def iter_candidates(sources: list[Source], config: CorpusConfig) -> Iterator[tuple[Source, str, str | None]]:
    """(source, relative path, language) for every file of a permissive source in a wanted language."""
    for source in sources:
        if not source.permissive:
            continue
        for rel in source.files:
            language = language_for_path(rel)
            if language in config.languages:
                yield source, rel, language


def build_corpus(
    out: Path,
    config: CorpusConfig | None = None,
    *,
    sources: list[Source] | None = None,
    progress: Progress | None = None,
) -> dict[str, object]:
    """Build the corpus into `out` and return the manifest (also written as manifest.json)."""
    config = config or CorpusConfig()
    start = time.perf_counter()
    sources = find_sources(config) if sources is None else sources
    out.mkdir(parents=True, exist_ok=True)
    candidates = list(iter_candidates(sources, config))
    stats = CorpusStats()
    exact: set[str] = set()
    near = NearDuplicateIndex(
        config.minhash_permutations, config.minhash_bands, config.near_dup_threshold, config.seed
    )
    per_source: dict[str, Counter[str]] = {}
    with (
        gzip.open(out / "train.jsonl.gz", "wt", encoding="utf-8") as train,
        gzip.open(out / "heldout.jsonl.gz", "wt", encoding="utf-8") as heldout,
    ):
        for done, (source, rel, language) in enumerate(candidates, 1):
            if progress is not None:
                progress(done, len(candidates), source.name)
            stats.seen += 1
            counts = per_source.setdefault(source.name, Counter())
            reason = _file_reason(source.root / rel, config)
            text = ""
            if reason is None:
                text = (source.root / rel).read_text(encoding="utf-8")
                reason = quality_reason(text, config)
            if reason is None:
                key = _exact_key(text)
                if key in exact:
                    reason = "exact_duplicate"
                else:
                    exact.add(key)
                    if near.add_if_new(text) is not None:
                        reason = "near_duplicate"
            if reason is not None:
                stats.dropped[reason] += 1
                counts[f"dropped_{reason}"] += 1
                continue
            file_key = f"{source.name}/{rel}"
            held = is_heldout(file_key, config.heldout_percent, config.seed)
            record = {"id": file_key, "license": source.license, "language": language, "text": text}
            (heldout if held else train).write(json.dumps(record) + "\n")
            stats.kept += 1
            stats.heldout += held
            stats.train += not held
            stats.bytes_kept += len(text.encode())
            stats.by_license[source.license] += 1
            stats.by_language[str(language)] += 1
            counts["kept"] += 1
    manifest: dict[str, object] = {
        "config": asdict(config),
        "files": {"seen": stats.seen, "kept": stats.kept, "train": stats.train, "heldout": stats.heldout},
        "bytes_kept": stats.bytes_kept,
        "dropped": dict(stats.dropped.most_common()),
        "by_license": dict(stats.by_license.most_common()),
        "by_language": dict(stats.by_language.most_common()),
        "sources": [
            {"name": s.name, "version": s.version, "license": s.license, **per_source.get(s.name, {})}
            for s in sources
            if s.permissive and per_source.get(s.name)
        ],
        "excluded_sources": [
            {"name": s.name, "version": s.version, "license": s.license} for s in sources if not s.permissive
        ],
        "seconds": round(time.perf_counter() - start, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _file_reason(path: Path, config: CorpusConfig) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return "unreadable"
    verdict = check_content(data, config.max_file_bytes)
    return None if verdict is None else verdict[0]


def read_corpus(path: Path) -> Iterator[dict[str, str]]:
    """The records of a `train.jsonl.gz` / `heldout.jsonl.gz` file."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
