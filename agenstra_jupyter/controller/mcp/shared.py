"""Notebooks open with real-time collaboration (jupyter-collaboration): the tools read and
change the shared document, so every open view shows an agent's edit at once and the
user's unsaved typing is neither lost nor overwritten.

When `jupyter_server_ydoc` runs and a notebook's room is open (someone has the notebook
open in JupyterLab), the tools read the shared document instead of the file, and write
their change into it; the room saves it to disk through the contents manager, as it saves
the user's own edits. A notebook nobody has open is read and written as a file
(notebooks.NotebookStore).

A tool reads a notebook, decides, and writes: meanwhile the user may type. So a write is
not "make the document equal to mine" but the tool's own change, replayed on the document
as it is now: the difference between what the tool read and what it wrote (cells
inserted, deleted or moved; a source, outputs, an execution count or a metadata key
changed), applied by cell id in one transaction. A cell the user deleted meanwhile is not
brought back.
"""

from __future__ import annotations

import copy
import json
from bisect import bisect_left
from typing import Any

from jupyter_ydoc import YNotebook
from jupyter_ydoc.utils import cast_all
from nbformat.v4.nbbase import random_cell_id
from pycrdt import Array, Map, Text

# What a tool may change in a cell (its id names it).
FIELDS = ("cell_type", "source", "outputs", "execution_count", "metadata", "attachments")


async def open_document(extension: Any, api_path: str) -> YNotebook | None:
    """The shared notebook at `api_path` when its room is open (never opens one: a room
    nobody watches would only delay the write to disk), else None."""
    document = await extension.get_document(path=api_path, content_type="notebook",
                                            file_format="json", copy=False)
    return document if isinstance(document, YNotebook) else None


def read(document: YNotebook) -> dict[str, Any]:
    """The shared notebook as nbformat JSON, every cell with its id (nbformat 4.4
    notebooks too: the shared document gives all its cells one)."""
    meta = document.ydoc.get("meta", type=Map).to_py() or {}
    cells = [_plain(ycell) for ycell in document.ycells]
    return {"cells": cells, "metadata": cast_all(meta.get("metadata") or {}, float, int),
            "nbformat": int(meta.get("nbformat", 4)),
            "nbformat_minor": int(meta.get("nbformat_minor", 5))}


def cell_count(document: YNotebook) -> int:
    return len(document.ycells)


def apply(document: YNotebook, before: list[dict[str, Any]], after: list[dict[str, Any]]) -> None:
    """Replay on `document` what changed from `before` (the cells the tool read) to `after`
    (the cells it wants), in one transaction: one update reaches every open view. Both
    name each cell by a unique id (ValueError otherwise: a replay by ambiguous ids would
    copy cells)."""
    old, new = _by_id(before), _by_id(after)
    with document.ydoc.transaction():
        moved = _moved(before, after)
        changed = [cell_id for cell_id in old.keys() & new.keys()
                   if cell_id not in moved and old[cell_id] != new[cell_id]]
        if changed:  # in place: positions stay, so one index serves them all
            positions = _positions(document)
            for cell_id in changed:
                if cell_id in positions:  # else the user deleted it meanwhile
                    _update(document, positions[cell_id], old[cell_id], new[cell_id])
        for cell_id in old.keys() - new.keys():
            at = _index(document, cell_id)
            if at is not None:
                del document.ycells[at]
        for position, cell in enumerate(after):
            if cell["id"] not in old or cell["id"] in moved:
                _place(document, after, position, old.get(cell["id"]))


def repair_ids(document: YNotebook) -> bool:
    """Give every cell without a usable id, or with one an earlier cell has, a new one (an
    agent can write a file of duplicate ids, which the room loads as they are); whether
    any changed."""
    seen: set[str] = set()
    repaired = False
    with document.ydoc.transaction():
        for ycell in document.ycells:
            cell_id = ycell.get("id")
            if not isinstance(cell_id, str) or not cell_id or cell_id in seen:
                ycell["id"] = cell_id = random_cell_id()
                repaired = True
            seen.add(cell_id)
    return repaired


def size(document: YNotebook) -> int:
    """Bytes of the shared document's state (encoded in Rust, without converting cells)."""
    return len(document.ydoc.get_update())


def _by_id(cells: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {cell.get("id"): cell for cell in cells}
    if len(found) != len(cells) or not all(isinstance(i, str) and i for i in found):
        raise ValueError("The notebook's cells have missing or repeated ids: nothing was "
                         "changed")
    return found  # type: ignore[return-value]


def _positions(document: YNotebook) -> dict[str, int]:
    return {ycell.get("id"): at for at, ycell in enumerate(document.ycells)}


def _moved(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> set[str]:
    """Cells kept whose order changed: those off a longest run kept in order (a move_cell
    moves one cell; the others keep their place in the user's document)."""
    rank = {cell["id"]: index for index, cell in enumerate(before)}
    kept = [cell["id"] for cell in after if cell["id"] in rank]
    # Longest increasing subsequence of the kept cells' old positions (patience sorting).
    tails: list[int] = []
    tail_ids: list[int] = []
    parent: list[int] = []
    for index, cell_id in enumerate(kept):
        at = bisect_left(tails, rank[cell_id])
        parent.append(tail_ids[at - 1] if at else -1)
        if at == len(tails):
            tails.append(rank[cell_id])
            tail_ids.append(index)
        else:
            tails[at], tail_ids[at] = rank[cell_id], index
    in_order: set[str] = set()
    index = tail_ids[-1] if tail_ids else -1
    while index >= 0:
        in_order.add(kept[index])
        index = parent[index]
    return set(kept) - in_order


def _index(document: YNotebook, cell_id: str) -> int | None:
    for at, ycell in enumerate(document.ycells):
        if ycell.get("id") == cell_id:
            return at
    return None


def _update(document: YNotebook, at: int, old: dict[str, Any], new: dict[str, Any]) -> None:
    """The fields the tool changed, into the cell (at `at`) as the user has it now."""
    ycell = document.ycells[at]
    for field in FIELDS:
        if old.get(field) == new.get(field):
            continue
        if field == "cell_type":  # a cell of another type: a new cell in its place
            current = _plain(ycell)
            current.update({key: new[key] for key in FIELDS if key in new})
            document.ycells[at] = document.create_ycell(current)
            return
        if field == "source":
            document.set_cell(at, source=_text(new.get("source", "")))
        elif field == "outputs":
            _set_outputs(ycell, new.get("outputs") or [])
        elif field == "metadata":
            _set_metadata(ycell, old.get("metadata") or {}, new.get("metadata") or {})
        elif field in new:
            ycell[field] = _json(new[field])
        else:
            del ycell[field]


def _set_outputs(ycell: Map, outputs: list[dict[str, Any]]) -> None:
    """Outputs as the shared document holds them (a stream's text is shared text)."""
    youtputs = ycell.get("outputs")
    if not isinstance(youtputs, Array):
        ycell["outputs"] = Array(_youtputs(outputs))
        return
    youtputs.clear()
    youtputs.extend(_youtputs(outputs))


def _youtputs(outputs: list[dict[str, Any]]) -> list[Map]:
    made = []
    for output in _json(outputs):
        if output.get("output_type") == "stream":
            output["text"] = Text(_text(output.get("text", "")))
        made.append(Map(output))
    return made


def _set_metadata(ycell: Map, old: dict[str, Any], new: dict[str, Any]) -> None:
    """The metadata keys the tool changed (the user's own keys stay as they are)."""
    ymeta = ycell.get("metadata")
    if not isinstance(ymeta, Map):
        ycell["metadata"] = Map(_json(new))
        return
    for key in old.keys() - new.keys():
        if key in ymeta:
            del ymeta[key]
    for key, value in new.items():
        if old.get(key) != value:
            ymeta[key] = _json(value)


def _place(document: YNotebook, after: list[dict[str, Any]], position: int,
           old: dict[str, Any] | None) -> None:
    """Insert (or move) `after[position]` right after the cell that precedes it in the
    tool's notebook; a moved cell keeps the user's content with the tool's changes."""
    cell = after[position]
    content = copy.deepcopy(cell)
    at = _index(document, cell["id"])
    if at is not None:  # moved: the user's version, with what the tool changed
        current = _plain(document.ycells[at])
        if old is not None:
            for field in FIELDS:
                if old.get(field) != cell.get(field) and field in cell:
                    current[field] = cell[field]
        content = current
        del document.ycells[at]
    elif old is not None:  # moved, but the user deleted it meanwhile
        return
    previous = _index(document, after[position - 1]["id"]) if position else -1
    index = previous + 1 if previous is not None else min(position, len(document.ycells))
    content["source"] = _text(content.get("source", ""))
    document.ycells.insert(index, document.create_ycell(_json(content)))


def _plain(ycell: Map) -> dict[str, Any]:
    cell = ycell.to_py()
    cell.pop("execution_state", None)  # the document's own, not nbformat's
    return cast_all(cell, float, int)  # Yjs numbers are floats


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _json(value: Any) -> Any:
    """Plain JSON values (a NotebookNode is a dict subclass the document need not know)."""
    return json.loads(json.dumps(value))
