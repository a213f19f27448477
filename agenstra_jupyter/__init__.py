"""agenstra-jupyter: chat with AI agents from JupyterLab and notebooks."""

from __future__ import annotations

from typing import Any

from ._version import __version__

__all__ = ["__version__"]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .controller.app import ControllerApp

    return [{"module": "agenstra_jupyter", "app": ControllerApp}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """The prebuilt JupyterLab sidebar (built from labextension/ by the package build)."""
    return [{"src": "labextension", "dest": "@agenstra/jupyterlab"}]


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext agenstra_jupyter`: the %agent / %%agent magics."""
    from .magics import load_ipython_extension as load

    load(ipython)
