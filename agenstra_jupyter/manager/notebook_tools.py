"""How an agent reaches the notebook tools (DESIGN.md "Notebook tools (MCP)").

The controller serves its MCP endpoint on a UNIX socket of its own (AGENSTRA_MCP_SOCKET).
An agent with a project and a token gets one more loopback port inside its sandbox,
127.0.0.1:MCP_SANDBOX_PORT, relayed to that socket (runtimes/netns.py), and the endpoint's
URL and its token (env, ACP `mcpServers`, a CLI's MCP config). Nothing else of the host's
loopback is reachable: the relay goes to the socket only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import protocol
from .models import AgentRecord

# The port inside every sandbox that leads to the notebook tools; a config's loopbackPorts
# may not name it (netns.validate_network).
MCP_SANDBOX_PORT = 47_823


def normal_base_url(base_url: str) -> str:
    """Jupyter's base_url with exactly one "/" at each end ("/" when empty)."""
    inner = base_url.strip().strip("/")
    return f"/{inner}/" if inner else "/"


@dataclass(frozen=True)
class McpEndpoint:
    """What one agent is handed: where the tools are, and its capability token."""

    url: str
    token: str = field(repr=False)

    @property
    def authorization(self) -> str:
        return f"Bearer {self.token}"

    def env(self) -> dict[str, str]:
        return {protocol.MCP_URL_ENV: self.url, protocol.MCP_TOKEN_ENV: self.token}


@dataclass(frozen=True)
class NotebookTools:
    """The manager's side of the notebook tools: the controller's MCP-only socket."""

    socket: str
    base_url: str = "/"

    @property
    def url(self) -> str:
        """The endpoint as every sandboxed agent sees it."""
        return (f"http://127.0.0.1:{MCP_SANDBOX_PORT}"
                f"{normal_base_url(self.base_url)}{protocol.MCP_PATH}")

    def wanted(self, agent: AgentRecord) -> bool:
        """Whether `agent` gets the tools: it works in a project and holds a token."""
        return bool(agent.project and agent.notebook_token)

    def relays(self, agent: AgentRecord) -> dict[int, str]:
        """Inside ports to relay to UNIX sockets for `agent` (empty: none)."""
        return {MCP_SANDBOX_PORT: self.socket} if self.wanted(agent) else {}

    def endpoint(self, agent: AgentRecord) -> McpEndpoint | None:
        if not self.wanted(agent) or agent.notebook_token is None:
            return None
        return McpEndpoint(self.url, agent.notebook_token)
