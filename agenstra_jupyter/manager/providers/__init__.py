"""What answers an agent's turns. Pluggable through the manager's `provider_classes` trait."""

from .base import Provider, ProviderError, Turn, TurnRecorder, TurnResult
from .cli import CliProvider
from .echo import EchoProvider
from .shell import ShellProvider

__all__ = [
    "CliProvider",
    "EchoProvider",
    "Provider",
    "ProviderError",
    "ShellProvider",
    "Turn",
    "TurnRecorder",
    "TurnResult",
]
