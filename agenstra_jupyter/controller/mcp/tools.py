"""The notebook tools an agent calls over MCP (DESIGN.md "Notebook tools (MCP)").

`tool_definitions()` is what `tools/list` answers; `call_tool` runs one call for an
authenticated `Caller` against the Jupyter server's own contents, session, kernel and
kernelspec managers. Every path is relative to the caller's project and checked
(notebooks.resolve). Reads never ask; every write (insert, edit, delete, move a cell) and
every execution (run cells, interrupt) asks the user first through `caller.ask`, and does
nothing unless the answer is "allowed". A refusal or a bad argument is a ToolError: the
agent sees its message as an error result, never a traceback.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
from jupyter_server.utils import ensure_async
from mcp.types import ImageContent, TextContent, Tool, ToolAnnotations

from ... import variables as variables_module
from ...protocol import PERMISSION_DIFF_TEXT_BYTES, ToolPermissionRequest
from ...redact import looks_secret, redact_text
from . import kernels
from .notebooks import (
    NotebookStore,
    Target,
    ToolError,
    limits_of,
    list_folder,
    resolve,
)
from .outputs import Reply, add_outputs, cut, joined

__all__ = ["Caller", "ToolError", "call_tool", "tool_definitions"]

Content = TextContent | ImageContent
CELL_TYPES = ("code", "markdown", "raw")
DIFF_ITEMS = 16  # ToolPermissionRequest.diff holds at most this many
TITLE_CODE = 60  # characters of a cell's first line shown in a run's title
VARIABLES_LISTED = 200
VARIABLES_TIMEOUT = 15.0  # a kernel busy with a cell answers later: the agent is told so


@dataclass(frozen=True)
class Caller:
    """Who calls: the agent (by its capability token) and its resolved project folder."""

    client_id: str
    agent_id: str
    project: str  # absolute, resolved path of the agent's project folder
    ask: Callable[[ToolPermissionRequest], Awaitable[str]]  # allowed|rejected|expired|cancelled


# -- definitions --------------------------------------------------------------------------

_PATH = {"type": "string", "description": "Notebook path relative to the project folder, "
         "e.g. 'analysis.ipynb' or 'work/report.ipynb'"}
_CELL = {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}],
         "description": "A cell: its index (0 is the first) or its id"}


def _tool(name: str, description: str, properties: dict, required: list[str],
          read_only: bool) -> Tool:
    return Tool(name=name, description=description, input_schema={
        "type": "object", "properties": properties, "required": required,
        "additionalProperties": False,
    }, annotations=ToolAnnotations(read_only_hint=read_only, destructive_hint=not read_only,
                                   open_world_hint=False))


def tool_definitions() -> list[Tool]:
    """The tools, with their JSON input schemas."""
    return [
        _tool("list_files", "List a folder of the project (notebooks, files, folders).",
              {"path": {"type": "string", "description": "Folder relative to the project "
                        "folder; '' (the default) is the project itself"}}, [], True),
        _tool("read_notebook", "Read a notebook: its cells with index, id, type, source and "
              "outputs (images attached; long outputs truncated with a note).",
              {"path": _PATH,
               "start": {"type": "integer", "minimum": 0, "description": "First cell index"},
               "count": {"type": "integer", "minimum": 1, "description": "Cells to read"}},
              ["path"], True),
        _tool("insert_cell", "Insert a new cell at `index` (0 first; the cell count "
              "appends). The user approves it first.",
              {"path": _PATH, "index": {"type": "integer", "minimum": 0},
               "source": {"type": "string"},
               "cell_type": {"type": "string", "enum": list(CELL_TYPES), "default": "code"}},
              ["path", "index", "source"], False),
        _tool("edit_cell", "Replace a cell's source. The user approves the change first.",
              {"path": _PATH, "cell": _CELL, "source": {"type": "string"}},
              ["path", "cell", "source"], False),
        _tool("delete_cell", "Delete a cell. The user approves it first.",
              {"path": _PATH, "cell": _CELL}, ["path", "cell"], False),
        _tool("move_cell", "Move a cell to index `to` (its index afterwards). The user "
              "approves it first.",
              {"path": _PATH, "cell": _CELL, "to": {"type": "integer", "minimum": 0}},
              ["path", "cell", "to"], False),
        _tool("run_cells", "Run code cells in the notebook's kernel (started with the "
              "notebook's kernelspec when none runs) and return their outputs and errors; "
              "the outputs are saved in the notebook. Stops at the first error. The user "
              "approves the code first.",
              {"path": _PATH, "cells": {"type": "array", "items": _CELL, "minItems": 1},
               "timeout": {"type": "number", "minimum": 1, "description": "Seconds for all "
                           "the cells; the kernel is interrupted when it is over"}},
              ["path", "cells"], False),
        _tool("interrupt", "Interrupt the notebook's kernel (stop the running cell). The "
              "user approves it first.", {"path": _PATH}, ["path"], False),
        _tool("variables", "List the variables of the notebook's running kernel with short "
              "summaries (type, shape, the head of a dataframe).", {"path": _PATH},
              ["path"], True),
    ]


# -- calls --------------------------------------------------------------------------------


async def call_tool(serverapp: Any, caller: Caller, name: str,
                    arguments: dict[str, Any] | None) -> list[Content]:
    """Run tool `name` for `caller`: its content blocks, or ToolError."""
    handler = _HANDLERS.get(name)
    if handler is None:
        raise ToolError(f"No tool {name!r}")
    arguments = {} if arguments is None else arguments
    if not isinstance(arguments, dict):
        raise ToolError("The arguments are an object")
    allowed = next(t for t in tool_definitions() if t.name == name).input_schema["properties"]
    unknown = sorted(set(arguments) - set(allowed))
    if unknown:
        raise ToolError(f"Unknown argument {', '.join(map(repr, unknown))} for {name}")
    return await handler(_Call(serverapp, caller, arguments))


class _Call:
    """One call's context: the server, the caller, its arguments, the notebook store."""

    def __init__(self, serverapp: Any, caller: Caller, arguments: dict[str, Any]) -> None:
        self.serverapp = serverapp
        self.caller = caller
        self.args = arguments
        self.limits = limits_of(serverapp)
        self.store = NotebookStore(serverapp)

    def string(self, key: str, default: str | None = None) -> str:
        value = self.args.get(key, default)
        if not isinstance(value, str):
            raise ToolError(f"{key!r} is required and is a string")
        return value

    def integer(self, key: str, default: int | None = None) -> int:
        value = self.args.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ToolError(f"{key!r} is required and is a whole number, 0 or more")
        return value

    def source(self) -> str:
        source = self.string("source")
        if len(source) > self.limits.max_source_chars:
            raise ToolError(f"The source is {len(source):,} characters: at most "
                            f"{self.limits.max_source_chars:,}")
        return source

    async def target(self) -> Target:
        return await resolve(self.serverapp, self.caller.project, self.string("path"))

    async def ask(self, title: str, kind: str, target: Target, what: str,
                  diff: list[dict[str, Any]] | None = None,
                  outside_sandbox: bool = False, in_project: bool = True) -> None:
        """Ask the user; ToolError unless allowed (nothing has been changed yet).
        `in_project` False: what is asked for is not the project's files (no path is
        given, so no policy counts it as inside the workspace)."""
        request = ToolPermissionRequest(title=cut_title(title), kind=kind,
                                        paths=[target.shown] if in_project else [],
                                        diff=diff, outsideSandbox=outside_sandbox)
        outcome = await self.caller.ask(request)
        if outcome == "allowed":
            return
        reasons = {"rejected": f"The user rejected {what}",
                   "expired": f"Nobody answered the request to allow {what} in time",
                   "cancelled": f"The request to allow {what} was cancelled (the turn ended)"}
        raise ToolError(reasons.get(outcome, f"{what} was not allowed ({outcome})") +
                        ": nothing was done")


def cut_title(title: str) -> str:
    """One line (a file name may hold line breaks, and a card must not read as two
    requests), at most 500 characters."""
    title = CONTROL_CHARACTERS.sub(" ", title)
    return title if len(title) <= 500 else title[:499] + "…"


CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def find_cell(notebook: nbformat.NotebookNode, ref: Any, shown: str) -> int:
    """The index of the cell named by `ref` (an index or an id), or ToolError."""
    cells = notebook.cells
    if isinstance(ref, int) and not isinstance(ref, bool):
        if 0 <= ref < len(cells):
            return ref
        raise ToolError(f"No cell {ref} in {shown}: it has {len(cells)} cells (0 to "
                        f"{len(cells) - 1})" if cells else f"{shown} has no cells")
    if isinstance(ref, str) and ref:
        for index, cell in enumerate(cells):
            if cell.get("id") == ref:
                return index
        if ref.isdigit():
            return find_cell(notebook, int(ref), shown)
        raise ToolError(f"No cell with id {ref!r} in {shown} (read_notebook lists the ids)")
    raise ToolError("A cell is its index (a number) or its id (a string)")


def refind(notebook: nbformat.NotebookNode, cell_id: Any, index: int, shown: str) -> int:
    """The cell seen before asking, found again after the answer (others may have edited
    the notebook meanwhile): by id, or by index in a notebook without ids."""
    if isinstance(cell_id, str) and cell_id:
        for at, cell in enumerate(notebook.cells):
            if cell.get("id") == cell_id:
                return at
        raise ToolError(f"The cell {cell_id!r} was removed from {shown} meanwhile: nothing "
                        "was done")
    if index >= len(notebook.cells):
        raise ToolError(f"{shown} changed meanwhile: nothing was done")
    return index


def _done(text: str) -> list[Content]:
    return [TextContent(type="text", text=text)]


# -- reading ----------------------------------------------------------------------------------


async def _list_files(call: _Call) -> list[Content]:
    target = await resolve(call.serverapp, call.caller.project, call.string("path", ""),
                           notebook=False)
    entries, total = await asyncio.to_thread(list_folder, target, call.limits.max_listed_files)
    lines = [f"Folder {target.shown!r} of the project: {total} entries"]
    for name, kind, size in entries:
        if kind == "folder":
            lines.append(f"{name}/")
        elif kind == "link":
            lines.append(f"{name}  (symbolic link)")
        else:
            lines.append(f"{name}  ({kind}, {size:,} bytes)")
    if total > len(entries):
        lines.append(f"… {total - len(entries)} more entries not listed")
    return _done("\n".join(lines))


async def _read_notebook(call: _Call) -> list[Content]:
    target = await call.target()
    notebook = await call.store.load(target)
    cells = notebook.cells
    start = call.integer("start", 0)
    count = call.integer("count", len(cells) or 1)
    if start > len(cells) or count < 1:
        raise ToolError(f"{target.shown} has {len(cells)} cells: start is at most "
                        f"{len(cells)}, count at least 1")
    kernel = await kernels.session_kernel(call.serverapp, target)
    spec = kernels.spec_name(notebook) or "the default"
    reply = Reply(call.limits)
    shown = cells[start:start + count]
    showing = f"showing {start} to {start + len(shown) - 1}" if shown else "showing none"
    reply.text(f"{target.shown}: {len(cells)} cells, {showing}; kernel {spec} "
               f"({'running' if kernel else 'not running'})\n")
    for offset, cell in enumerate(shown):
        if not _add_cell(reply, start + offset, cell):
            reply.note(f"[stopped at cell {start + offset}: read on with start="
                       f"{start + offset}]\n")
            break
    return reply.content()


def _add_cell(reply: Reply, index: int, cell: nbformat.NotebookNode) -> bool:
    """A cell's header, source and outputs; False when the result is full."""
    count = cell.get("execution_count")
    ran = f", execution count {count}" if count else ""
    header = f"\n=== cell {index} · {cell.cell_type} · id {cell.get('id', '(none)')}{ran}\n"
    if not reply.text(header + cut(joined(cell.source), reply.limits.max_output_chars * 4)
                      + "\n"):
        return False
    add_outputs(reply, cell.get("outputs") or [])
    return not reply.full


# -- writing ----------------------------------------------------------------------------------


async def _insert_cell(call: _Call) -> list[Content]:
    target = await call.target()
    index, source = call.integer("index"), call.source()
    cell_type = call.string("cell_type", "code")
    if cell_type not in CELL_TYPES:
        raise ToolError(f"cell_type is one of {', '.join(CELL_TYPES)}")
    notebook = await call.store.load(target)
    if index > len(notebook.cells):
        raise ToolError(f"{target.shown} has {len(notebook.cells)} cells: index is at most "
                        f"{len(notebook.cells)} (to append)")
    await call.ask(f"Insert a {cell_type} cell at position {index} of {target.shown}", "edit",
                   target, f"inserting a cell in {target.shown}",
                   [{"path": target.shown, "oldText": "", "newText": source}])
    async with call.store.lock(target):
        notebook = await call.store.load(target)
        index = min(index, len(notebook.cells))  # cells deleted meanwhile: append
        make = {"code": nbformat.v4.new_code_cell, "markdown": nbformat.v4.new_markdown_cell,
                "raw": nbformat.v4.new_raw_cell}[cell_type]
        cell = make(source=source)
        notebook.cells.insert(index, cell)
        await call.store.save(target, notebook)
    return _done(f"Inserted {cell_type} cell {index} (id {cell.id}) in {target.shown}; it has "
                 f"{len(notebook.cells)} cells now.")


async def _edit_cell(call: _Call) -> list[Content]:
    target = await call.target()
    source = call.source()
    notebook = await call.store.load(target)
    index = find_cell(notebook, call.args.get("cell"), target.shown)
    cell_id, old = notebook.cells[index].get("id"), joined(notebook.cells[index].source)
    await call.ask(f"Edit cell {index} of {target.shown}", "edit", target,
                   f"editing cell {index} of {target.shown}",
                   [{"path": target.shown, "oldText": old, "newText": source}])
    async with call.store.lock(target):
        notebook = await call.store.load(target)
        index = refind(notebook, cell_id, index, target.shown)
        notebook.cells[index].source = source
        await call.store.save(target, notebook)
    return _done(f"Cell {index} (id {notebook.cells[index].id}) of {target.shown} now has the "
                 "new source.")


async def _delete_cell(call: _Call) -> list[Content]:
    target = await call.target()
    notebook = await call.store.load(target)
    index = find_cell(notebook, call.args.get("cell"), target.shown)
    cell_id, old = notebook.cells[index].get("id"), joined(notebook.cells[index].source)
    await call.ask(f"Delete cell {index} of {target.shown}", "edit", target,
                   f"deleting cell {index} of {target.shown}",
                   [{"path": target.shown, "oldText": old, "newText": ""}])
    async with call.store.lock(target):
        notebook = await call.store.load(target)
        index = refind(notebook, cell_id, index, target.shown)
        del notebook.cells[index]
        await call.store.save(target, notebook)
    return _done(f"Deleted cell {index} of {target.shown}; it has {len(notebook.cells)} cells "
                 "now.")


async def _move_cell(call: _Call) -> list[Content]:
    target = await call.target()
    to = call.integer("to")
    notebook = await call.store.load(target)
    index = find_cell(notebook, call.args.get("cell"), target.shown)
    if to >= len(notebook.cells):
        raise ToolError(f"{target.shown} has {len(notebook.cells)} cells: to is at most "
                        f"{len(notebook.cells) - 1}")
    cell_id = notebook.cells[index].get("id")
    await call.ask(f"Move cell {index} of {target.shown} to position {to}", "edit", target,
                   f"moving cell {index} of {target.shown}")
    async with call.store.lock(target):
        notebook = await call.store.load(target)
        index = refind(notebook, cell_id, index, target.shown)
        to = min(to, len(notebook.cells) - 1)
        notebook.cells.insert(to, notebook.cells.pop(index))
        await call.store.save(target, notebook)
    return _done(f"Moved cell {index} of {target.shown} to position {to}.")


# -- running ----------------------------------------------------------------------------------


async def _run_cells(call: _Call) -> list[Content]:
    target = await call.target()
    refs = call.args.get("cells")
    refs = refs if isinstance(refs, list) else [refs]
    if not refs or len(refs) > call.limits.max_cells_per_run:
        raise ToolError(f"cells lists 1 to {call.limits.max_cells_per_run} cells")
    timeout = _timeout(call)
    notebook = await call.store.load(target)
    indexes = list(dict.fromkeys(find_cell(notebook, ref, target.shown) for ref in refs))
    cells = [(i, notebook.cells[i].get("id"), joined(notebook.cells[i].source))
             for i in indexes if notebook.cells[i].cell_type == "code"]
    if not cells:
        raise ToolError("Those are not code cells: nothing to run")
    await kernels.check_kernel(call.serverapp, target, notebook)
    # The user's kernel is outside any sandbox: asked every time, whatever the policy.
    await call.ask(_run_title(target, cells), "execute", target,
                   f"running code in {target.shown}", _run_diff(target, cells),
                   outside_sandbox=True)
    kernel_id, started = await kernels.ensure_kernel(call.serverapp, target, notebook)
    reply = Reply(call.limits)
    spec = kernels.spec_name(notebook) or "the default kernel"
    reply.text(f"Ran in {spec} " + ("(a kernel started now, in a session JupyterLab "
               "attaches to)" if started else "(the kernel of the notebook's session)") + "\n")
    deadline = time.monotonic() + timeout
    skipped = [i for i in indexes if notebook.cells[i].cell_type != "code"]
    if skipped:
        reply.text(f"Not run (not code cells): {', '.join(map(str, skipped))}\n")
    for number, (index, cell_id, code) in enumerate(cells):
        left = deadline - time.monotonic()
        run = await kernels.execute(call.serverapp, kernel_id, code, max(left, 0.1),
                                    call.limits.max_kept_output_bytes) if left > 0 else None
        if run is None or run.status == "queued":
            rest = [str(i) for i, _, _ in cells[number:]]
            queued = " (the first is still queued in the kernel and runs when it is free; " \
                "its outputs are not collected)" if run is not None else ""
            reply.text(f"\nNot started within the timeout of {timeout:g} s, the kernel being "
                       f"busy: cells {', '.join(rest)}{queued}\n")
            break
        unsaved = await _store_outputs(call, target, cell_id, index, run)
        note = f" (outputs not saved: {unsaved})" if unsaved else ""
        reply.text(f"\n=== cell {index} · id {cell_id or '(none)'} · "
                   f"{_status(run, timeout)}{note}\n")
        add_outputs(reply, run.outputs)
        if run.status != "ok":
            rest = [str(i) for i, _, _ in cells[number + 1:]]
            if rest:
                reply.text(f"\nNot run after that: cells {', '.join(rest)}\n")
            break
    return reply.content()


def _timeout(call: _Call) -> float:
    value = call.args.get("timeout", call.limits.run_timeout)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ToolError("timeout is a number of seconds")
    if value > call.limits.max_run_timeout:
        raise ToolError(f"timeout is at most {call.limits.max_run_timeout:g} seconds")
    return float(value)


def _run_title(target: Target, cells: list[tuple[int, Any, str]]) -> str:
    if len(cells) == 1:
        index, _, code = cells[0]
        first = next((line.strip() for line in code.splitlines() if line.strip()), "")
        shown = first if len(first) <= TITLE_CODE else first[:TITLE_CODE - 1] + "…"
        return f"Run cell {index} of {target.shown}" + (f": {shown}" if shown else "")
    return f"Run cells {', '.join(str(i) for i, _, _ in cells)} of {target.shown}"


def _run_diff(target: Target, cells: list[tuple[int, Any, str]]) -> list[dict[str, Any]]:
    """The code to run, as an approval card shows it (all of it: nothing runs unseen, so
    code a card would cut is refused)."""
    diff = [{"path": target.shown, "oldText": "", "newText": code} for _, _, code in cells]
    if len(diff) > DIFF_ITEMS:  # a request holds 16: the rest together in the last one
        rest = "\n\n".join(code for _, _, code in cells[DIFF_ITEMS - 1:])
        diff = [*diff[:DIFF_ITEMS - 1], {"path": target.shown, "oldText": "", "newText": rest}]
    if any(len(json.dumps(d["newText"])) - 2 > PERMISSION_DIFF_TEXT_BYTES for d in diff):
        raise ToolError(f"The code is too long to be shown whole on the approval card "
                        f"({PERMISSION_DIFF_TEXT_BYTES // 1024} KiB a cell, the 16th card entry "
                        "holding the rest): run fewer or shorter cells; nothing was run")
    return diff


def _status(run: kernels.Execution, timeout: float) -> str:
    count = f"[{run.execution_count}] " if run.execution_count else ""
    return {"ok": f"{count}done", "error": f"{count}failed",
            "aborted": f"{count}aborted (an earlier error)",
            "timeout": f"{count}interrupted: over the timeout of {timeout:g} s",
            "died": f"{count}the kernel died or was restarted while it ran"}.get(
        run.status, f"{count}{run.status}")


async def _store_outputs(call: _Call, target: Target, cell_id: Any, index: int,
                         run: kernels.Execution) -> str | None:
    """The run's outputs and count into the notebook's cell (as JupyterLab would); why
    not, when they could not be."""
    async with call.store.lock(target):
        try:
            notebook = await call.store.load(target)
            at = refind(notebook, cell_id, index, target.shown)
        except ToolError as exc:
            return str(exc).split(":")[0]
        cell = notebook.cells[at]
        if cell.cell_type != "code":
            return "the cell is not a code cell any more"
        cell.outputs = run.outputs
        cell.execution_count = run.execution_count
        # The user allowed this run: its outputs are trusted, as when the user runs a cell
        # in JupyterLab (else saving would leave the whole notebook untrusted).
        cell.metadata["trusted"] = True
        try:
            await call.store.save(target, notebook)
        except ToolError as exc:
            return str(exc)
    return None


async def _interrupt(call: _Call) -> list[Content]:
    target = await call.target()
    kernel_id = await kernels.session_kernel(call.serverapp, target)
    if kernel_id is None:
        raise ToolError(f"No kernel runs for {target.shown}: nothing to interrupt")
    await call.ask(f"Interrupt the kernel of {target.shown}", "execute", target,
                   f"interrupting the kernel of {target.shown}")
    await kernels.interrupt(call.serverapp, kernel_id)
    return _done(f"Interrupted the kernel of {target.shown}.")


# -- variables --------------------------------------------------------------------------------

# Run silently in the kernel: the summaries of agenstra_jupyter.variables (what `%%agent
# --with` attaches), from that module's own source sent along, never imported: the kernel
# imports from its working directory first, the notebook's folder, which the agent writes.
# Only the standard library is imported, with the working directory off sys.path
# meanwhile. The function removes itself: the user's namespace is left as it was.
VARIABLES_CODE = f'''
def _agenstra_variables(source):
    import json, os, sys, types
    globals().pop("_agenstra_variables", None)
    shell = get_ipython()
    namespace, hidden = shell.user_ns, getattr(shell, "user_ns_hidden", {{}})
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if p not in ("", ".", os.getcwd())]
    try:
        variables = types.ModuleType("_agenstra_variables_module")
        exec(compile(source, "agenstra_jupyter/variables.py", "exec"), variables.__dict__)
    finally:
        sys.path[:] = saved
    names = variables.public_names(namespace, hidden)
    found, used = [], 0
    for name in names[:{VARIABLES_LISTED}]:
        summary = variables.summarize(name, namespace[name])
        if used + len(summary) > variables.MESSAGE_CHARS:
            summary = name + ": left out (the list is limited to " + \\
                str(variables.MESSAGE_CHARS) + " characters)"
        used += len(summary)
        found.append(summary)
    return json.dumps({{"variables": found, "total": len(names)}})
'''
VARIABLES_SOURCE = Path(variables_module.__file__).read_text(encoding="utf-8")


async def _variables(call: _Call) -> list[Content]:
    target = await call.target()
    kernel_id = await kernels.session_kernel(call.serverapp, target)
    if kernel_id is None:
        return _done(f"No kernel runs for {target.shown}: run a cell first (run_cells).")
    language = await _language(call, kernel_id)
    if language and language.lower() != "python":
        raise ToolError(f"variables needs a Python kernel; {target.shown} runs {language}")
    # The kernel's memory is the user's, not the project's files: a read outside the
    # workspace, which the default policy asks for.
    await call.ask(f"Read the variables of the kernel of {target.shown}", "read", target,
                   f"reading the variables of the kernel of {target.shown}", in_project=False)
    run = await kernels.execute(call.serverapp, kernel_id, VARIABLES_CODE, VARIABLES_TIMEOUT,
                                call.limits.max_kept_output_bytes,
                                silent=True, user_expressions={
                                    "v": f"_agenstra_variables({VARIABLES_SOURCE!r})"})
    found = _parse_variables(run)
    total, listed = found.get("total", 0), found.get("variables", [])
    lines = [f"Variables of the kernel of {target.shown}: {total}"]
    lines.extend(_masked(summary) for summary in listed if isinstance(summary, str))
    if total > len(listed):
        lines.append(f"… {total - len(listed)} more variables not listed")
    return _done(cut("\n".join(lines), call.limits.max_result_chars))


def _masked(summary: str) -> str:
    """A variable named like a secret (`api_key`, `GITHUB_TOKEN`) shows its type only; in
    the others, URL credentials and secret `name=value` pairs are masked. The kernel holds
    what the user loaded in it; an agent asking for summaries need not see credentials."""
    name, _, rest = summary.partition(": ")
    if looks_secret(name):
        kind = rest.split("\n", 1)[0].split(",", 1)[0]
        return f"{name}: {kind} (value hidden: its name looks secret)"
    return redact_text(summary)


async def _language(call: _Call, kernel_id: str) -> str | None:
    try:
        name = call.serverapp.kernel_manager.get_kernel(kernel_id).kernel_name
        spec = await ensure_async(
            call.serverapp.kernel_spec_manager.get_kernel_spec(name))
    except Exception:  # an unknown spec: let the snippet try
        return None
    return str(getattr(spec, "language", "") or "") or None


def _parse_variables(run: kernels.Execution) -> dict[str, Any]:
    if run.status == "timeout" or run.status == "queued":
        raise ToolError("The kernel is busy (a cell is running): try again when it is idle")
    result = run.user_expressions.get("v") or {}
    if result.get("status") != "ok":
        error = f"{result.get('ename', 'Error')}: {result.get('evalue', '')}" if result \
            else "no answer"
        raise ToolError(f"The kernel could not list its variables ({cut(error, 300)})")
    try:
        found = json.loads(ast.literal_eval(result["data"]["text/plain"]))
    except (KeyError, ValueError, SyntaxError, TypeError):
        raise ToolError("The kernel's answer could not be read") from None
    if not isinstance(found, dict):
        raise ToolError("The kernel's answer could not be read")
    return found


_HANDLERS: dict[str, Callable[[_Call], Awaitable[list[Content]]]] = {
    "list_files": _list_files,
    "read_notebook": _read_notebook,
    "insert_cell": _insert_cell,
    "edit_cell": _edit_cell,
    "delete_cell": _delete_cell,
    "move_cell": _move_cell,
    "run_cells": _run_cells,
    "interrupt": _interrupt,
    "variables": _variables,
}
