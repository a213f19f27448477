"""Metric labels a manager cannot multiply: made-up codes and event names count as 'other'."""

from __future__ import annotations

import prometheus_client

from agenstra_jupyter.controller import metrics
from agenstra_jupyter.protocol import ErrorCode, ManagerEvent


def _label_sets(name: str) -> int:
    return sum(len(family.samples) for family in prometheus_client.REGISTRY.collect()
               if family.name == name)


def test_made_up_events_and_codes_share_one_label():
    events = _label_sets("agenstra_controller_forwarded_events")
    errors = _label_sets("agenstra_controller_errors")
    for n in range(100):
        metrics.FORWARDED.labels(metrics.event_label(f"hostile-{n}")).inc()
        metrics.ERRORS.labels(metrics.code_label(f"CODE_{n}")).inc()
    # At most one new label ("other"): its _total and _created samples.
    assert _label_sets("agenstra_controller_forwarded_events") <= events + 2
    assert _label_sets("agenstra_controller_errors") <= errors + 2
    assert metrics.event_label(ManagerEvent.CHAT_MESSAGE) == ManagerEvent.CHAT_MESSAGE
    assert metrics.code_label(ErrorCode.NOT_LOGGED_IN) == ErrorCode.NOT_LOGGED_IN
