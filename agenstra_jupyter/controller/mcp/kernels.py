"""The notebook tools' kernels: the kernel of a notebook's session, and running code in it
server side (no browser), collecting its outputs as nbformat outputs.

A notebook's kernel is the one of its session (what JupyterLab shows and attaches to);
when none runs, a session of type notebook is created with the notebook's kernelspec, so
the user's open notebook attaches to the same kernel. Code runs through a jupyter_client
async client of that kernel; only the IOPub messages of our own request are collected.
"""

from __future__ import annotations

import asyncio
import posixpath
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from queue import Empty
from typing import Any

import nbformat
from jupyter_server.utils import ensure_async

from ..provisioner import own_client
from .notebooks import Target, ToolError, lock_of

READY_TIMEOUT = 60.0  # a kernel that does not answer kernel_info in this long is not used
INTERRUPT_GRACE = 10.0  # after an interrupt, how long to wait for the kernel to be idle
REPLY_TIMEOUT = 5.0  # the execute_reply follows the idle status closely
DROPPED = "\n… output dropped: more than {limit:,} bytes (agenstra kept the first part)\n"


@dataclass
class Execution:
    """One cell's run: its outputs (nbformat), execution count and how it ended."""

    outputs: list[nbformat.NotebookNode] = field(default_factory=list)
    execution_count: int | None = None
    status: str = "ok"  # ok | error | aborted | timeout | queued | died
    started: bool = False  # the kernel began running it (execute_input seen)
    user_expressions: dict[str, Any] = field(default_factory=dict)
    kept_bytes: int = 0
    dropped: bool = False
    displays: dict[str, nbformat.NotebookNode] = field(default_factory=dict)


async def session_kernel(serverapp: Any, target: Target) -> str | None:
    """The kernel id of the notebook's running session, if any."""
    sessions = await ensure_async(serverapp.session_manager.list_sessions())
    for session in sessions:
        kernel = session.get("kernel") or {}
        if session.get("path") == target.api_path and kernel.get("id") in \
                serverapp.kernel_manager:
            return str(kernel["id"])
    return None


async def check_kernel(serverapp: Any, target: Target,
                       notebook: nbformat.NotebookNode) -> None:
    """ToolError when no session runs and the notebook's kernelspec is not installed: so
    the user is not asked to allow a run that cannot start."""
    if await session_kernel(serverapp, target) is None:
        await kernel_name(serverapp, notebook)


async def ensure_kernel(serverapp: Any, target: Target,
                        notebook: nbformat.NotebookNode) -> tuple[str, bool]:
    """(kernel id, started now): the session's kernel, or a new session with the
    notebook's kernelspec. One start per notebook at a time."""
    async with lock_of(serverapp, f"kernel:{target.api_path}"):
        found = await session_kernel(serverapp, target)
        if found:
            return found, False
        name = await kernel_name(serverapp, notebook)
        try:
            session = await serverapp.session_manager.create_session(
                path=target.api_path, name=posixpath.basename(target.api_path),
                type="notebook", kernel_name=name)
        except Exception as exc:
            raise ToolError(f"The kernel {name!r} for {target.shown} did not start: "
                            f"{type(exc).__name__}: {str(exc)[:300]}") from None
        return str(session["kernel"]["id"]), True


async def kernel_name(serverapp: Any, notebook: nbformat.NotebookNode) -> str:
    """The notebook's kernelspec name (the server's default when it names none)."""
    specs = serverapp.kernel_spec_manager
    available = (await ensure_async(specs.get_all_specs())).keys()
    name = spec_name(notebook)
    if not name:
        return str(serverapp.kernel_manager.default_kernel_name)
    if name not in available:
        raise ToolError(f"The notebook's kernel {name!r} is not installed on this server "
                        f"(installed: {', '.join(sorted(available)) or 'none'})")
    return str(name)


def spec_name(notebook: nbformat.NotebookNode) -> str | None:
    """The kernelspec the notebook names in its metadata, if any."""
    spec = notebook.get("metadata", {}).get("kernelspec")
    name = spec.get("name") if isinstance(spec, dict) else None
    return name if isinstance(name, str) and name else None


async def interrupt(serverapp: Any, kernel_id: str) -> None:
    await ensure_async(serverapp.kernel_manager.interrupt_kernel(kernel_id))


async def execute(serverapp: Any, kernel_id: str, code: str, timeout: float,
                  max_bytes: int, silent: bool = False,
                  user_expressions: dict[str, str] | None = None) -> Execution:
    """Run `code` in the kernel and collect its outputs until it is idle again; after
    `timeout` seconds the kernel is interrupted (only if it is running our code)."""
    try:
        manager = serverapp.kernel_manager.get_kernel(kernel_id)
    except KeyError:
        raise ToolError("The notebook's kernel is gone (shut down or restarted)") from None
    client = own_client(manager)  # its replies its own, whoever else runs code
    channels = {"shell": True, "iopub": True, "stdin": False, "hb": False, "control": False}
    client.start_channels(**channels)
    deadline = time.monotonic() + timeout
    provisioner = manager.provisioner

    async def gone() -> bool:
        """The kernel died or was restarted (a new provisioner): no idle will come."""
        return manager.provisioner is not provisioner or not await ensure_async(
            manager.is_alive())
    try:
        try:
            await client.wait_for_ready(timeout=min(READY_TIMEOUT, timeout))
        except RuntimeError:
            raise ToolError("The kernel did not answer in time: it is busy (another cell "
                            "runs) or not responding; nothing was run. Try again later, or "
                            "interrupt it") from None
        msg_id = client.execute(code, silent=silent, store_history=not silent,
                                user_expressions=user_expressions or {},
                                allow_stdin=False, stop_on_error=True)
        run = Execution()
        ended = await _collect(client, msg_id, run, deadline, max_bytes, gone)
        if ended == "gone":
            run.status = "died"
            return run
        if ended == "late":
            if not run.started:  # queued behind another request: do not interrupt that
                run.status = "queued"
                return run
            await interrupt(serverapp, kernel_id)
            await _collect(client, msg_id, run, time.monotonic() + INTERRUPT_GRACE, max_bytes,
                           gone)
            await _reply(client, msg_id, run)
            run.status = "timeout"
            return run
        await _reply(client, msg_id, run)
        return run
    finally:
        client.stop_channels()


async def _collect(client: Any, msg_id: str, run: Execution, deadline: float,
                   max_bytes: int, gone: Callable[[], Awaitable[bool]]) -> str:
    """IOPub messages of `msg_id` into `run` until the kernel is idle ("idle"), the
    deadline ("late") or the kernel is gone ("gone")."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "late"
        try:
            msg = await client.get_iopub_msg(timeout=min(remaining, 1.0))
        except (Empty, asyncio.TimeoutError):
            if await gone():
                return "gone"
            continue
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        content = msg.get("content", {})
        if kind == "status" and content.get("execution_state") == "idle":
            return "idle"
        if kind == "execute_input":
            run.started = True
            run.execution_count = content.get("execution_count")
        elif kind == "clear_output":
            run.outputs.clear()
            run.kept_bytes = 0
        elif kind in ("stream", "display_data", "execute_result", "error"):
            run.started = True
            output = nbformat.v4.output_from_msg(msg)
            if _add_output(run, output, max_bytes):
                display_id = (content.get("transient") or {}).get("display_id")
                if display_id:
                    run.displays[str(display_id)] = output
        elif kind == "update_display_data":
            _update_display(run, content)


def _add_output(run: Execution, output: nbformat.NotebookNode, max_bytes: int) -> bool:
    """Keep the output, merging consecutive streams, until `max_bytes` are kept; whether
    it was kept."""
    size = len(str(output.get("text", ""))) + sum(len(str(v)) for v in
                                                   output.get("data", {}).values())
    if run.kept_bytes + size > max_bytes:
        if not run.dropped:
            run.dropped = True
            run.outputs.append(nbformat.v4.new_output(
                "stream", name="stderr", text=DROPPED.format(limit=max_bytes)))
        return False
    run.kept_bytes += size
    last = run.outputs[-1] if run.outputs else None
    if (output.output_type == "stream" and last is not None and last.output_type == "stream"
            and last.get("name") == output.get("name")):
        last["text"] = last.get("text", "") + output.get("text", "")
        return True
    run.outputs.append(output)
    return True


def _update_display(run: Execution, content: dict) -> None:
    """`display(..., display_id=...).update(...)`: the earlier output shows the new data."""
    output = run.displays.get(str((content.get("transient") or {}).get("display_id")))
    if output is not None:
        output["data"] = content.get("data", {})
        output["metadata"] = content.get("metadata", {})


async def _reply(client: Any, msg_id: str, run: Execution) -> None:
    """The execute_reply: status (ok / error / aborted), count, user expressions."""
    deadline = time.monotonic() + REPLY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            msg = await client.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
        except (Empty, asyncio.TimeoutError):
            return
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        content = msg.get("content", {})
        run.status = str(content.get("status", run.status))
        if run.execution_count is None:
            run.execution_count = content.get("execution_count")
        run.user_expressions = content.get("user_expressions") or {}
        return
