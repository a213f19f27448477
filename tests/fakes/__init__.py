"""Stand-ins for what cannot run here (model APIs, paid agent CLIs), speaking the real protocols."""

import sys
from pathlib import Path

# The command that starts the fake ACP agent (acp_agent.py).
ACP_AGENT_COMMAND = [sys.executable, str(Path(__file__).parent / "acp_agent.py")]
