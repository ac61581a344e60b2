"""Prometheus metrics of one relay process (its own registry, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: The ``limit`` label values of ``sync_relay_limit_refusals_total``: a fixed set, named
#: after the option that refused.
LIMITS = (
    "messages_per_minute",
    "push_bytes_per_hour",
    "max_group_storage",
    "max_storage",
    "new_groups_per_hour",
    "new_devices_per_hour",
    "allow_new_groups",
    "max_log_entries",
    "max_log_bytes",
)


class RelayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections_total = Counter(
            "sync_relay_connections", "WebSocket connections accepted", registry=r
        )
        self.connections_active = Gauge(
            "sync_relay_connections_active", "connections open now", registry=r
        )
        self.sessions_active = Gauge(
            "sync_relay_sessions_active", "authenticated devices connected now", registry=r
        )
        self.blobs_buffered = Gauge(
            "sync_relay_blobs_buffered", "blobs stored and not yet expired or acked", registry=r
        )
        self.groups = Gauge("sync_relay_groups", "groups known to this relay", registry=r)
        self.blobs_received = Counter(
            "sync_relay_blobs_received", "blobs accepted by PUSH (not counting retries)", registry=r
        )
        self.blobs_delivered = Counter(
            "sync_relay_blobs_delivered", "blobs sent to devices in PULL responses", registry=r
        )
        self.bytes_transferred = Counter(
            "sync_relay_bytes_transferred",
            "WebSocket payload bytes",
            ["direction"],
            registry=r,
        )
        self.handshake_failures = Counter(
            "sync_relay_handshake_failures",
            "connections that failed before WELCOME",
            ["reason"],
            registry=r,
        )
        self.connections_refused = Counter(
            "sync_relay_connections_refused",
            "WebSocket upgrades refused before the handshake (HTTP 429/503), by limit",
            ["limit"],
            registry=r,
        )
        self.limit_refusals = Counter(
            "sync_relay_limit_refusals",
            "HELLOs and requests refused by a limit, by the option that refused them",
            ["limit"],
            registry=r,
        )
        self.errors = Counter(
            "sync_relay_errors", "ERROR messages sent, by code", ["code"], registry=r
        )
        self.push_latency = Histogram(
            "sync_relay_push_latency_seconds",
            "time from PUSH received to PUSH_ACK sent (includes the commit)",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.notifications = Counter("sync_relay_notifications", "NOTIFY messages sent", registry=r)
        self.push_notifications = Counter(
            "sync_relay_push_notifications",
            "push notifications handed to the push sender",
            ["result"],
            registry=r,
        )
        self.send_buffer_bytes = Gauge(
            "sync_relay_send_buffer_bytes",
            "bytes encrypted for clients and not yet handed to the kernel, all clients",
            registry=r,
        )
        self.sockets_waiting = Gauge(
            "sync_relay_sockets_waiting",
            "sockets accepted that have not sent their HTTP request or upgrade yet",
            registry=r,
        )
        self.clients_cut = Counter(
            "sync_relay_clients_cut",
            "connections dropped for not reading, by reason",
            ["reason"],
            registry=r,
        )

    def refused(self, limit: str) -> None:
        """Count a refusal by one of ``LIMITS`` (anything else is a bug: the label set is
        bounded)."""
        if limit not in LIMITS:
            raise ValueError(f"not a limit label: {limit!r}")
        self.limit_refusals.labels(limit).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
