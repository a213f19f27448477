"""`%agent` and `%%agent`: talk to agents from notebook cells.

    %load_ext agenstra_jupyter
    %agent list                 agents of the current manager
    %agent use NAME             choose the agent %agent and %%agent talk to
    %agent NAME message...      one message (before `use`); the answer is shown and
                                returned (`_`)
    %agent message...           one message to the chosen agent (after `use`)
    %%agent [NAME]              the cell body is the message
    %%agent --with df,model [NAME]
    %agent --with df,model …    the message goes with short summaries of these variables
                                of the kernel (agenstra_jupyter.variables), in front of it

When a turn asks before its agent acts, the cell shows the request (its diff as +/- lines)
and an input box: "Allow edit note.txt? [a]llow once / [A]lways / [r]eject / [R]eject
always". Without a frontend to type in (nbclient, `agenstra-jupyter run`) nothing blocks:
the run's `--permissions` policy answers (deny unless said otherwise).
"""

from __future__ import annotations

import sys
from typing import Any

from IPython.core.error import StdinNotImplementedError
from IPython.core.magic import Magics, line_cell_magic, magics_class

from .client import AgenstraClient, AgenstraError, connect
from .protocol import FORMAT_MARKDOWN, ErrorCode, ResponseFormat, response_format
from .render import diff_text, result_html, result_markdown
from .sessions import error_line, headless_choice, option_for
from .variables import UnknownVariables, context_block, parse_names, with_context

# The keys of the inline prompt, by option kind.
OPTION_KEYS = {"allow_once": ("a", "allow once"), "allow_always": ("A", "Always"),
               "reject_once": ("r", "reject"), "reject_always": ("R", "Reject always")}
PROMPT_ATTEMPTS = 3
USAGE = ("usage: %agent list | %agent use NAME | %agent [--with VARS] NAME message… | "
         "%agent [--with VARS] message… (after use) | %%agent [--with VARS] [NAME]")
WITH = "--with"


class AgentAnswer(str):
    """An agent's answer: a str (so `_` holds the text), shown by its format: sanitised
    markdown, or preformatted text for command output."""

    format: ResponseFormat

    def __new__(cls, text: str, fmt: ResponseFormat = FORMAT_MARKDOWN) -> AgentAnswer:
        answer = super().__new__(cls, text)
        answer.format = fmt
        return answer

    def _repr_html_(self) -> str:
        return result_html(str(self), self.format)

    def _repr_markdown_(self) -> str:
        # The notebook renders it later: no remote loads.
        return result_markdown(str(self), self.format)


class AgentList(list):
    def _repr_markdown_(self) -> str:
        rows = [f"| {a['name']} | {a['provider']} | {a['runtime']} | {a['state']} |"
                for a in self]
        return "\n".join(["| agent | provider | runtime | state |", "|---|---|---|---|", *rows])


@magics_class
class AgentMagics(Magics):
    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.default_agent: str | None = None
        self._client: AgenstraClient | None = None

    @property
    def client(self) -> AgenstraClient:
        if self._client is None or self._client.closed:  # e.g. refused after a restart
            self._client = connect()
        return self._client

    @line_cell_magic
    def agent(self, line: str, cell: str | None = None) -> Any:
        try:
            return self._run(line.strip(), cell)
        except (AgenstraError, TimeoutError) as exc:
            print(error_line(str(exc)), end="", file=sys.stderr)  # a message, not a traceback
        return None

    def _run(self, line: str, cell: str | None) -> Any:
        names, line = split_with(line, anywhere=cell is not None)
        words = line.split(maxsplit=1)
        if cell is not None:
            return self._chat(words[0] if words else self._default(), cell, names)
        if not words:
            raise _misuse(USAGE)
        if names and words[0] in ("list", "use"):
            raise _misuse(f"{WITH} goes with a message: {USAGE}")
        if words[0] == "list":
            return AgentList(self.client.agents())
        if words[0] == "use":
            if len(words) < 2:
                raise _misuse(USAGE)
            self.client.agent(words[1].strip())  # fails clearly if there is no such agent
            self.default_agent = words[1].strip()
            print(f"Using agent {self.default_agent}")
            return None
        if self.default_agent is not None:  # chosen with `use`: the whole line is the message
            return self._chat(self.default_agent, line, names)
        if len(words) < 2:
            raise _misuse(USAGE)
        return self._chat(words[0], words[1], names)

    def _default(self) -> str:
        if self.default_agent is None:
            raise _misuse("No agent chosen: %%agent NAME, or %agent use NAME first")
        return self.default_agent

    def _chat(self, name: str, message: str, names: list[str] | None = None) -> AgentAnswer:
        if not message.strip():
            raise _misuse("Nothing to send")
        message = message.strip()
        if names:
            message = with_context(self._context(names), message)
            # The transcript shows it too (the context heads the message); say it here.
            print(f"agenstra: attached the kernel's {', '.join(names)}", flush=True)
        response = self.client.agent(name).ask(message, on_permission=prompt_permission)
        return AgentAnswer(response.get("result", ""), response_format(response))

    def _context(self, names: list[str]) -> str:
        """The summaries of `names` of the user's namespace; a misuse (nothing is sent) if
        one is not there."""
        try:
            return context_block(self.shell.user_ns, names,
                                 hidden=getattr(self.shell, "user_ns_hidden", ()))
        except UnknownVariables as exc:
            raise _misuse(str(exc)) from None


def split_with(line: str, anywhere: bool = False) -> tuple[list[str], str]:
    """`--with df,model` (or `--with=df,model`) taken out of a magic's line: the names and
    the rest. A line magic's text is its message, so there it must come first; a cell
    magic's line holds arguments only, so there it may be anywhere."""
    words = line.split()
    at = next((i for i, word in enumerate(words)
               if word == WITH or word.startswith(WITH + "=")), None)
    if at is None or (at > 0 and not anywhere):
        return [], line
    if words[at] == WITH:
        if at + 1 >= len(words):
            raise _misuse(f"{WITH} needs variable names: {WITH} df,model")
        value, taken = words[at + 1], 2
    else:
        value, taken = words[at][len(WITH) + 1:], 1
    names = parse_names(value)
    if not names:
        raise _misuse(f"{WITH} needs variable names: {WITH} df,model")
    if anywhere:
        return names, " ".join(words[:at] + words[at + taken:])
    return names, line.strip().split(maxsplit=taken)[taken] if len(words) > taken else ""


def prompt_permission(request: dict[str, Any]) -> str | None:
    """Ask in the cell (the kernel's stdin), or without a frontend to type in, answer as a
    headless run does: its --permissions policy, else reject."""
    keys = {OPTION_KEYS[o["kind"]][0]: o["optionId"] for o in request.get("options") or []
            if o.get("kind") in OPTION_KEYS}
    print(request_text(request), flush=True)
    for _ in range(PROMPT_ATTEMPTS):
        try:
            typed = input(prompt_line(request)).strip()
        except (StdinNotImplementedError, EOFError):
            choice = headless_choice(request) or option_for(request, "reject")
            print(f"agenstra: no one to ask here; answered {choice}", file=sys.stderr)
            return choice
        if typed in keys:
            return keys[typed]
        if typed in {o.get("optionId") for o in request.get("options") or []}:
            return typed
        print(f"Type one of {', '.join(keys)}", flush=True)
    return None  # left for the sidebar, another frontend, or its expiry


def request_text(request: dict[str, Any]) -> str:
    """A request as the cell shows it: title, kind, paths, the diff."""
    lines = [f"agenstra: the agent asks to {request.get('kind', 'act')}: "
             f"{request.get('title', '')}"]
    if request.get("paths"):
        lines.append("  paths: " + ", ".join(map(str, request["paths"])))
    if diff := diff_text(request.get("diff")):
        lines.append(diff)
    return "\n".join(lines)


def prompt_line(request: dict[str, Any]) -> str:
    """"Allow edit note.txt? [a]llow once / [A]lways / [r]eject / [R]eject always"."""
    target = ", ".join(map(str, request.get("paths") or [])) or request.get("title", "")
    choices = " / ".join(f"[{key}]{label[1:]}" if label[0] == key else f"[{key}] {label}"
                         for kind, (key, label) in OPTION_KEYS.items()
                         if any(o.get("kind") == kind for o in request.get("options") or []))
    return f"Allow {request.get('kind', 'this')} {target}? {choices} "


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magics(AgentMagics)


def _misuse(message: str) -> AgenstraError:
    return AgenstraError(ErrorCode.INVALID_PAYLOAD, message)
