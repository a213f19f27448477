"""What answers an agent's turns. Pluggable through the manager's `provider_classes` trait."""

from .acp import AcpProvider
from .base import Provider, ProviderError, Turn, TurnRecorder, TurnResult
from .cli import CliProvider
from .echo import EchoProvider
from .openai import OpenAIProvider
from .replay import ReplayProvider
from .shell import ShellProvider

__all__ = [
    "AcpProvider",
    "CliProvider",
    "EchoProvider",
    "OpenAIProvider",
    "Provider",
    "ProviderError",
    "ReplayProvider",
    "ShellProvider",
    "Turn",
    "TurnRecorder",
    "TurnResult",
]
