"""Prometheus metrics, all prefixed `ofnotify_`, in a registry of our own.

Module-level, as is idiomatic for prometheus_client: the places that count things
import what they count. Depth and lag gauges are refreshed by `refresh_gauges`.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # RSS, CPU, open files of this process
PlatformCollector(registry=REGISTRY)

DECIDED = Counter(
    "ofnotify_notifications_decided_total",
    "Notifications queued by the policy",
    ["channel", "source"],
    registry=REGISTRY,
)
SENT = Counter(
    "ofnotify_notifications_sent_total",
    "Notifications the channel accepted",
    ["channel"],
    registry=REGISTRY,
)
FAILED = Counter(
    "ofnotify_notifications_failed_total",
    "Notifications given up on",
    ["channel", "reason"],  # permanent | target_invalid | attempts_exhausted | skipped
    registry=REGISTRY,
)
CANCELLED = Counter(
    "ofnotify_notifications_cancelled_total",
    "Notifications dropped on purpose before sending",
    ["channel", "reason"],  # read | online | duplicate | nothing_unread | other
    registry=REGISTRY,
)
RETRIED = Counter(
    "ofnotify_send_retries_total",
    "Temporary send failures that were rescheduled",
    ["channel"],
    registry=REGISTRY,
)
SEND_LATENCY = Histogram(
    "ofnotify_send_latency_seconds",
    "Time the channel took to answer one send",
    ["channel"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
PUBLISHES = Counter(
    "ofnotify_publishes_total",
    "XEP-0357 publishes by answer (accepted or the error condition)",
    ["outcome"],
    registry=REGISTRY,
)
INPUT_PAUSES = Counter(
    "ofnotify_xmpp_input_pauses_total",
    "Times reading from the XMPP server was paused because too many publishes were in flight",
    registry=REGISTRY,
)
OUTBOX_DEPTH = Gauge(
    "ofnotify_outbox_depth", "Pending notifications in the outbox", registry=REGISTRY
)
OUTBOX_OLDEST_DUE_AGE = Gauge(
    "ofnotify_outbox_oldest_due_age_seconds",
    "How overdue the oldest due notification is (0 when none is overdue)",
    registry=REGISTRY,
)
WATCHER_LAG = Gauge(
    "ofnotify_watcher_lag_seconds",
    "Age of the newest offline message when the watcher picked it up",
    registry=REGISTRY,
)
WATCHER_POLL_DB = Histogram(
    "ofnotify_watcher_poll_db_seconds",
    "Database time of one watcher poll",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1),
    registry=REGISTRY,
)
WATCHER_LAST_SUCCESS = Gauge(
    "ofnotify_watcher_last_success_timestamp_seconds",
    "When the watcher last read Openfire successfully",
    registry=REGISTRY,
)
XMPP_CONNECTED = Gauge(
    "ofnotify_xmpp_connected", "1 while the component stream is up", registry=REGISTRY
)


def cancel_reason(text: str) -> str:
    """Few label values, stable for dashboards, derived from the logged reason."""
    lowered = text.lower()
    for needle, label in (
        ("online", "online"),
        ("already pushed", "duplicate"),
        ("read or delivered", "read"),
        ("nothing unread", "nothing_unread"),
    ):
        if needle in lowered:
            return label
    return "other"
