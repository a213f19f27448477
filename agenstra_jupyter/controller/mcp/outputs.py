"""Cells and their outputs as an agent reads them: text with clear markers, images as MCP
image content, everything bounded (long text cut with a note saying how much is left out).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any

from mcp.types import ImageContent, TextContent

from .notebooks import NotebookToolLimits

IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
TEXT_TYPES = ("text/plain", "text/markdown", "text/latex", "image/svg+xml", "text/html",
              "application/json")
TRACEBACK_LINES = 30  # the end of a traceback: where the error is
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][A-Z0-9]|\x1b[=>]")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def cut(text: str, limit: int) -> str:
    """`text` up to `limit` characters, with a note saying how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n… {len(text) - limit:,} more characters"


def joined(value: Any) -> str:
    """nbformat text: a string or a list of lines."""
    return "".join(value) if isinstance(value, list) else str(value or "")


@dataclass
class Reply:
    """A tool's content blocks as they are built: text runs and images, within limits."""

    limits: NotebookToolLimits
    blocks: list[TextContent | ImageContent] = field(default_factory=list)
    _text: list[str] = field(default_factory=list)
    used: int = 0
    images: int = 0
    full: bool = False

    def text(self, text: str) -> bool:
        """Add text; False (and a note, once) when the result's text budget is spent."""
        if self.full:
            return False
        room = self.limits.max_result_chars - self.used
        if len(text) > room:
            self._text.append(text[:max(room, 0)])
            self._text.append(f"\n… {len(text) - max(room, 0):,} more characters: the "
                              f"result is limited to {self.limits.max_result_chars:,} "
                              "characters (read fewer cells with start/count)\n")
            self.used = self.limits.max_result_chars
            self.full = True
            return False
        self._text.append(text)
        self.used += len(text)
        return True

    def note(self, text: str) -> None:
        """A short note outside the budget (where to read on)."""
        self._text.append(text)

    def image(self, mime: str, data: str) -> str:
        """Attach an image (base64); a note for the text instead when it cannot be."""
        try:
            size = len(base64.b64decode(data, validate=False))
        except (binascii.Error, ValueError):
            return f"[{mime}: not valid base64, not shown]"
        if size > self.limits.max_image_bytes:
            return (f"[{mime}, {size:,} bytes: larger than the {self.limits.max_image_bytes:,} "
                    "bytes shown to agents]")
        if self.images >= self.limits.max_images or self.full:
            return f"[{mime}, {size:,} bytes: not attached, {self.limits.max_images} images " \
                   "per result at most]"
        self._flush()
        self.blocks.append(ImageContent(type="image", data=data, mime_type=mime))
        self.images += 1
        return f"[{mime}, {size:,} bytes: attached as image {self.images}]"

    def _flush(self) -> None:
        if self._text:
            self.blocks.append(TextContent(type="text", text="".join(self._text)))
            self._text = []

    def content(self) -> list[TextContent | ImageContent]:
        self._flush()
        return self.blocks or [TextContent(type="text", text="(nothing)")]


def add_outputs(reply: Reply, outputs: list[Any]) -> None:
    """Each output as text (images attached), numbered."""
    limit = reply.limits.max_output_chars
    for number, output in enumerate(outputs, 1):
        kind = output.get("output_type")
        if kind == "stream":
            head = f"--- output {number}: {output.get('name', 'stdout')}\n"
            body = cut(strip_ansi(joined(output.get("text"))), limit)
        elif kind == "error":
            head = f"--- output {number}: error\n"
            body = error_text(output, limit)
        elif kind in ("execute_result", "display_data"):
            count = output.get("execution_count")
            head = f"--- output {number}: " + (f"result [{count}]\n" if kind == "execute_result"
                                               and count else "display\n")
            if not reply.text(head):  # first: an attached image follows its header
                return
            head, body = "", _data_text(reply, output.get("data") or {}, limit)
        else:
            head, body = f"--- output {number}: {kind}\n", ""
        if not reply.text(head + body.rstrip("\n") + "\n"):
            return


def error_text(output: Any, limit: int) -> str:
    """`ename: evalue` and the end of the traceback, without terminal colours."""
    lines = strip_ansi("\n".join(map(str, output.get("traceback") or []))).splitlines()
    shown = lines[-TRACEBACK_LINES:]
    note = f"… {len(lines) - len(shown)} earlier traceback lines\n" if len(lines) > len(shown) \
        else ""
    head = f"{output.get('ename', 'Error')}: {strip_ansi(str(output.get('evalue', '')))}\n"
    return cut(head + note + "\n".join(shown), limit)


def _data_text(reply: Reply, data: dict, limit: int) -> str:
    """An output's mime bundle: the images attached, and its best text form."""
    parts = [reply.image(mime, joined(data[mime]).replace("\n", ""))
             for mime in IMAGE_TYPES if mime in data]
    text_mime = next((mime for mime in TEXT_TYPES if mime in data), None)
    if text_mime is not None:
        value = data[text_mime]
        text = value if isinstance(value, str) else joined(value) if isinstance(value, list) \
            else str(value)
        label = "" if text_mime == "text/plain" else f"[{text_mime}]\n"
        parts.append(label + cut(strip_ansi(text), limit))
    others = [mime for mime in data if mime not in IMAGE_TYPES and mime != text_mime]
    if others and not parts:
        parts.append(f"[{', '.join(others)}: not shown as text]")
    return "\n".join(parts)
