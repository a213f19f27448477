"""agenstra-jupyter: chat with AI agents from JupyterLab and notebooks."""

__version__ = "0.1.0"
