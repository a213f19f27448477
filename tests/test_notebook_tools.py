"""The notebook tools (controller/mcp/tools.py) inside a real Jupyter server (pytest-jupyter's
`jp_serverapp`) with a real ipykernel: every tool against real notebooks on disk, outputs
returned and saved, errors, images, truncation, kernels started or reused, interrupts, a
kernel's variables; and the attacker cases: paths out of the project, symlinks, hidden
files, files that are no notebook, huge notebooks, and asks that are not answered "allowed".

The MCP endpoint (auth, the SDK's client) is tested with the endpoint; these tests call
`call_tool` directly, as the endpoint does, with an `ask` that records every request.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import struct
import threading
import time
import zlib
from pathlib import Path

import nbformat
import pytest
from jupyter_server.utils import ensure_async
from mcp.types import ImageContent, TextContent

from agenstra_jupyter.controller.mcp.tools import Caller, ToolError, call_tool, tool_definitions
from agenstra_jupyter.protocol import ToolPermissionRequest


@pytest.fixture
def jp_server_config():
    # The tools use only the server's own managers: no controller extension, no manager.
    return {}


class Asks:
    """A user who answers every ask with `outcome`, and remembers what was asked."""

    def __init__(self, outcome: str = "allowed") -> None:
        self.outcome = outcome
        self.requests: list[ToolPermissionRequest] = []

    async def __call__(self, request: ToolPermissionRequest) -> str:
        self.requests.append(request)
        return self.outcome


@pytest.fixture
def project(jp_root_dir) -> Path:
    folder = Path(jp_root_dir) / "proj"
    folder.mkdir()
    return folder


@pytest.fixture
def asks() -> Asks:
    return Asks()


@pytest.fixture
def tools(jp_serverapp, project, asks):
    caller = Caller(client_id="local", agent_id="a1", project=str(project.resolve()), ask=asks)

    async def call(name: str, **arguments) -> list:
        return await call_tool(jp_serverapp, caller, name, arguments)

    return call


def text(blocks: list) -> str:
    return "\n".join(block.text for block in blocks if isinstance(block, TextContent))


def write_notebook(path: Path, *sources: str, outputs: dict | None = None) -> nbformat.NotebookNode:
    book = nbformat.v4.new_notebook()
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                   "language": "python"}
    for index, source in enumerate(sources):
        if source.startswith("# md"):
            book.cells.append(nbformat.v4.new_markdown_cell(source))
        else:
            cell = nbformat.v4.new_code_cell(source)
            cell.outputs = (outputs or {}).get(index, [])
            book.cells.append(cell)
    nbformat.write(book, path)
    return book


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def png(width: int = 2, height: int = 2) -> bytes:
    """A real, tiny PNG (no imaging library needed)."""
    raw = b"".join(b"\0" + b"\xff\0\0" * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                              0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


async def sessions(serverapp) -> list[dict]:
    return await serverapp.session_manager.list_sessions()


# -- reading --------------------------------------------------------------------------------


def test_the_definitions_name_every_tool_with_a_closed_schema():
    names = [tool.name for tool in tool_definitions()]
    assert names == ["list_files", "read_notebook", "insert_cell", "edit_cell", "delete_cell",
                     "move_cell", "run_cells", "interrupt", "variables"]
    for tool in tool_definitions():
        assert tool.input_schema["type"] == "object"
        assert tool.input_schema["additionalProperties"] is False
        assert tool.annotations.read_only_hint == (tool.name in (
            "list_files", "read_notebook", "variables"))


async def test_list_files_shows_the_project_only_and_no_hidden_entries(tools, project, asks):
    write_notebook(project / "analysis.ipynb", "1")
    (project / "data.csv").write_text("a,b\n")
    (project / "sub").mkdir()
    write_notebook(project / "sub" / "inner.ipynb", "2")
    (project / ".secret").write_text("x")
    (project / ".ipynb_checkpoints").mkdir()
    listing = text(await tools("list_files"))
    assert "analysis.ipynb  (notebook" in listing and "data.csv  (file, 4 bytes)" in listing
    assert "sub/" in listing and ".secret" not in listing and "checkpoints" not in listing
    assert "inner.ipynb" in text(await tools("list_files", path="sub"))
    with pytest.raises(ToolError, match="No folder"):
        await tools("list_files", path="nope")
    assert asks.requests == []  # reads never ask


async def test_read_notebook_returns_sources_outputs_images_and_truncates(tools, project, asks):
    image = base64.b64encode(png()).decode()
    outputs = {
        0: [nbformat.v4.new_output("stream", name="stdout", text="hello\n")],
        1: [nbformat.v4.new_output("display_data", data={"image/png": image,
                                                          "text/plain": "<Figure>"})],
        2: [nbformat.v4.new_output("stream", name="stdout", text="y" * 50_000)],
        3: [nbformat.v4.new_output("error", ename="ValueError", evalue="bad",
                                   traceback=["\x1b[31mTraceback\x1b[0m", "ValueError: bad"])],
    }
    book = write_notebook(project / "a.ipynb", "print('hello')", "show()", "print('y' * 50000)",
                          "raise ValueError('bad')", "# md title", outputs=outputs)
    blocks = await tools("read_notebook", path="a.ipynb")
    body = text(blocks)
    assert "a.ipynb: 5 cells" in body and "kernel python3 (not running)" in body
    assert f"=== cell 0 · code · id {book.cells[0].id}" in body and "hello" in body
    assert "=== cell 4 · markdown" in body and "# md title" in body
    assert "ValueError: bad" in body and "\x1b" not in body
    assert "42,000 more characters" in body  # 50,000 cut to max_output_chars (8,000)
    images = [block for block in blocks if isinstance(block, ImageContent)]
    assert len(images) == 1 and images[0].mime_type == "image/png"
    at = blocks.index(images[0])  # after its output's header, before the next cell
    assert blocks[at - 1].text.endswith("--- output 1: display\n")
    assert blocks[at + 1].text.startswith("[image/png, ")
    assert base64.b64decode(images[0].data) == png()
    assert "attached as image 1" in body
    part = text(await tools("read_notebook", path="a.ipynb", start=3, count=1))
    assert "=== cell 3" in part and "=== cell 2" not in part and "=== cell 4" not in part
    assert asks.requests == []


async def test_a_long_notebook_is_cut_at_the_result_limit_with_where_to_read_on(
        tools, project, monkeypatch):
    monkeypatch.setenv("AGENSTRA_MCP_MAX_RESULT_CHARS", "3000")
    write_notebook(project / "long.ipynb", *[f"x = {'1' * 500}  # {i}" for i in range(20)])
    body = text(await tools("read_notebook", path="long.ipynb"))
    assert "more characters: the result is limited to 3,000 characters" in body
    assert "read on with start=" in body and len(body) < 3600


# -- writing --------------------------------------------------------------------------------


async def test_insert_edit_move_delete_ask_first_and_change_the_file(tools, project, asks):
    path = project / "nb.ipynb"
    write_notebook(path, "a = 1", "b = 2")
    reply = text(await tools("insert_cell", path="nb.ipynb", index=1, source="c = 3"))
    book = read(path)
    assert [c.source for c in book.cells] == ["a = 1", "c = 3", "b = 2"]
    assert book.cells[1].id in reply
    request = asks.requests[-1]
    assert request.kind == "edit" and request.paths == ["nb.ipynb"]
    assert request.title == "Insert a code cell at position 1 of nb.ipynb"
    assert request.diff == [{"path": "nb.ipynb", "oldText": "", "newText": "c = 3"}]

    await tools("edit_cell", path="nb.ipynb", cell=book.cells[1].id, source="c = 30")
    assert read(path).cells[1].source == "c = 30"
    assert asks.requests[-1].title == "Edit cell 1 of nb.ipynb"
    assert asks.requests[-1].diff == [{"path": "nb.ipynb", "oldText": "c = 3",
                                       "newText": "c = 30"}]

    await tools("move_cell", path="nb.ipynb", cell=0, to=2)
    assert [c.source for c in read(path).cells] == ["c = 30", "b = 2", "a = 1"]
    assert asks.requests[-1].title == "Move cell 0 of nb.ipynb to position 2"

    await tools("delete_cell", path="nb.ipynb", cell="1")  # an index given as a string
    assert [c.source for c in read(path).cells] == ["c = 30", "a = 1"]
    assert asks.requests[-1].diff == [{"path": "nb.ipynb", "oldText": "b = 2", "newText": ""}]

    await tools("insert_cell", path="nb.ipynb", index=2, source="# Notes", cell_type="markdown")
    assert read(path).cells[2].cell_type == "markdown"
    assert all(request.kind == "edit" for request in asks.requests)
    assert len(asks.requests) == 5


async def test_an_old_notebook_without_cell_ids_gets_ids_when_written(tools, project):
    path = project / "old.ipynb"
    path.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 2, "metadata": {},
                                "cells": [{"cell_type": "code", "source": "x = 1",
                                           "metadata": {}, "outputs": [],
                                           "execution_count": None}]}))
    await tools("edit_cell", path="old.ipynb", cell=0, source="x = 2")
    book = read(path)
    assert book.nbformat_minor >= 5 and book.cells[0].source == "x = 2" and book.cells[0].id
    nbformat.validate(book)


@pytest.mark.parametrize("outcome", ["rejected", "expired", "cancelled"])
async def test_an_ask_not_allowed_changes_nothing(jp_serverapp, tools, project, asks, outcome):
    path = project / "nb.ipynb"
    write_notebook(path, "print('ran')", "b = 2")
    before = path.read_bytes()
    asks.outcome = outcome
    calls = [("insert_cell", {"index": 0, "source": "x"}),
             ("edit_cell", {"cell": 0, "source": "x"}),
             ("delete_cell", {"cell": 0}), ("move_cell", {"cell": 0, "to": 1}),
             ("run_cells", {"cells": [0]})]
    for name, arguments in calls:
        with pytest.raises(ToolError) as refused:
            await tools(name, path="nb.ipynb", **arguments)
        message = str(refused.value)
        assert "nothing was done" in message
        assert {"rejected": "rejected", "expired": "in time",
                "cancelled": "cancelled"}[outcome] in message
    assert path.read_bytes() == before
    assert await sessions(jp_serverapp) == []  # no kernel was started for the run
    assert [r.kind for r in asks.requests] == ["edit"] * 4 + ["execute"]


async def test_bad_arguments_are_tool_errors_and_change_nothing(tools, project, asks):
    path = project / "nb.ipynb"
    write_notebook(path, "a = 1")
    before = path.read_bytes()
    bad = [("nope", {}, "No tool"),
           ("read_notebook", {"path": "nb.ipynb", "extra": 1}, "Unknown argument"),
           ("read_notebook", {}, "'path' is required"),
           ("edit_cell", {"path": "nb.ipynb", "cell": 5, "source": "x"}, "No cell 5"),
           ("edit_cell", {"path": "nb.ipynb", "cell": "zz", "source": "x"}, "No cell with id"),
           ("edit_cell", {"path": "nb.ipynb", "cell": True, "source": "x"}, "A cell is"),
           ("insert_cell", {"path": "nb.ipynb", "index": 9, "source": "x"}, "at most 1"),
           ("insert_cell", {"path": "nb.ipynb", "index": 0, "source": "x", "cell_type": "sql"},
            "cell_type"),
           ("insert_cell", {"path": "nb.ipynb", "index": 0, "source": "x" * 300_000},
            "at most 200,000"),
           ("move_cell", {"path": "nb.ipynb", "cell": 0, "to": 3}, "at most 0"),
           ("run_cells", {"path": "nb.ipynb", "cells": [0] * 21}, "1 to 20 cells"),
           ("run_cells", {"path": "nb.ipynb", "cells": [0], "timeout": 601}, "at most 600"),
           ("run_cells", {"path": "nb.ipynb", "cells": []}, "1 to 20"),
           ("interrupt", {"path": "nb.ipynb"}, "No kernel runs")]
    for name, arguments, message in bad:
        with pytest.raises(ToolError, match=message):
            await call_tool_args(tools, name, arguments)
    assert path.read_bytes() == before and asks.requests == []


async def test_a_notebook_whose_kernel_is_not_installed_is_not_run(jp_serverapp, tools,
                                                                    project, asks):
    path = project / "r.ipynb"
    book = write_notebook(path, "1 + 1")
    book.metadata["kernelspec"] = {"name": "ir", "display_name": "R", "language": "R"}
    nbformat.write(book, path)
    with pytest.raises(ToolError, match="kernel 'ir' is not installed on this server"):
        await tools("run_cells", path="r.ipynb", cells=[0])
    assert asks.requests == [] and await sessions(jp_serverapp) == []
    with pytest.raises(ToolError, match="not code cells"):
        write_notebook(path, "# md only")
        await tools("run_cells", path="r.ipynb", cells=[0])


async def call_tool_args(tools, name: str, arguments: dict):
    return await tools(name, **arguments)


# -- attacker cases ------------------------------------------------------------------------


async def test_paths_out_of_the_project_are_refused(jp_root_dir, tools, project, asks):
    root = Path(jp_root_dir)
    outside = root / "other.ipynb"
    write_notebook(outside, "secret = 1")
    (root / "elsewhere").mkdir()
    write_notebook(root / "elsewhere" / "x.ipynb", "secret = 2")
    write_notebook(project / ".hidden.ipynb", "h = 1")
    (project / ".git").mkdir()
    write_notebook(project / ".git" / "in.ipynb", "h = 2")
    (project / "link.ipynb").symlink_to(outside)
    (project / "linkdir").symlink_to(root / "elsewhere")
    (project / "to_hidden.ipynb").symlink_to(project / ".hidden.ipynb")
    (project / "abs.ipynb").symlink_to("/etc/passwd")
    (project / "data.txt").write_text("not a notebook")
    os.mkfifo(project / "pipe.ipynb")  # opening it would block a reader
    (project / "folder.ipynb").mkdir()
    (project / "fake.ipynb").write_text("{ not json")
    (project / "odd.ipynb").write_text(json.dumps({
        "nbformat": 4, "nbformat_minor": 5, "metadata": {"kernelspec": {"name": 3}},
        "cells": [{"id": "c1", "cell_type": "code", "source": 5, "outputs": [],
                   "metadata": {}}]}))
    write_notebook(project / "ok.ipynb", "fine = 1")
    refused = {
        "../other.ipynb": "climbs out", "sub/../../other.ipynb": "climbs out",
        str(outside): "absolute", "/etc/passwd": "absolute", "~/x.ipynb": "absolute",
        "C:\\Users\\x.ipynb": "absolute",
        ".hidden.ipynb": "hidden", ".git/in.ipynb": "hidden", "to_hidden.ipynb": "hidden",
        "link.ipynb": "outside the project", "linkdir/x.ipynb": "outside the project",
        "abs.ipynb": "outside the project", "data.txt": "not a notebook",
        "fake.ipynb": "cannot be read as a notebook", "missing.ipynb": "No notebook",
        "odd.ipynb": "the source of cell 0 is not text",
        "ok.ipynb\0x": "not a usable path", "pipe.ipynb": "No notebook",
        "folder.ipynb": "No notebook",
    }
    before = {p: p.read_bytes() for p in (outside, root / "elsewhere" / "x.ipynb")}
    for path, message in refused.items():
        for name, arguments in [("read_notebook", {}), ("edit_cell", {"cell": 0, "source": "x"}),
                                ("run_cells", {"cells": [0]}), ("variables", {})]:
            if name == "variables" and path in ("fake.ipynb", "odd.ipynb"):
                continue  # it opens no file (the kernel is the session's)
            with pytest.raises(ToolError, match=message):
                await tools(name, path=path, **arguments)
    for path in ("..", "../elsewhere", "linkdir", ".git", "/"):
        with pytest.raises(ToolError):
            await tools("list_files", path=path)
    assert asks.requests == []
    assert {p: p.read_bytes() for p in before} == before
    assert "fine = 1" in text(await tools("read_notebook", path="./ok.ipynb"))


def swap_forever(link: Path, good: Path, bad: Path, stop: threading.Event,
                 errors: list) -> None:
    """Swap `link` between `good` (renamed there and back) and a symlink to `bad`, fast,
    with short pauses so that either state is met by a whole tool call now and then."""
    spare = link.with_name("_spare")
    try:
        for turn in itertools.count():
            if stop.is_set():
                break
            os.rename(good, link)  # `link` is the real notebook (or folder) now
            time.sleep(0.002 * (turn % 3))
            os.rename(link, good)
            spare.symlink_to(bad, target_is_directory=bad.is_dir())
            os.rename(spare, link)  # ... and now a symlink out of the project
            time.sleep(0.001 * (turn % 2))
            link.unlink()
    except Exception as exc:  # reported by the test: the swap itself must not fail
        errors.append(repr(exc))


@pytest.mark.parametrize("swapped", ["file", "folder"])
async def test_a_path_swapped_for_a_symlink_after_the_check_is_not_followed(
        jp_root_dir, tools, project, swapped):
    root = Path(jp_root_dir)
    (root / "outside").mkdir()
    secret = root / "outside" / "x.ipynb"
    write_notebook(secret, "SECRET = 'outside the project'")
    secret_bytes = secret.read_bytes()
    if swapped == "file":
        good = project / "_good.ipynb"
        write_notebook(good, "fine = 1")
        link, bad, path = project / "race.ipynb", secret, "race.ipynb"
    else:
        good = project / "_good"
        good.mkdir()
        write_notebook(good / "x.ipynb", "fine = 1")
        link, bad, path = project / "sub", root / "outside", "sub/x.ipynb"
    stop, errors = threading.Event(), []
    swapper = threading.Thread(target=swap_forever, args=(link, good, bad, stop, errors))
    swapper.start()
    read = refused = 0
    try:
        for attempt in range(300):
            try:
                if attempt % 3:
                    body = text(await tools("read_notebook", path=path))
                    assert "SECRET" not in body
                else:
                    await tools("edit_cell", path=path, cell=0, source="fine = 2")
                read += 1
            except ToolError:
                refused += 1
    finally:
        stop.set()
        swapper.join()
    assert errors == []
    assert secret.read_bytes() == secret_bytes  # never written through the symlink
    assert read and refused  # both sides of the race were hit


async def test_a_huge_notebook_is_not_opened(tools, project, monkeypatch):
    monkeypatch.setenv("AGENSTRA_MCP_MAX_NOTEBOOK_BYTES", "100000")
    write_notebook(project / "big.ipynb", "x = '" + "a" * 200_000 + "'")
    with pytest.raises(ToolError, match="larger than the 100,000 bytes"):
        await tools("read_notebook", path="big.ipynb")
    with pytest.raises(ToolError, match="larger than"):
        await tools("insert_cell", path="big.ipynb", index=0, source="y")


# -- running ------------------------------------------------------------------------------------



async def test_code_a_card_would_cut_is_not_run(jp_serverapp, tools, project, asks):
    """The approval card shows 8 KiB of each cell: a longer cell would run partly unseen."""
    write_notebook(project / "long.ipynb", "x = 1\n" + "# padding\n" * 1000)
    with pytest.raises(ToolError, match="too long to be shown whole"):
        await tools("run_cells", path="long.ipynb", cells=[0])
    assert asks.requests == []  # refused before anyone was asked; no kernel started
    assert await ensure_async(jp_serverapp.session_manager.list_sessions()) == []

async def test_run_cells_starts_a_kernel_session_and_saves_outputs(jp_serverapp, tools, project,
                                                                   asks):
    path = project / "run.ipynb"
    write_notebook(path, "x = 6 * 7\nprint('x is', x)\nx", "# md note",
                   "raise ValueError('\\x1b[31mbad\\x1b[0m value')", "print('never')")
    book = read(path)
    reply = text(await tools("run_cells", path="run.ipynb", cells=[0, 1, 2, 3]))
    request = asks.requests[-1]
    assert request.kind == "execute" and request.paths == ["run.ipynb"]
    assert request.outsideSandbox  # the user's kernel: asked whatever the policy
    assert request.title == "Run cells 0, 2, 3 of run.ipynb"
    assert [d["newText"] for d in request.diff] == [book.cells[i].source for i in (0, 2, 3)]
    assert "a kernel started now" in reply
    assert "x is 42" in reply and "result [1]" in reply and "42" in reply
    assert "Not run (not code cells): 1" in reply
    assert "ValueError: bad value" in reply and "\x1b" not in reply
    assert "Not run after that: cells 3" in reply and "never" not in reply
    [session] = await sessions(jp_serverapp)
    assert session["path"] == "proj/run.ipynb" and session["type"] == "notebook"
    assert session["kernel"]["name"] == "python3"
    saved = read(path)
    assert saved.cells[0].execution_count == 1
    assert [o.output_type for o in saved.cells[0].outputs] == ["stream", "execute_result"]
    assert saved.cells[0].outputs[1].data["text/plain"] == "42"
    assert saved.cells[2].outputs[0].ename == "ValueError"
    assert saved.cells[3].outputs == [] and saved.cells[3].execution_count is None
    nbformat.validate(saved)

    # A second run reuses the session's kernel: its state is there.
    single = text(await tools("run_cells", path="run.ipynb", cells=[book.cells[3].id]))
    assert "the kernel of the notebook's session" in single and "never" in single
    assert asks.requests[-1].title == "Run cell 3 of run.ipynb: print('never')"
    assert len(await sessions(jp_serverapp)) == 1


async def test_run_cells_uses_the_session_jupyterlab_opened(jp_serverapp, tools, project):
    path = project / "open.ipynb"
    write_notebook(path, "import os\nos.getpid()")
    session = await jp_serverapp.session_manager.create_session(
        path="proj/open.ipynb", name="open.ipynb", type="notebook", kernel_name="python3")
    kernel = jp_serverapp.kernel_manager.get_kernel(session["kernel"]["id"])
    reply = text(await tools("run_cells", path="open.ipynb", cells=[0]))
    assert "the kernel of the notebook's session" in reply
    assert str(kernel.provisioner.process.pid) in reply
    assert [s["id"] for s in await sessions(jp_serverapp)] == [session["id"]]


async def test_images_and_big_outputs_of_a_run(tools, project, monkeypatch):
    monkeypatch.setenv("AGENSTRA_MCP_MAX_IMAGE_BYTES", "5000")
    data = base64.b64encode(png()).decode()
    big = base64.b64encode(png(200, 200) + os.urandom(20_000)).decode()
    (project / "big.b64").write_text(big)  # read by the cell: code an approval card shows whole
    write_notebook(project / "img.ipynb",
                   "from IPython.display import display\n"
                   f"display({{'image/png': '{data}', 'text/plain': 'tiny'}}, raw=True)\n"
                   "display({'image/png': open('big.b64').read()}, raw=True)\n"
                   "print('z' * 30000)")
    blocks = await tools("run_cells", path="img.ipynb", cells=[0])
    images = [b for b in blocks if isinstance(b, ImageContent)]
    assert len(images) == 1 and base64.b64decode(images[0].data) == png()
    body = text(blocks)
    assert "larger than the 5,000 bytes shown to agents" in body
    assert "22,001 more characters" in body  # 30,000 z and a newline, cut to 8,000
    saved = read(project / "img.ipynb").cells[0].outputs
    assert [o.output_type for o in saved] == ["display_data", "display_data", "stream"]
    assert len(saved[2].text) == 30_001  # stored in full; only the reply is cut


async def test_a_trusted_notebook_stays_trusted_after_the_agent_runs_and_edits_it(
        jp_serverapp, tools, project):
    path = project / "signed.ipynb"
    book = write_notebook(path, "from IPython.display import HTML\nHTML('<b>old</b>')")
    book.cells[0].outputs = [nbformat.v4.new_output("display_data",
                                                    data={"text/html": "<b>old</b>"})]
    notary = jp_serverapp.contents_manager.notary
    notary.sign(book)
    nbformat.write(book, path)
    await tools("insert_cell", path="signed.ipynb", index=1,
                source="HTML('<i>new</i>')")
    await tools("run_cells", path="signed.ipynb", cells=[0, 1])
    saved = read(path)
    assert saved.cells[1].outputs[0].data["text/html"] == "<i>new</i>"
    assert notary.check_signature(saved)
    assert all("trusted" not in cell.metadata for cell in saved.cells)

    untrusted = project / "unsigned.ipynb"
    write_notebook(untrusted, "1")
    book = read(untrusted)
    book.cells.append(nbformat.v4.new_code_cell("x", outputs=[nbformat.v4.new_output(
        "display_data", data={"text/html": "<script>alert(1)</script>"})]))
    nbformat.write(book, untrusted)
    await tools("edit_cell", path="unsigned.ipynb", cell=0, source="2")
    assert not notary.check_signature(read(untrusted))  # an edit trusts nobody's outputs


async def test_a_flood_of_output_is_kept_bounded_in_the_notebook(tools, project, monkeypatch):
    monkeypatch.setenv("AGENSTRA_MCP_MAX_KEPT_OUTPUT_BYTES", "10000")
    write_notebook(project / "flood.ipynb", "for i in range(2000):\n    print('x' * 50)")
    reply = text(await tools("run_cells", path="flood.ipynb", cells=[0]))
    assert "output dropped: more than 10,000 bytes" in reply
    outputs = read(project / "flood.ipynb").cells[0].outputs
    assert sum(len(o.get("text", "")) for o in outputs) < 11_000
    assert "output dropped" in outputs[-1].text


async def test_a_cell_over_its_timeout_is_interrupted(tools, project):
    write_notebook(project / "slow.ipynb", "import time\nprint('start', flush=True)\n"
                   "time.sleep(60)", "print('after')")
    reply = text(await tools("run_cells", path="slow.ipynb", cells=[0, 1], timeout=3))
    assert "interrupted: over the timeout of 3 s" in reply
    assert "start" in reply and "KeyboardInterrupt" in reply
    assert "Not run after that: cells 1" in reply
    again = text(await tools("run_cells", path="slow.ipynb", cells=[1]))
    assert "after" in again  # the kernel lives on


async def test_a_busy_kernel_is_reported_and_nothing_is_queued(jp_serverapp, tools, project):
    write_notebook(project / "busy.ipynb", "import time\ntime.sleep(8)",
                   "open('ran', 'w').close()")
    first = asyncio.create_task(tools("run_cells", path="busy.ipynb", cells=[0], timeout=60))
    for _ in range(200):  # until the first cell runs
        await asyncio.sleep(0.1)
        kernels = jp_serverapp.kernel_manager.list_kernel_ids()
        if kernels and jp_serverapp.kernel_manager.get_kernel(kernels[0]).execution_state \
                == "busy":
            break
    with pytest.raises(ToolError, match=r"busy .* nothing was run"):
        await tools("run_cells", path="busy.ipynb", cells=[1], timeout=2)
    assert "[1] done" in text(await first)
    await asyncio.sleep(1)
    assert not (project / "ran").exists()


async def test_a_kernel_that_dies_in_a_cell_is_reported_at_once(tools, project):
    write_notebook(project / "die.ipynb", "print('bye', flush=True)\nimport os\nos._exit(1)",
                   "print('not run')")
    reply = text(await asyncio.wait_for(tools("run_cells", path="die.ipynb", cells=[0, 1]), 30))
    assert "the kernel died or was restarted while it ran" in reply
    assert "Not run after that: cells 1" in reply


async def test_interrupt_stops_a_long_cell(tools, project, asks):
    started = project / "started"
    write_notebook(project / "long.ipynb", "import time\nopen('started', 'w').close()\n"
                   "time.sleep(120)")
    running = asyncio.create_task(tools("run_cells", path="long.ipynb", cells=[0], timeout=100))
    for _ in range(600):  # until the cell runs (in the notebook's folder, the kernel's cwd)
        if started.exists() or running.done():
            break
        await asyncio.sleep(0.1)
    assert started.exists()
    reply = text(await tools("interrupt", path="long.ipynb"))
    assert reply == "Interrupted the kernel of long.ipynb."
    assert asks.requests[-1].kind == "execute"
    assert asks.requests[-1].title == "Interrupt the kernel of long.ipynb"
    assert not asks.requests[-1].outsideSandbox  # it runs no code
    result = text(await asyncio.wait_for(running, 30))
    assert "KeyboardInterrupt" in result and "[1] failed" in result


async def test_an_interrupt_not_allowed_does_nothing(jp_serverapp, tools, project, asks):
    write_notebook(project / "n.ipynb", "n = 1")
    await tools("run_cells", path="n.ipynb", cells=[0])
    asks.outcome = "rejected"
    with pytest.raises(ToolError, match="The user rejected interrupting"):
        await tools("interrupt", path="n.ipynb")


# -- variables --------------------------------------------------------------------------------


async def test_variables_summarises_a_dataframe_and_leaves_the_namespace(tools, project, asks):
    write_notebook(project / "v.ipynb",
                   "import pandas as pd\n"
                   "df = pd.DataFrame({'city': ['Oslo', 'Lima', 'Pune'],\n"
                   "                   'temp': [3.5, 19.0, 31.2]})\n"
                   "n = 7\n_private = 1\nopenai_api_key = 'sk-abcdefghijklmnop'\n"
                   "url = 'https://user:pw1234@example.com/x'\n"
                   "cfg = {'password': 'hunter2', 'user': 'bob'}\n"
                   "headers = {'X': 'Bearer ghp_abcdefghijklmnop1234'}\n"
                   "keys = ['AKIAIOSFODNN7EXAMPLE']",
                   "'_agenstra_variables' in globals()")
    assert "No kernel runs" in text(await tools("variables", path="v.ipynb"))
    await tools("run_cells", path="v.ipynb", cells=[0])
    asked = len(asks.requests)
    listing = text(await tools("variables", path="v.ipynb"))
    assert "df: pandas.DataFrame, shape (3, 2)" in listing
    assert "'city': object" in listing or "'city': str" in listing
    assert "Oslo" in listing and "n: int" in listing
    assert "_private" not in listing and "pd:" not in listing
    assert "openai_api_key: str (value hidden: its name looks secret)" in listing
    assert "url: str" in listing and "example.com" in listing
    assert "sk-abc" not in listing and "pw1234" not in listing
    # Secrets inside containers too: a secret-named key's value, credentials, key formats.
    assert "hunter2" not in listing and "'user': 'bob'" in listing
    assert "ghp_" not in listing and "AKIAIOSFODNN7EXAMPLE" not in listing
    # The kernel's memory is not the project's files: a read the default policy asks for.
    assert len(asks.requests) == asked + 1
    request = asks.requests[-1]
    assert (request.kind, request.paths) == ("read", [])
    assert request.title == "Read the variables of the kernel of v.ipynb"
    asks.outcome = "rejected"
    with pytest.raises(ToolError, match="The user rejected reading the variables"):
        await tools("variables", path="v.ipynb")
    asks.outcome = "allowed"
    after = text(await tools("run_cells", path="v.ipynb", cells=[1]))
    assert "False" in after


async def test_variables_runs_nothing_the_agent_planted(tools, project, monkeypatch):
    """The kernel imports from its working directory (the notebook's folder, which the
    agent writes) first: the summaries must import nothing from there. Without the test
    run's PYTHONPATH, as a user's kernel runs."""
    monkeypatch.delenv("PYTHONPATH", raising=False)
    marker = project.parent / "planted-code-ran"
    plant = f"open({str(marker)!r}, 'a').write(__name__)\n"
    (project / "agenstra_jupyter").mkdir()
    (project / "agenstra_jupyter" / "__init__.py").write_text(plant)
    (project / "reprlib.py").write_text(plant)
    # A kernel that has not imported reprlib yet: the summaries' `import reprlib` searches.
    write_notebook(project / "p.ipynb", "import sys\nsys.modules.pop('reprlib', None)\n"
                   "value = [1, 2]")
    await tools("run_cells", path="p.ipynb", cells=[0])
    listing = text(await tools("variables", path="p.ipynb"))
    assert "value: list" in listing, listing
    assert not marker.exists(), marker.read_text()


async def test_a_kernel_in_an_agents_project_runs_none_of_its_files(
        jp_serverapp, tools, project, jp_root_dir, monkeypatch):
    """`python -m ipykernel_launcher` started in the notebook's folder would run a planted
    ipykernel_launcher.py, and IPython would import planted modules from there: in an
    agent's project the kernel imports nothing from its folder. Elsewhere it does, as
    Jupyter always did. Without the test run's PYTHONPATH, as a user's kernel runs."""
    from jupyter_client.provisioning.factory import KernelProvisionerFactory

    from agenstra_jupyter.controller import provisioner

    monkeypatch.delenv("PYTHONPATH", raising=False)
    factory = KernelProvisionerFactory.instance()
    monkeypatch.setattr(factory, "default_provisioner_name", factory.default_provisioner_name)
    provisioner.use_as_default()
    assert factory.default_provisioner_name == provisioner.NAME
    provisioner.add_project(project)
    marker = Path(jp_root_dir) / "planted-code-ran"
    plant = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
    (project / "ipykernel_launcher.py").write_text(plant)
    for folder in (project, Path(jp_root_dir) / "mine"):
        folder.mkdir(exist_ok=True)
        (folder / "helper_module.py").write_text("VALUE = 'from the folder'\n" if
                                                 folder.name == "mine" else plant)
        write_notebook(folder / "k.ipynb", "import os, sys\nprint(os.path.basename(os.getcwd()))\n"
                       "import helper_module\nprint(helper_module.VALUE)")
    reply = text(await tools("run_cells", path="k.ipynb", cells=[0]))
    assert "proj" in reply  # the kernel works in the notebook's folder
    assert "ModuleNotFoundError" in reply and "helper_module" in reply, reply
    assert not marker.exists(), marker.read_text()

    # A notebook outside every agent's project keeps Jupyter's usual imports.
    mine = str((Path(jp_root_dir) / "mine").resolve())  # a caller there, but no agent's
    outside = Caller(client_id="local", agent_id="a2", project=mine, ask=Asks())
    reply = text(await call_tool(jp_serverapp, outside, "run_cells",
                                 {"path": "k.ipynb", "cells": [0]}))
    assert "from the folder" in reply, reply
