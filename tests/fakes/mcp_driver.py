"""What the fake ACP agent does with the notebook tools it was given (`notebook PATH`).

A scripted "model": read the notebook, insert a cell at its end, run it, report the output.
It speaks MCP with the official SDK client over streamable HTTP, as a real agent does, and
tells its client each tool call (`announce`) as an ACP agent tells its tool calls.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

MCP_SERVER_NAME = "agenstra"  # protocol.MCP_SERVER_NAME (this runs in the sandbox)
CELL_SOURCE = "print(sum(i * i for i in range(4)))"  # prints 14

Announce = Callable[[str, str, dict[str, Any], str | None], Awaitable[None]]


async def notebook_task(server: Any, path: str, announce: Announce) -> str:
    """`server`: the ACP `mcpServers` entry (url, headers). The report of what happened."""
    import httpx2  # the SDK's own HTTP client
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    headers = {h.name: h.value for h in getattr(server, "headers", None) or []}
    if getattr(server, "name", None) != MCP_SERVER_NAME:
        return f"notebook: no {MCP_SERVER_NAME} server"
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=700)) as http:
        async with streamable_http_client(server.url, http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as session:
                await session.initialize()

                async def call(name: str, arguments: dict[str, Any]) -> str:
                    await announce(name, "pending", arguments, None)
                    result = await session.call_tool(name, arguments)
                    text = "\n".join(getattr(block, "text", "") for block in result.content)
                    await announce(name, "failed" if result.is_error else "completed",
                                   arguments, text)
                    if result.is_error:
                        raise ToolFailed(f"{name}: {text}")
                    return text

                try:
                    read = await call("read_notebook", {"path": path})
                    count = int(re.search(r": (\d+) cells", read).group(1))
                    inserted = await call("insert_cell", {"path": path, "index": count,
                                                          "source": CELL_SOURCE})
                    cell = re.search(r"\(id ([^)]+)\)", inserted).group(1)
                    ran = await call("run_cells", {"path": path, "cells": [cell]})
                except ToolFailed as failed:
                    return f"notebook: failed {failed}"
                return f"notebook: inserted cell {count} ran: {' '.join(ran.split())}"


class ToolFailed(Exception):
    pass
