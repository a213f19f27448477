"""ChatWidget: an agent's conversation in a notebook, built from stock ipywidgets.

The transcript is the agent's own: messages sent from the sidebar, another notebook or a
script appear here live, and the history is replayed when the widget is created. Agent
output is rendered as sanitised markdown; a streaming answer updates only its own bubble.
The transcript opens at the newest message and follows new ones while the user is at the
bottom; scrolled up, it stays put and offers "Jump to latest". When the agent asks before
it acts, a card shows the request (title, kind, paths, the diff as +/- lines) with one
button per option; once settled (here, in the sidebar, by policy or expiry) it becomes one
line: "Allowed by alice". "Attach variables" lists the kernel's variables; the chosen ones
go, summarised (agenstra_jupyter.variables), with the next message, shown folded in its
bubble.
"""

from __future__ import annotations

import html
import itertools
import logging
import re
import threading
from typing import Any

import ipywidgets as widgets
from markdown_it import MarkdownIt
from pygments.lexer import Lexer
from pygments.lexers import get_lexer_by_name
from pygments.token import (
    Comment,
    Error,
    Generic,
    Keyword,
    Name,
    Number,
    Operator,
    Punctuation,
    String,
)
from pygments.util import ClassNotFound

from .client import AgenstraClient, AgenstraError, Agent, connect
from .protocol import (
    FORMAT_MARKDOWN,
    FORMAT_TEXT,
    ChatEventKind,
    ErrorCode,
    ManagerEvent,
    ResponseFormat,
    response_format,
)
from .render import (
    diff_html,
    markdown_html,
    option_label,
    option_title,
    permission_summary,
    plain_html,
    text_html,
    tool_line,
)
from .variables import UnknownVariables, context_block, public_names, split_context, with_context

# Text colour set with its background, from pairs that meet WCAG AA (4.5:1) in the light
# and dark themes (font-color1 on layout-color1/2); accents are borders, as in the sidebar
# (brand-color3 and error-color3 stay pale in the dark theme: white text on them is unreadable).
_TEXT = "color:var(--jp-ui-font-color1, #212121);"
BUBBLE = {
    "user": "margin:4px 0 4px 20%;padding:6px 10px;border-radius:8px;" + _TEXT +
            "background:var(--jp-layout-color2, #eeeeee);"
            "border-right:3px solid var(--jp-brand-color1, #1976d2)",
    "agent": "margin:4px 20% 4px 0;padding:6px 10px;border-radius:8px;" + _TEXT +
             "background:var(--jp-layout-color1, #ffffff);"
             "border:1px solid var(--jp-border-color2, #e0e0e0)",
    "error": "margin:4px 20% 4px 0;padding:6px 10px;border-radius:8px;" + _TEXT +
             "background:var(--jp-layout-color2, #eeeeee);"
             "border-left:3px solid var(--jp-error-color1, #d32f2f)",
}
NOTICE = ("margin:2px 0;padding:3px 8px;border-radius:2px;font-size:90%;line-height:1.4;"
          "background:var(--jp-layout-color2, #f5f5f5);color:var(--jp-ui-font-color1, #212121);"
          "border-left:3px solid ")
NOTICE_COLOR = {"warning": "var(--jp-warn-color1, #f57c00)",
                "error": "var(--jp-error-color1, #d32f2f)"}
UNSANDBOXED = "Agents on this manager run without a sandbox (AGENSTRA_SANDBOX=none)"
NO_SANDBOX = "Agents cannot run: no working sandbox on this host"
log = logging.getLogger(__name__)
CARD = ("margin:4px 20% 4px 0;padding:6px 10px;border-radius:8px;" + _TEXT +
        "background:var(--jp-layout-color1, #ffffff);"
        "border:1px solid var(--jp-warn-color1, #f57c00);border-left-width:4px")
SETTLED = "font-size:85%;opacity:.85;margin:2px 0"
OPTION_STYLE = {"allow_once": "success", "allow_always": "success", "reject_once": "danger",
                "reject_always": "danger"}
STATES = {"connected": "● connected", "reconnecting": "◌ reconnecting…",
          "disconnected": "○ disconnected"}


# Code blocks as the sidebar shows them: on the editor's background, long lines scrolling
# (a wrapped line would read as two), tokens in JupyterLab's own editor colours.
CODE_BLOCK = ("margin:4px 0;padding:6px;overflow-x:auto;white-space:pre;overflow-wrap:normal;"
              "background:var(--jp-cell-editor-background, #f5f5f5);"
              "border:1px solid var(--jp-cell-editor-border-color, #e0e0e0);border-radius:2px;"
              "color:var(--jp-content-font-color1, #212121);"
              "font-family:var(--jp-code-font-family, monospace);"
              "font-size:var(--jp-code-font-size, 13px);"
              "line-height:var(--jp-code-line-height, 1.4)")
TOKEN_COLOR = {
    Keyword: "keyword", Operator.Word: "keyword", Name.Builtin: "builtin",
    Name.Function: "def", Name.Class: "def", Name.Decorator: "meta", Name.Tag: "tag",
    Name.Attribute: "attribute", String: "string", Number: "number", Comment: "comment",
    Operator: "operator", Punctuation: "punctuation", Generic.Heading: "header", Error: "error",
}
# The transcript's scrolling, which ipywidgets cannot do from the kernel: a column-reverse
# box opens at its end and stays there while content grows at it, the browser's scroll
# anchoring keeps a scrolled-up view where it is, and a scroll-driven animation shows
# "Jump to latest" only while the view is more than 40px above the end.
TRANSCRIPT_CSS = """<style>
.agenstra-chat .agenstra-scroller {display:flex; flex-direction:column-reverse;
  overflow-y:auto; overflow-x:hidden; max-height:480px}
.agenstra-chat .agenstra-transcript {flex-shrink:0; overflow:visible}
.agenstra-chat .agenstra-transcript > .widget-html {min-width:0; margin:0}
.agenstra-chat .agenstra-transcript .widget-html-content {min-width:0; line-height:1.4}
.agenstra-chat .agenstra-jump {position:sticky; bottom:0; height:0; overflow:visible;
  align-self:center; z-index:1; visibility:hidden; animation:agenstra-jump linear;
  animation-timeline:scroll(nearest block); animation-range:40px 100%}
.agenstra-chat .agenstra-jump button {position:relative; top:-40px}
@keyframes agenstra-jump {from, to {visibility:visible}}
</style>"""
_FENCES = MarkdownIt("commonmark", {"html": False}).enable("table")
_CODE_BLOCK = re.compile(r"<pre><code>(.*?)</code></pre>", re.DOTALL)


def bubble_html(message: dict[str, Any]) -> str:
    if message.get("from") == "user":
        context, text = split_context(message.get("text", ""))
        return f'<div style="{BUBBLE["user"]}">{context_html(context)}{plain_html(text)}</div>'
    response = message.get("response") or {}
    if response.get("type") == "error":
        return f'<div style="{BUBBLE["error"]}">{plain_html(response.get("result", ""))}</div>'
    tools = "".join(tool_line(p) if p.get("kind") != "permission" else settled_html(p)
                    for p in response.get("parts", [])
                    if p.get("kind") in (ChatEventKind.TOOL_CALL, ChatEventKind.TOOL_RESULT,
                                         "permission"))
    text = response.get("result", "")
    if response_format(response) == FORMAT_TEXT:  # command output: line for line
        body = text_html(text)
    else:
        body = styled_code_blocks(text, markdown_html(text))
    return f'<div style="{BUBBLE["agent"]}">{tools}{body}</div>'


def context_html(context: str) -> str:
    """The kernel context a message was sent with, folded under its first line."""
    if not context:
        return ""
    title = html.escape(context.splitlines()[0].rstrip(":"))
    return (f'<details class="agenstra-context"><summary style="{SETTLED}">{title}</summary>'
            f"{text_html(context)}</details>")


def request_html(request: dict[str, Any]) -> str:
    """A pending request's card body: what the agent wants to do, where, and the diff."""
    title = html.escape(str(request.get("title") or "The agent asks"))
    kind = html.escape(str(request.get("kind") or "other"))
    shown = {str(item.get("path")) for item in request.get("diff") or []
             if isinstance(item, dict)}  # a diff names its file itself
    paths = "".join(f"<div><code>{html.escape(str(p))}</code></div>"
                    for p in request.get("paths") or [] if str(p) not in shown)
    expires = _clock(str(request.get("expiresAt") or ""))
    until = f'<div style="{SETTLED}">expires at {html.escape(expires)}</div>' if expires else ""
    return (f'<div><b>⚠ {title}</b> <span style="{SETTLED}">({kind})</span></div>'
            f"{paths}{diff_html(request.get('diff'))}{until}")


def _clock(timestamp: str) -> str:
    """"2026-12-01T15:27:26.935Z" as "15:27:26 UTC" (the text itself if it is not one)."""
    match = re.match(r"\d{4}-\d\d-\d\dT(\d\d:\d\d:\d\d)", timestamp)
    return f"{match[1]} UTC" if match else timestamp


def settled_html(resolution: dict[str, Any], title: str | None = None) -> str:
    """A settled request in one line ("Allowed by alice: Write note.txt")."""
    line = permission_summary(resolution, title if title is not None else
                              str(resolution.get("title") or ""))
    mark = "✓" if resolution.get("outcome") == "allowed" else "✗"
    return f'<div style="{SETTLED}" data-outcome="{html.escape(str(resolution.get("outcome")))}">' \
        f"<code>{mark}</code> {html.escape(line)}</div>"


class _Card:
    """A request's card: its text and one button per option, then its one settled line."""

    def __init__(self, request: dict[str, Any], answer: Any) -> None:
        self.request = request
        self.body = widgets.HTML(request_html(request))
        self.note = widgets.HTML()
        self.buttons = []
        for option in request.get("options") or []:
            button = widgets.Button(description=option_label(option),
                                    button_style=OPTION_STYLE.get(option.get("kind"), ""),
                                    tooltip=option_title(option))
            button.on_click(lambda _, o=option["optionId"]: answer(self, o))
            self.buttons.append(button)
        self.widget = widgets.VBox([self.body, widgets.HBox(self.buttons), self.note])
        self.widget.add_class("agenstra-permission")
        self.widget.layout.border = "1px solid var(--jp-warn-color1, #f57c00)"
        self.widget.layout.padding = "4px 8px"
        self.widget.layout.margin = "4px 20% 4px 0"

    def settle(self, resolution: dict[str, Any]) -> None:
        self.widget.children = (widgets.HTML(settled_html(resolution,
                                                          str(self.request.get("title") or ""))),)
        self.widget.layout.border = ""
        self.widget.layout.padding = "0 10px"


def styled_code_blocks(text: str, markup: str) -> str:
    """`markup` (the sanitised HTML of markdown `text`) with each code block styled as the
    sidebar's and highlighted by its fence's language. The code comes from the parsed
    markdown, block by block in document order, escaped token by token."""
    blocks = iter([t for t in _FENCES.parse(text) if t.type in ("fence", "code_block")])

    def styled(match: re.Match[str]) -> str:
        token = next(blocks, None)
        body = highlight(token.content, token.info) if token is not None else match[1]
        return f'<pre style="{CODE_BLOCK}"><code>{body}</code></pre>'

    return _CODE_BLOCK.sub(styled, markup)


def highlight(code: str, language: str) -> str:
    """Code as escaped HTML, its tokens coloured when `language` names a known lexer."""
    lexer = _lexer(language)
    if lexer is None:
        return html.escape(code)
    parts = []
    tokens = ((_token_color(kind), value) for kind, value in lexer.get_tokens(code))
    for color, runs in itertools.groupby(tokens, key=lambda token: token[0]):
        text = html.escape("".join(value for _, value in runs))
        parts.append(f'<span style="color:var(--jp-mirror-editor-{color}-color)">{text}</span>'
                     if color else text)
    return "".join(parts)


def _lexer(language: str) -> Lexer | None:
    name = language.split()[0] if language.strip() else ""
    try:
        return get_lexer_by_name(name, stripnl=False) if name else None
    except ClassNotFound:
        return None


def _token_color(kind: Any) -> str | None:
    while kind not in TOKEN_COLOR and kind.parent is not None:
        kind = kind.parent
    return TOKEN_COLOR.get(kind)


def sandbox_notice_html(catalog: dict[str, Any], runtime: str | None) -> str:
    """A warning when the runtime's agents are not sandboxed, an error when they cannot run."""
    runtimes = catalog.get("runtimes") or []
    name = runtime or next((r.get("name") for r in runtimes if r.get("default")), None)
    info = next((r for r in runtimes if r.get("name") == name), {})
    if info.get("sandbox") == "missing":
        level, text = "error", str(info.get("problem") or NO_SANDBOX)
    elif info.get("sandbox") == "none":
        level, text = "warning", UNSANDBOXED
    else:
        return ""
    body = re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))
    return f'<div style="{NOTICE}{NOTICE_COLOR[level]}" data-level="{level}">⚠ {body}</div>'


class _LiveTurn:
    """The bubble of an answer being streamed: its text and tool lines so far."""

    def __init__(self) -> None:
        self.widget = widgets.HTML()
        self.text = ""
        self.tools: list[str] = []
        self.format: ResponseFormat = FORMAT_MARKDOWN  # a `status` event may say `text`

    def render(self) -> None:
        body = text_html(self.text) if self.format == FORMAT_TEXT else plain_html(self.text)
        self.widget.value = f'<div style="{BUBBLE["agent"]}">{"".join(self.tools)}{body}</div>'


class ChatWidget(widgets.VBox):
    def __init__(self, agent: str | None = None, client: AgenstraClient | None = None,
                 namespace: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """`namespace`: where "Attach variables" finds them (the kernel's user namespace
        unless given)."""
        self.client = client or connect()
        self._namespace, self._hidden = _user_namespace(namespace)
        names = [a["name"] for a in self.client.agents()]
        self.picker = widgets.Dropdown(options=names, value=agent or (names[0] if names else None),
                                       description="Agent")
        self.status = widgets.HTML(STATES.get(self.client.state, self.client.state))
        self.sandbox = widgets.HTML()  # shown only while agents are not sandboxed
        self.transcript = widgets.VBox()
        self.transcript.add_class("agenstra-transcript")
        self.jump_button = widgets.Button(description="Jump to latest", icon="arrow-down")
        self._jump = widgets.Box([self.jump_button])
        self._jump.add_class("agenstra-jump")
        self.scroller = self._scroll_box()
        self.variables = widgets.SelectMultiple(options=[], rows=6,
                                                layout=widgets.Layout(width="100%"))
        self.attach = widgets.Accordion([self.variables], titles=("Attach variables",),
                                        selected_index=None)
        self.input = widgets.Textarea(placeholder="Message the agent…",
                                      layout=widgets.Layout(width="100%"))
        self.send_button = widgets.Button(description="Send", button_style="primary")
        self.cancel_button = widgets.Button(description="Cancel", button_style="",
                                            layout=widgets.Layout(display="none"))
        self.error = widgets.HTML()
        super().__init__([
            widgets.HBox([self.picker, self.status]), self.sandbox, self.scroller, self.attach,
            self.input,
            widgets.HBox([self.send_button, self.cancel_button]), self.error,
            widgets.HTML(TRANSCRIPT_CSS, layout=widgets.Layout(display="none")),
        ], **kwargs)
        self.add_class("agenstra-chat")
        self.agent: Agent | None = None
        self._unsubscribe: Any = None
        self._live: dict[str, _LiveTurn] = {}
        self._running: set[str] = set()  # turns asked for and not answered yet
        self._cards: dict[str, _Card] = {}  # requests shown, until their turn's answer
        self._shown_seq = 0  # the last message shown: seq grows strictly per agent
        self._lock = threading.RLock()
        self.send_button.on_click(lambda _: self.send())
        self.cancel_button.on_click(lambda _: self.cancel())
        self.jump_button.on_click(lambda _: self.jump())
        self.picker.observe(lambda change: self.use(change["new"]), names="value")
        self.attach.observe(lambda change: self.refresh_variables()
                            if change["new"] is not None else None, names="selected_index")
        self.refresh_variables()
        self.client.on_state(lambda state: setattr(self.status, "value", STATES.get(state, state)))
        if self.picker.value:
            self.use(self.picker.value)

    def _scroll_box(self) -> widgets.Box:
        box = widgets.Box([self._jump, self.transcript])
        box.add_class("agenstra-scroller")
        return box

    # -- actions -------------------------------------------------------------------------

    def use(self, name: str) -> None:
        """Show (and talk to) another agent."""
        # Outside the lock: this may wait up to 120 s for a login on the client's thread,
        # where the old agent's _on_event may be waiting for the lock meanwhile.
        agent = self.client.agent(name)
        with self._lock:
            if self._unsubscribe:
                self._unsubscribe()
            self.transcript.children, self._live, self._shown_seq = (), {}, 0
            self._running.clear()
            self._cards = {}
            self.agent = agent
            for message in list(self.agent.messages):
                self._add_message(message)
            for request in self.agent.pending_permissions():  # asked before we looked
                self._show_request(request)
            self._unsubscribe = self.agent.subscribe(self._on_event)
            agent = self.agent
        self.jump()  # another transcript opens at its newest message too
        self.sandbox.value = self._sandbox_notice(agent)

    def _sandbox_notice(self, agent: Agent) -> str:
        try:
            listing = self.client.agents(agent.client_id)
            catalog = self.client.providers(agent.client_id)
        except Exception as exc:  # an older or unreachable manager: no notice, no failure
            log.debug("no sandbox state for %s: %s", agent.name, exc)
            return ""
        runtime = next((a.get("runtime") for a in listing if a.get("id") == agent.id), None)
        return sandbox_notice_html(catalog, runtime)

    def send(self, text: str | None = None) -> None:
        message = (self.input.value if text is None else text).strip()
        if not message or self.agent is None:
            return
        if self.variables.value:  # the chosen variables' summaries go in front
            try:
                block = context_block(self._namespace, self.variables.value, self._hidden)
            except UnknownVariables as exc:  # deleted since: say so, send nothing
                self.error.value = plain_html(str(exc))
                self.refresh_variables()
                return
            message = with_context(block, message)
        self.input.value = ""
        self.error.value = ""
        self.variables.value = ()  # for this message only
        self.agent.send(message, on_error=lambda exc: setattr(self.error, "value",
                                                              plain_html(str(exc))))

    def refresh_variables(self) -> None:
        """List the namespace's variables now (on opening the picker); the chosen ones that
        still exist stay chosen."""
        names = public_names(self._namespace, self._hidden)
        chosen = tuple(name for name in self.variables.value if name in names)
        self.variables.options = names
        self.variables.value = chosen

    def jump(self) -> None:
        """Show the newest message. The kernel cannot scroll a view, but a new scroll box
        (around the same transcript) opens at its end."""
        old, self.scroller = self.scroller, self._scroll_box()
        self.children = tuple(self.scroller if child is old else child for child in self.children)
        old.close()

    def cancel(self) -> None:
        if self.agent is not None:
            try:
                self.agent.cancel()
            except AgenstraError as exc:
                self.error.value = plain_html(str(exc))

    # -- events (client thread) ----------------------------------------------------------

    def _on_event(self, event: str, payload: dict[str, Any]) -> None:
        with self._lock:
            if event == ManagerEvent.CHAT_MESSAGE:
                self._add_message(payload)
            elif event == ManagerEvent.CHAT_EVENT:
                self._stream(payload)
            elif event == ManagerEvent.ERROR and payload.get("code") != ErrorCode.UNKNOWN_REQUEST:
                # (an answer too late: its card says so)
                self.error.value = plain_html(payload.get("message", "error"))

    def _add_message(self, message: dict[str, Any]) -> None:
        if message.get("seq", 0) <= self._shown_seq:
            return
        self._shown_seq = message["seq"]
        self._track(message)
        bubble = widgets.HTML(bubble_html(message))
        live = self._live.pop(message.get("correlationId", ""), None)
        children = list(self.transcript.children)
        if message.get("from") == "agent":  # its parts list the requests, one line each
            for request_id, card in list(self._cards.items()):
                if card.request.get("correlationId") == message.get("correlationId"):
                    del self._cards[request_id]
                    children = [c for c in children if c is not card.widget]
        if message.get("from") == "agent" and live is not None and live.widget in children:
            children[children.index(live.widget)] = bubble  # the final answer replaces it
        else:
            children.append(bubble)
        self.transcript.children = tuple(children)

    def _track(self, message: dict[str, Any]) -> None:
        """Cancel is offered while a turn runs: from its question to its answer."""
        turn = message.get("correlationId", "")
        if message.get("from") == "user":
            self._running.add(turn)
        else:
            self._running.discard(turn)
        self.cancel_button.layout.display = "" if self._running else "none"

    def _show_request(self, request: dict[str, Any]) -> None:
        if request.get("requestId") in self._cards:
            return  # sent again after a login
        card = self._cards[request["requestId"]] = _Card(request, self._answer)
        self.transcript.children = (*self.transcript.children, card.widget)

    def _answer(self, card: _Card, option_id: str) -> None:
        """A button's click: the answer goes to the manager; its resolution settles the card
        (whoever's answer came first)."""
        if self.agent is None:
            return
        for button in card.buttons:
            button.disabled = True
        try:
            self.agent.respond(card.request["requestId"], option_id)
        except AgenstraError as exc:
            settled = exc.code == ErrorCode.UNKNOWN_REQUEST
            card.note.value = plain_html("Already answered elsewhere" if settled else str(exc))
            for button in card.buttons:
                button.disabled = settled

    def _permission(self, kind: str, payload: dict[str, Any], correlation_id: str) -> None:
        if kind == ChatEventKind.PERMISSION_REQUEST:
            self._show_request({**payload, "correlationId": correlation_id})
        elif (card := self._cards.get(payload.get("requestId", ""))) is not None:
            card.settle(payload)

    def _stream(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind in (ChatEventKind.PERMISSION_REQUEST, ChatEventKind.PERMISSION_RESOLVED):
            if isinstance(event.get("payload"), dict) and event["payload"].get("requestId"):
                self._permission(kind, event["payload"], event.get("correlationId", ""))
            return
        live = self._live.get(event["correlationId"])
        if live is None:
            live = self._live[event["correlationId"]] = _LiveTurn()
            self.transcript.children = (*self.transcript.children, live.widget)
        kind, payload = event.get("kind"), event.get("payload") or {}
        if kind == ChatEventKind.ASSISTANT_DELTA:
            live.text += payload.get("delta", "")
        elif kind in (ChatEventKind.TOOL_CALL, ChatEventKind.TOOL_RESULT):
            live.tools.append(tool_line(payload))
        elif kind == ChatEventKind.STATUS and response_format(payload) == FORMAT_TEXT:
            live.format = FORMAT_TEXT
        else:
            return
        live.render()  # only this bubble changes; the transcript is not rebuilt


def _user_namespace(namespace: dict[str, Any] | None) -> tuple[dict[str, Any], set[str]]:
    """The namespace to attach variables from, and the names in it that are IPython's own."""
    if namespace is not None:
        return namespace, set()
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:  # not in a kernel: nothing to attach
        return {}, set()
    return shell.user_ns, set(getattr(shell, "user_ns_hidden", ()))
