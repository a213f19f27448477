"""Prometheus metrics of the controller, on the Jupyter server's own /metrics."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from ..protocol import ERROR_CODES, MANAGER_EVENTS

FRONTENDS = Gauge("agenstra_controller_frontends", "Connected frontend sockets")
LINKS = Gauge("agenstra_controller_manager_links", "Links to managers, by state", ["state"])
RECONNECTS = Counter("agenstra_controller_reconnects_total", "Manager links re-established")
FORWARDED = Counter("agenstra_controller_forwarded_events_total",
                    "Manager events forwarded to frontends", ["event"])
ERRORS = Counter("agenstra_controller_errors_total", "Errors sent to frontends", ["code"])
TURN_SECONDS = Histogram(
    "agenstra_controller_turn_seconds", "From a forwarded chat to its answer forwarded",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)


def event_label(event: str) -> str:
    """A label that a manager cannot multiply by sending made-up event names."""
    return event if event in MANAGER_EVENTS else "other"


_forwarded: dict[str, Any] = {}  # FORWARDED's children by label: labels() per event showed


def count_forwarded(event: str) -> None:
    label = event_label(event)
    child = _forwarded.get(label)
    if child is None:
        child = _forwarded[label] = FORWARDED.labels(label)
    child.inc()


def code_label(code: str) -> str:
    return code if code in ERROR_CODES else "other"
