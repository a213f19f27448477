"""Where agents run. Pluggable through the manager's `runtime_classes` trait."""

from .base import AgentProcess, ExecResult, Runtime, RuntimeFailure
from .docker import DockerRuntime
from .process import ProcessRuntime
from .swarm import SwarmRuntime

__all__ = [
    "AgentProcess",
    "DockerRuntime",
    "ExecResult",
    "ProcessRuntime",
    "Runtime",
    "RuntimeFailure",
    "SwarmRuntime",
]
