"""How big a turn may get, and how many may wait: sizes measured as Socket.IO frames carry them.

python-socketio encodes JSON with non-ASCII escaped, so a character can take up to 12 bytes
on the wire; every cap here counts those bytes, not characters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..protocol import MAX_FRAME_BYTES, AgenstraError, ErrorCode

TRUNCATED = "\n[truncated]"
# No stored message may outgrow this: the text and parts caps together stay under it, and
# rows stored before the caps existed are cut to it on replay.
MAX_STORED_MESSAGE = MAX_FRAME_BYTES // 2
# Room for an answer's other fields (exit code, usage, session id, ...).
MAX_EXTRA_BYTES = 64 * 1024
# What an answer keeps when its other fields are over that: what frontends read.
KEPT_KEYS = frozenset({"type", "result", "parts", "format", "cancelled", "interrupted",
                       "exitCode"})


def wire_size(value: Any) -> int:
    """Bytes `value` takes in a frame (strings count their quotes)."""
    return len(json.dumps(value, separators=(",", ":")))


_MARK_SIZE = wire_size(TRUNCATED) - 2


def clip_text(text: str, limit: int) -> tuple[str, bool]:
    """`text` cut to about `limit` wire bytes, marked "[truncated]"; and whether it was cut."""
    if len(text) <= limit and wire_size(text) - 2 <= limit:
        return text, False
    room = max(0, limit - _MARK_SIZE)
    keep = text[:room]  # a character takes a byte at least
    while keep and (size := wire_size(keep) - 2) > room:
        keep = keep[: len(keep) * room // size]  # shrinks every time; once if uniform
    return keep + TRUNCATED, True


def clip_parts(parts: list[Any], limit: int) -> tuple[list[Any], bool]:
    """The leading parts that fit in `limit` wire bytes; and whether any was dropped."""
    kept, used = [], 2
    for part in parts:
        used += wire_size(part) + 1
        if used > limit:
            return kept, True
        kept.append(part)
    return kept, False


def clip_diff(diff: Any, text_bytes: int, entries: int = 16) -> list[dict[str, Any]]:
    """An edit's `[{path, oldText, newText}]` with each text cut to `text_bytes` (a new
    file's oldText is None) and at most `entries` files; anything else in it is dropped."""
    if not isinstance(diff, list):
        return []

    def text(value: Any) -> str:
        return clip_text(value if isinstance(value, str) else "", text_bytes)[0]

    return [{"path": text(d.get("path")),
             "oldText": None if d.get("oldText") is None else text(d["oldText"]),
             "newText": text(d.get("newText"))}
            for d in diff[:entries] if isinstance(d, dict)]


@dataclass(frozen=True)
class TurnLimits:
    """Wire bytes of text and of parts (tool calls, results) one answer keeps and sends."""

    text_bytes: int = 1024 * 1024
    parts_bytes: int = 1024 * 1024


def fit_response(response: dict[str, Any], limits: TurnLimits) -> dict[str, Any]:
    """An agent response within `limits`; cut ones say `truncated: true`."""
    text, cut = clip_text(str(response.get("result") or ""), limits.text_bytes)
    fitted = {**response, "result": text}
    if isinstance(response.get("parts"), list):
        fitted["parts"], dropped = clip_parts(response["parts"], limits.parts_bytes)
        cut = cut or dropped
    extra = {k: v for k, v in fitted.items() if k not in ("result", "parts")}
    if wire_size(extra) > MAX_EXTRA_BYTES:
        fitted = {k: v for k, v in fitted.items() if k in KEPT_KEYS}
        cut = True
    if cut:
        fitted["truncated"] = True
    return fitted


# Replay: rows stored before the caps existed are cut to fit MAX_STORED_MESSAGE.
_REPLAY_LIMITS = TurnLimits(MAX_STORED_MESSAGE // 2, MAX_STORED_MESSAGE // 4)


def fit_stored(message: dict[str, Any]) -> dict[str, Any]:
    """A stored message as it may be sent again: unchanged unless it outgrew the frame."""
    if wire_size(message) <= MAX_STORED_MESSAGE:
        return message
    if isinstance(message.get("text"), str):
        message = {**message, "text": clip_text(message["text"], _REPLAY_LIMITS.text_bytes)[0]}
    if isinstance(message.get("response"), dict):
        message = {**message, "response": fit_response(message["response"], _REPLAY_LIMITS)}
    return message


class QueueLimits:
    """Turns one agent may have waiting, and bytes of messages waiting on all agents."""

    def __init__(self, turns: int = 32, total_bytes: int = 64 * 1024 * 1024) -> None:
        self.turns = turns
        self.total_bytes = total_bytes
        self.queued_bytes = 0

    def admit(self, waiting: int, size: int) -> None:
        """Count a turn of `size` bytes in; RATE_LIMITED (nothing counted) when full."""
        if waiting >= self.turns:
            raise AgenstraError(ErrorCode.RATE_LIMITED,
                                f"{waiting} turns are waiting already; send this one later", 429)
        if self.queued_bytes + size > self.total_bytes:
            raise AgenstraError(ErrorCode.RATE_LIMITED,
                                "Too many queued messages on this manager; send this one later",
                                429)
        self.queued_bytes += size

    def release(self, size: int) -> None:
        self.queued_bytes -= size
