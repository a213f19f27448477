"""The notebook tools on notebooks open with real-time collaboration (jupyter-collaboration):
the edit goes into the shared document (every open view shows it), the user's own unsaved
typing is kept, a cell the user deleted is not brought back, run outputs appear in the
document, and the room writes the result to disk. A notebook nobody has open is still read
and written as a file, and no room is opened for it.

`shared.apply` (the three-way replay of a tool's change) is tested on real YNotebook
documents; the tools inside a real Jupyter server with jupyter_server_ydoc, its rooms opened
as JupyterLab's websocket opens them (`get_document(create=True)`).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_server.utils import ensure_async
from jupyter_ydoc import YNotebook
from tornado.web import HTTPError

from agenstra_jupyter.controller import provisioner, saves
from agenstra_jupyter.controller.mcp import shared
from agenstra_jupyter.controller.mcp.notebooks import NotebookStore, ToolError, resolve
from agenstra_jupyter.controller.mcp.tools import Caller, call_tool

from .test_notebook_tools import Asks, text, write_notebook

SAVE_DELAY = 0.2


def document(*sources: str) -> YNotebook:
    book = YNotebook()
    notebook = nbformat.v4.new_notebook()
    for index, source in enumerate(sources):
        cell = nbformat.v4.new_code_cell(source)
        cell.id = f"c{index}"
        notebook.cells.append(cell)
    book.set(notebook)
    return book


def sources(book: YNotebook) -> list[str]:
    return [cell["source"] for cell in shared.read(book)["cells"]]


def ids(book: YNotebook) -> list[str]:
    return [cell["id"] for cell in shared.read(book)["cells"]]


# -- the replay, on documents ---------------------------------------------------------------


def test_an_insert_lands_after_its_neighbour_and_keeps_the_users_typing():
    book = document("a", "b", "c")
    before = shared.read(book)["cells"]
    after = [*before[:2], {**before[0], "id": "new", "source": "inserted"}, before[2]]
    book.set_cell(0, source="a, typed by the user meanwhile")
    book.ycells.insert(0, book.create_ycell({"cell_type": "markdown", "source": "# user's",
                                             "metadata": {}, "id": "users"}))
    shared.apply(book, before, after)
    assert sources(book) == ["# user's", "a, typed by the user meanwhile", "b", "inserted", "c"]


def test_an_edit_changes_only_its_cell_and_a_cell_deleted_meanwhile_stays_deleted():
    book = document("a", "b", "c")
    before = shared.read(book)["cells"]
    after = [{**before[0], "source": "A"}, {**before[1], "source": "B"}, before[2]]
    del book.ycells[1]  # the user deleted b while the tool was at work
    book.set_cell(1, source="c, the user's")
    shared.apply(book, before, after)
    assert sources(book) == ["A", "c, the user's"]


def test_delete_and_move_by_id():
    book = document("a", "b", "c", "d")
    before = shared.read(book)["cells"]
    shared.apply(book, before, [before[0], before[2], before[3]])
    assert ids(book) == ["c0", "c2", "c3"]
    before = shared.read(book)["cells"]
    book.set_cell(1, source="c, the user's")
    shared.apply(book, before, [before[1], before[2], before[0]])  # c0 moved to the end
    assert ids(book) == ["c2", "c3", "c0"]
    assert sources(book) == ["c, the user's", "d", "a"]


def test_outputs_count_and_metadata_go_into_the_cell():
    book = document("print('hi')")
    before = shared.read(book)["cells"]
    ran = {**before[0], "execution_count": 3,
           "outputs": [{"output_type": "stream", "name": "stdout", "text": "hi\n"},
                       {"output_type": "execute_result", "execution_count": 3,
                        "data": {"text/plain": "42"}, "metadata": {}}],
           "metadata": {**before[0]["metadata"], "trusted": True}}
    book.ycells[0]["metadata"]["tags"] = ["user"]
    shared.apply(book, before, [ran])
    [cell] = shared.read(book)["cells"]
    assert cell["execution_count"] == 3 and isinstance(cell["execution_count"], int)
    assert cell["outputs"][0]["text"] == "hi\n" and cell["outputs"][1]["data"] == {
        "text/plain": "42"}
    assert cell["metadata"] == {"tags": ["user"], "trusted": True}
    # As the room saves it: valid nbformat.
    nbformat.validate(nbformat.from_dict(book.get()))


def test_a_cell_changed_to_markdown_is_replaced_in_place():
    book = document("a", "b")
    before = shared.read(book)["cells"]
    markdown = {"cell_type": "markdown", "id": "c1", "source": "# B", "metadata": {}}
    shared.apply(book, before, [before[0], markdown])
    assert [c["cell_type"] for c in shared.read(book)["cells"]] == ["code", "markdown"]
    assert sources(book) == ["a", "# B"]


# -- the tools, in a server with real-time collaboration --------------------------------------


@pytest.fixture
def jp_server_config(jp_root_dir):
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_server_ydoc": True,
                                              "jupyter_server_fileid": True}},
        "SQLiteYStore": {"db_path": str(jp_root_dir / ".rtc_test.db")},
        "BaseFileIdManager": {"root_dir": str(jp_root_dir),
                              "db_path": str(jp_root_dir / ".fid_test.db"),
                              "db_journal_mode": "OFF"},
        "YDocExtension": {"document_save_delay": SAVE_DELAY},
    }


@pytest.fixture(autouse=True)
def in_root(jp_root_dir, monkeypatch):
    """A room opened from Python keeps its updates in `.jupyter_ystore.db` of the current
    directory (JupyterLab's websocket passes the configured path): the test's, not the
    checkout's."""
    monkeypatch.chdir(jp_root_dir)


@pytest.fixture
def project(jp_root_dir) -> Path:
    folder = Path(jp_root_dir) / "proj"
    folder.mkdir()
    return folder


@pytest.fixture
def tools(jp_serverapp, project):
    caller = Caller(client_id="local", agent_id="a1", project=str(project.resolve()),
                    ask=Asks())

    async def call(name: str, **arguments) -> list:
        return await call_tool(jp_serverapp, caller, name, arguments)

    return call


def extension(serverapp):
    return serverapp.web_app.settings["jupyter_server_ydoc"]


async def open_in_lab(serverapp, path: str) -> YNotebook:
    """What JupyterLab's websocket does when the notebook is opened: its room, live."""
    return await extension(serverapp).get_document(
        path=path, content_type="notebook", file_format="json", copy=False, create=True)


async def saved(path: Path, check, timeout: float = 10) -> nbformat.NotebookNode:
    """The file once the room has written what `check` wants (it writes in place: a read
    may see the file half written)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            book = nbformat.read(path, as_version=4)
        except nbformat.reader.NotJSONError:
            book = None
        if (book is not None and check(book)) or time.monotonic() > deadline:
            return book
        await asyncio.sleep(0.05)


async def test_an_open_notebook_gets_the_edit_live_and_on_disk(jp_serverapp, tools, project):
    write_notebook(project / "live.ipynb", "a = 1", "b = 2")
    live = await open_in_lab(jp_serverapp, "proj/live.ipynb")
    live.set_cell(0, source="a = 10  # the user's, not saved yet")
    listing = text(await tools("read_notebook", path="live.ipynb"))
    assert "the user's, not saved yet" in listing  # the agent reads what the user sees
    await tools("insert_cell", path="live.ipynb", index=1, source="print(a)")
    await tools("edit_cell", path="live.ipynb", cell=2, source="b = 20")
    assert sources(live) == ["a = 10  # the user's, not saved yet", "print(a)", "b = 20"]
    book = await saved(project / "live.ipynb", lambda b: len(b.cells) == 3)
    assert [c.source for c in book.cells] == sources(live)  # the room wrote it


async def test_run_outputs_appear_in_the_open_notebook(jp_serverapp, tools, project):
    write_notebook(project / "run.ipynb", "print('x is', 6 * 7)")
    live = await open_in_lab(jp_serverapp, "proj/run.ipynb")
    reply = text(await tools("run_cells", path="run.ipynb", cells=[0]))
    assert "x is 42" in reply
    [cell] = shared.read(live)["cells"]
    assert cell["execution_count"] == 1 and cell["outputs"][0]["text"] == "x is 42\n"
    book = await saved(project / "run.ipynb", lambda b: b.cells[0].outputs)
    assert book.cells[0].outputs[0].text == "x is 42\n"


async def test_a_notebook_nobody_has_open_is_a_file_and_opens_no_room(jp_serverapp, tools,
                                                                      project):
    write_notebook(project / "closed.ipynb", "1")
    await tools("insert_cell", path="closed.ipynb", index=1, source="2")
    assert [c.source for c in nbformat.read(project / "closed.ipynb", as_version=4).cells] \
        == ["1", "2"]
    assert await extension(jp_serverapp).get_document(
        path="proj/closed.ipynb", content_type="notebook", file_format="json",
        copy=False) is None


def test_a_replay_by_repeated_ids_is_refused():
    book = document("a", "b")
    before = shared.read(book)["cells"]
    twins = [before[0], {**before[1], "id": before[0]["id"]}]
    with pytest.raises(ValueError, match="repeated ids"):
        shared.apply(book, twins, twins)
    assert sources(book) == ["a", "b"]


async def test_cells_of_repeated_ids_are_renamed_never_copied(jp_serverapp, tools, project):
    """An agent writes a file whose cells share an id; the room loads it as it is."""
    cells = [{"cell_type": "code", "id": "twin", "metadata": {}, "outputs": [],
              "execution_count": None, "source": source} for source in ("a", "b")]
    (project / "twins.ipynb").write_text(json.dumps({
        "cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    live = await open_in_lab(jp_serverapp, "proj/twins.ipynb")
    for _ in range(2):
        await tools("insert_cell", path="twins.ipynb", index=2, source="new")
    assert sources(live) == ["a", "b", "new", "new"]
    assert len(set(ids(live))) == 4


async def test_a_room_opened_between_read_and_write_refuses_the_write(jp_serverapp, project):
    write_notebook(project / "late.ipynb", "1")
    target = await resolve(jp_serverapp, str(project.resolve()), "late.ipynb")
    store = NotebookStore(jp_serverapp)
    notebook = await store.load(target)  # the file: nobody has it open
    live = await open_in_lab(jp_serverapp, "proj/late.ipynb")
    notebook.cells.append(nbformat.v4.new_code_cell("2"))
    with pytest.raises(ToolError, match="opened in JupyterLab meanwhile"):
        await store.save(target, notebook)
    assert sources(live) == ["1"]


async def test_a_shared_document_over_the_byte_limit_is_not_opened(jp_serverapp, tools, project,
                                                                   monkeypatch):
    monkeypatch.setenv("AGENSTRA_MCP_MAX_NOTEBOOK_BYTES", "100000")
    write_notebook(project / "small.ipynb", "1")
    live = await open_in_lab(jp_serverapp, "proj/small.ipynb")
    live.set_cell(0, source="x" * 200_000)  # grown in the room, never written to disk
    with pytest.raises(ToolError, match="larger than the 100,000 bytes"):
        await tools("read_notebook", path="small.ipynb")


async def test_a_save_never_writes_through_a_link_the_agent_swapped_in(
        jp_serverapp, project, jp_root_dir, monkeypatch):
    """The user has a notebook of the project open; the agent swaps its file for a link to
    the user's notebook elsewhere. Saving it (JupyterLab's save, a room's delayed save: the
    contents manager writes through links) is refused; saves elsewhere are not."""
    monkeypatch.setattr(provisioner, "_projects", set())
    provisioner.add_project(project)
    contents = jp_serverapp.contents_manager
    contents.register_pre_save_hook(saves.refuse_symlinked_saves)
    mine = Path(jp_root_dir) / "mine.ipynb"
    write_notebook(mine, "the user's own")
    (project / "n.ipynb").symlink_to(mine)
    model = {"type": "notebook", "format": "json",
             "content": nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x")])}
    with pytest.raises(HTTPError) as refused:
        await ensure_async(contents.save(model, "proj/n.ipynb"))
    assert refused.value.status_code == 400 and "symbolic link" in refused.value.log_message
    assert [c.source for c in nbformat.read(mine, as_version=4).cells] == ["the user's own"]
    await ensure_async(contents.save(model, "proj/plain.ipynb"))  # in the project: saved
    await ensure_async(contents.save(model, "mine.ipynb"))  # outside any project: as before
    assert [c.source for c in nbformat.read(mine, as_version=4).cells] == ["x"]
