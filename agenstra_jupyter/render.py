"""Agent output as safe HTML: markdown rendered, then sanitised (agent text is untrusted)."""

from __future__ import annotations

import html
import json
from functools import lru_cache
from typing import Any

import nh3
from markdown_it import MarkdownIt


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    # Raw HTML in the agent's markdown is shown as text, never interpreted.
    return MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")


def markdown_html(text: str) -> str:
    """Markdown to HTML with everything executable removed (scripts, handlers, js: URLs)."""
    return nh3.clean(_markdown().render(text), link_rel="noopener noreferrer nofollow")


def plain_html(text: str) -> str:
    """Text shown as is (while it streams): escaped, whitespace kept."""
    style = "white-space:pre-wrap;margin:0;font-family:inherit"
    return f'<pre style="{style}">{html.escape(text)}</pre>'


def tool_line(payload: dict[str, Any]) -> str:
    """One compact line for a tool call or its result."""
    name = html.escape(str(payload.get("name", "tool")))
    if "isError" in payload:
        mark = "✗" if payload.get("isError") else "✓"
        detail = payload.get("result")
    else:
        mark, detail = "⚙", payload.get("args")
    if detail is not None and not isinstance(detail, str):
        detail = json.dumps(detail, ensure_ascii=False)
    detail = html.escape((detail or "")[:160].replace("\n", " "))
    return f'<div style="font-size:85%;opacity:.8"><code>{mark} {name}</code> {detail}</div>'
