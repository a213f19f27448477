"""Notebook tools over MCP: the endpoint (endpoint.py, asgi.py) and the tools (tools.py)."""
