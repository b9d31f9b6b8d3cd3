"""API keys and tenants: with `SPLICE_API_KEYS` set, every REST call and editor connection
names its key, and the key decides the tenant whose documents and caches it may touch."""

from __future__ import annotations

import hashlib
import hmac

from splice.assistant.errors import ApiError

DEFAULT_TENANT = "default"


class ApiKeys:
    """`key` or `key=tenant`, comma-separated; a key without a tenant is its own tenant."""

    def __init__(self, spec: str) -> None:
        self._tenants: dict[str, str] = {}
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            key, _, tenant = item.partition("=")
            key, tenant = key.strip(), tenant.strip()
            if not key:
                raise ValueError(f"SPLICE_API_KEYS: empty key in {item!r}")
            self._tenants[key] = tenant or "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]

    @property
    def enabled(self) -> bool:
        return bool(self._tenants)

    def tenant(self, authorization: str | None, query_key: str | None = None) -> str:
        """The caller's tenant from `Authorization: Bearer KEY` (or a `?api_key=` for browser
        WebSockets, which cannot set headers); ApiError 401 when auth is on and the key is bad."""
        if not self.enabled:
            return DEFAULT_TENANT
        key = query_key
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise ApiError(401, "unauthorized", "Authorization must be `Bearer <API key>`")
            key = value.strip()
        if not key:
            raise ApiError(401, "unauthorized", "an API key is required (Authorization: Bearer <key>)")
        for known, tenant in self._tenants.items():
            if hmac.compare_digest(known.encode(), key.encode()):
                return tenant
        raise ApiError(401, "unauthorized", "unknown API key")
