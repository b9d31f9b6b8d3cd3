"""Prometheus metrics of one app instance (own registry, so several apps can share a process)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "splice_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "splice_request_latency_seconds",
            "HTTP request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "splice_time_to_first_token_seconds",
            "Time to first generated token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "splice_prompt_tokens", "Prompt tokens of completion requests", registry=r
        )
        self.encoded_tokens = Counter(
            "splice_prompt_tokens_encoded", "Prompt tokens run through the model", registry=r
        )
        self.reused_tokens = Counter(
            "splice_prompt_tokens_reused", "Prompt tokens whose KV came from a document cache", registry=r
        )
        self.refreshed_tokens = Counter(
            "splice_prompt_tokens_refreshed",
            "Kept prompt tokens re-encoded against drift (pie+refresh; part of the encoded tokens)",
            registry=r,
        )
        self.forced_full = Counter(
            "splice_drift_forced_full_encodes",
            "Prompts encoded in full because the drift bound was passed",
            registry=r,
        )
        self.document_bytes = Gauge(
            "splice_document_cache_bytes", "Memory held by document KV caches", registry=r
        )
        self.documents = Gauge("splice_document_cache_entries", "Documents with a KV cache", registry=r)
        self.document_budget = Gauge(
            "splice_document_cache_budget_bytes", "SPLICE_DOCUMENT_CACHE_MB in bytes", registry=r
        )
        self.evictions = Counter(
            "splice_document_cache_evictions",
            "Document KV caches evicted (least recently used) to stay within the budget; an evicted "
            "document is re-encoded at its next completion",
            registry=r,
        )
        self.memory_resident = Gauge(
            "splice_memory_resident_bytes", "Resident memory of this process (VmRSS)", registry=r
        )
        self.memory_peak = Gauge(
            "splice_memory_peak_bytes", "Peak resident memory of this process (VmHWM)", registry=r
        )
        self.completion_tokens = Counter("splice_completion_tokens", "Tokens generated", registry=r)
        self.completions = Counter(
            "splice_completions", "Completions by finish reason", ["finish_reason"], registry=r
        )
        self.rejected = Counter(
            "splice_queue_rejections", "Requests refused with 429 (queue full)", registry=r
        )
        self.queue_depth = Gauge("splice_queue_depth", "Requests waiting for the model", registry=r)
        self.in_progress = Gauge(
            "splice_generation_in_progress", "Generations running now (0 or 1)", registry=r
        )
        self.next_edits = Counter(
            "splice_next_edits",
            "Next-edit suggestions answered, by outcome (edit, no_change)",
            ["outcome"],
            registry=r,
        )
        self.events = Counter("splice_events", "Telemetry events by type", ["type"], registry=r)
        self.ws_connections = Gauge(
            "splice_editor_connections", "Open editor WebSocket connections", registry=r
        )
        self.ws_documents = Gauge("splice_editor_documents", "Documents open in editors", registry=r)
        self.ws_messages = Counter(
            "splice_editor_messages", "Editor protocol messages received, by type", ["type"], registry=r
        )
        self.ws_resyncs = Counter(
            "splice_editor_resyncs", "Changes refused with a resync, by reason", ["reason"], registry=r
        )

    def render(self) -> bytes:
        memory = process_memory()
        if memory:
            self.memory_resident.set(memory.get("VmRSS", 0))
            self.memory_peak.set(memory.get("VmHWM", 0))
        return generate_latest(self.registry)


def process_memory(status: Path = Path("/proc/self/status")) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of this process in bytes, from Linux's /proc ({} elsewhere)."""
    try:
        lines = status.read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM") and value.strip().endswith("kB"):
            out[name] = int(value.split()[0]) * 1024
    return out
