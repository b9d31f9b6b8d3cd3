"""Identifier-aware tokens for the lexical index and for context queries.

Code search fails with word tokenizers: `getHttpResponse` must match a query for `response`,
and `max_retries` one for `retries`. Every identifier is indexed whole (lowercased) and as
its sub-tokens split at snake_case underscores and camelCase/PascalCase humps (keeping
acronyms: `HTTPServerError` -> http, server, error). Keywords and one-letter names carry no
signal and are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HUMPS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")

# Keywords of the indexed languages and names too common to mean anything.
STOP_WORDS = frozenset(
    """
    and as assert async await break case catch class const continue def default del do elif else
    enum except export extends false final finally fn for from func function global go if impl
    import in instanceof interface is lambda let match mod module mut namespace new nil none not
    null or package pass private protected pub public raise return self static struct super switch
    this throw throws trait true try type typedef typeof union unsafe use var void while with yield
    int str bool float char long short unsigned signed double auto string byte rune usize isize
    u8 u16 u32 u64 i8 i16 i32 i64 f32 f64 std cls args kwargs
    """.split()  # noqa: SIM905
)


def split_identifier(name: str) -> list[str]:
    """Lowercased sub-tokens of one identifier: `parseHTTPResponse_v2` -> parse, http, response, v2."""
    parts: list[str] = []
    for piece in name.split("_"):
        if not piece:
            continue
        humps = _HUMPS.findall(piece)
        # Keep a trailing number with its word (v2, utf8) rather than as a bare number.
        merged: list[str] = []
        for hump in humps:
            if hump.isdigit() and merged:
                merged[-1] += hump
            else:
                merged.append(hump)
        parts.extend(h.lower() for h in merged)
    return parts


def identifiers(text: str) -> list[str]:
    """Identifiers in `text`, in order, keywords included (callers filter)."""
    return IDENTIFIER.findall(text)


def is_meaningful(name: str) -> bool:
    return len(name) > 1 and name.lower() not in STOP_WORDS


@lru_cache(maxsize=1 << 16)
def _name_terms(name: str) -> tuple[str, ...]:
    if not is_meaningful(name):
        return ()
    subs = split_identifier(name)
    if len(subs) <= 1:
        return (name.lower(),)
    return (name.lower(), *(s for s in subs if len(s) > 1 and s not in STOP_WORDS))


def index_terms(names: Iterable[str]) -> list[str]:
    """The terms indexed for these identifiers: each whole (lowercased) plus its sub-tokens."""
    terms: list[str] = []
    for name in names:
        terms.extend(_name_terms(name))
    return terms


def text_terms(text: str) -> list[str]:
    """`index_terms` of every identifier in `text`."""
    return index_terms(identifiers(text))


def fts_query(terms: Iterable[str], limit: int = 64) -> str:
    """An FTS5 MATCH expression: any of the distinct terms (quoted, so no term is an operator)."""
    seen: dict[str, None] = {}
    for term in terms:
        if term not in seen:
            seen[term] = None
        if len(seen) >= limit:
            break
    return " OR ".join(f'"{t}"' for t in seen)
