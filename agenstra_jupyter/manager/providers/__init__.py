"""What answers an agent's turns. Pluggable through the manager's `provider_classes` trait."""

from .base import Provider, ProviderError, Turn, TurnResult
from .echo import EchoProvider
from .shell import ShellProvider

__all__ = ["EchoProvider", "Provider", "ProviderError", "ShellProvider", "Turn", "TurnResult"]
