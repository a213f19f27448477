"""`%agent` and `%%agent`: talk to agents from notebook cells.

    %load_ext agenstra_jupyter
    %agent list                 agents of the current manager
    %agent use NAME             the agent %%agent talks to by default
    %agent NAME message...      one message; the answer is shown and returned (`_`)
    %%agent [NAME]              the cell body is the message
"""

from __future__ import annotations

import sys
from typing import Any

from IPython.core.magic import Magics, line_cell_magic, magics_class

from .client import AgenstraClient, AgenstraError, connect
from .render import inert_markdown, markdown_html

USAGE = "usage: %agent list | %agent use NAME | %agent NAME message… | %%agent [NAME]"


class AgentAnswer(str):
    """An agent's answer: a str (so `_` holds the text), shown as sanitised markdown."""

    def _repr_html_(self) -> str:
        return markdown_html(str(self))

    def _repr_markdown_(self) -> str:
        return inert_markdown(str(self))  # the notebook renders it later: no remote loads


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
        if self._client is None:
            self._client = connect()
        return self._client

    @line_cell_magic
    def agent(self, line: str, cell: str | None = None) -> Any:
        try:
            return self._run(line.strip(), cell)
        except (AgenstraError, TimeoutError) as exc:
            print(f"agenstra: {exc}", file=sys.stderr)  # a message, not a traceback
        return None

    def _run(self, line: str, cell: str | None) -> Any:
        words = line.split(maxsplit=1)
        if cell is not None:
            return self._chat(words[0] if words else self._default(), cell)
        if not words:
            raise AgenstraError(USAGE)
        if words[0] == "list":
            return AgentList(self.client.agents())
        if words[0] == "use":
            if len(words) < 2:
                raise AgenstraError(USAGE)
            self.client.agent(words[1].strip())  # fails clearly if there is no such agent
            self.default_agent = words[1].strip()
            return None
        if len(words) < 2:
            raise AgenstraError(USAGE)
        return self._chat(words[0], words[1])

    def _default(self) -> str:
        if self.default_agent is None:
            raise AgenstraError("No agent chosen: %%agent NAME, or %agent use NAME first")
        return self.default_agent

    def _chat(self, name: str, message: str) -> AgentAnswer:
        if not message.strip():
            raise AgenstraError("Nothing to send")
        return AgentAnswer(self.client.agent(name).chat(message.strip()))


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magics(AgentMagics)
