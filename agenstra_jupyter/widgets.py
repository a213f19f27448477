"""ChatWidget: an agent's conversation in a notebook, built from stock ipywidgets.

The transcript is the agent's own: messages sent from the sidebar, another notebook or a
script appear here live, and the history is replayed when the widget is created. Agent
output is rendered as sanitised markdown; a streaming answer updates only its own bubble.
"""

from __future__ import annotations

import html
import logging
import re
import threading
from typing import Any

import ipywidgets as widgets

from .client import AgenstraClient, AgenstraError, Agent, connect
from .protocol import ChatEventKind, ManagerEvent
from .render import markdown_html, plain_html, tool_line

BUBBLE = {
    "user": "margin:4px 0 4px 20%;padding:6px 10px;border-radius:8px;"
            "background:var(--jp-brand-color3, #e3f2fd)",
    "agent": "margin:4px 20% 4px 0;padding:6px 10px;border-radius:8px;"
             "background:var(--jp-layout-color2, #f5f5f5)",
    "error": "margin:4px 20% 4px 0;padding:6px 10px;border-radius:8px;"
             "background:var(--jp-error-color3, #ffebee)",
}
NOTICE = ("margin:2px 0;padding:3px 8px;border-radius:2px;font-size:90%;line-height:1.4;"
          "background:var(--jp-layout-color2, #f5f5f5);color:var(--jp-ui-font-color1, #212121);"
          "border-left:3px solid ")
NOTICE_COLOR = {"warning": "var(--jp-warn-color1, #f57c00)",
                "error": "var(--jp-error-color1, #d32f2f)"}
UNSANDBOXED = "Agents on this manager run without a sandbox (AGENSTRA_SANDBOX=none)"
NO_SANDBOX = "Agents cannot run: no working sandbox on this host"
log = logging.getLogger(__name__)
STATES = {"connected": "● connected", "reconnecting": "◌ reconnecting…",
          "disconnected": "○ disconnected"}


def bubble_html(message: dict[str, Any]) -> str:
    if message.get("from") == "user":
        return f'<div style="{BUBBLE["user"]}">{plain_html(message.get("text", ""))}</div>'
    response = message.get("response") or {}
    if response.get("type") == "error":
        return f'<div style="{BUBBLE["error"]}">{plain_html(response.get("result", ""))}</div>'
    tools = "".join(tool_line(p) for p in response.get("parts", [])
                    if p.get("kind") in (ChatEventKind.TOOL_CALL, ChatEventKind.TOOL_RESULT))
    body = markdown_html(response.get("result", ""))
    return f'<div style="{BUBBLE["agent"]}">{tools}{body}</div>'


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

    def render(self) -> None:
        self.widget.value = (f'<div style="{BUBBLE["agent"]}">{"".join(self.tools)}'
                             f"{plain_html(self.text)}</div>")


class ChatWidget(widgets.VBox):
    def __init__(self, agent: str | None = None, client: AgenstraClient | None = None,
                 **kwargs: Any) -> None:
        self.client = client or connect()
        names = [a["name"] for a in self.client.agents()]
        self.picker = widgets.Dropdown(options=names, value=agent or (names[0] if names else None),
                                       description="Agent")
        self.status = widgets.HTML(STATES.get(self.client.state, self.client.state))
        self.sandbox = widgets.HTML()  # shown only while agents are not sandboxed
        self.transcript = widgets.VBox(layout=widgets.Layout(max_height="480px",
                                                             overflow_y="auto"))
        self.input = widgets.Textarea(placeholder="Message the agent…",
                                      layout=widgets.Layout(width="100%"))
        self.send_button = widgets.Button(description="Send", button_style="primary")
        self.cancel_button = widgets.Button(description="Cancel", button_style="warning")
        self.error = widgets.HTML()
        super().__init__([
            widgets.HBox([self.picker, self.status]), self.sandbox, self.transcript, self.input,
            widgets.HBox([self.send_button, self.cancel_button]), self.error,
        ], **kwargs)
        self.agent: Agent | None = None
        self._unsubscribe: Any = None
        self._live: dict[str, _LiveTurn] = {}
        self._shown: set[str] = set()
        self._lock = threading.RLock()
        self.send_button.on_click(lambda _: self.send())
        self.cancel_button.on_click(lambda _: self.cancel())
        self.picker.observe(lambda change: self.use(change["new"]), names="value")
        self.client.on_state(lambda state: setattr(self.status, "value", STATES.get(state, state)))
        if self.picker.value:
            self.use(self.picker.value)

    # -- actions -------------------------------------------------------------------------

    def use(self, name: str) -> None:
        """Show (and talk to) another agent."""
        with self._lock:
            if self._unsubscribe:
                self._unsubscribe()
            self.transcript.children, self._live, self._shown = (), {}, set()
            self.agent = self.client.agent(name)
            for message in list(self.agent.messages):
                self._add_message(message)
            self._unsubscribe = self.agent.subscribe(self._on_event)
            agent = self.agent
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
        self.input.value = ""
        self.error.value = ""
        self.agent.send(message)

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
            elif event == ManagerEvent.ERROR:
                self.error.value = plain_html(payload.get("message", "error"))

    def _add_message(self, message: dict[str, Any]) -> None:
        if message["id"] in self._shown:
            return
        self._shown.add(message["id"])
        bubble = widgets.HTML(bubble_html(message))
        live = self._live.pop(message.get("correlationId", ""), None)
        children = list(self.transcript.children)
        if message.get("from") == "agent" and live is not None and live.widget in children:
            children[children.index(live.widget)] = bubble  # the final answer replaces it
        else:
            children.append(bubble)
        self.transcript.children = tuple(children)

    def _stream(self, event: dict[str, Any]) -> None:
        live = self._live.get(event["correlationId"])
        if live is None:
            live = self._live[event["correlationId"]] = _LiveTurn()
            self.transcript.children = (*self.transcript.children, live.widget)
        kind, payload = event.get("kind"), event.get("payload") or {}
        if kind == ChatEventKind.ASSISTANT_DELTA:
            live.text += payload.get("delta", "")
        elif kind in (ChatEventKind.TOOL_CALL, ChatEventKind.TOOL_RESULT):
            live.tools.append(tool_line(payload))
        else:
            return
        live.render()  # only this bubble changes; the transcript is not rebuilt
