"""Prometheus metrics of the manager, served at /metrics (API key required)."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

SOCKETS = Gauge("agenstra_manager_sockets", "Connected controller sockets")
TURNS_IN_FLIGHT = Gauge("agenstra_manager_turns_in_flight", "Turns queued or running")
TURN_SECONDS = Histogram(
    "agenstra_manager_turn_seconds", "From a user message stored to its answer stored",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
MESSAGES = Counter("agenstra_manager_messages_total", "Messages stored", ["sender"])
LOGINS = Counter("agenstra_manager_logins_total", "Agent logins", ["result"])
ERRORS = Counter("agenstra_manager_errors_total", "Errors sent to clients", ["code"])


_stored: dict[str, Any] = {}  # MESSAGES' children by sender: labels() per message showed


def count_message(sender: str) -> None:
    child = _stored.get(sender)
    if child is None:
        child = _stored[sender] = MESSAGES.labels(sender)
    child.inc()
