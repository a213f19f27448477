"""Saves into an agent's project never write through a symbolic link.

The agent writes its project folder from its sandbox, so it may swap a file the user has
open (or a folder above it) for a symlink to a file elsewhere; the next save of that
document (JupyterLab's, or the delayed save of a shared document after a notebook tool's
edit) would then write its content through the link, outside the project. The contents
manager opens paths by name, so this pre-save hook refuses a save whose path, below the
Jupyter root, does not lead where it says.
"""

from __future__ import annotations

import os
from typing import Any

from tornado.web import HTTPError

from . import provisioner


def refuse_symlinked_saves(model: Any = None, path: str = "", contents_manager: Any = None,
                           **kwargs: Any) -> None:
    """A contents manager pre-save hook (`register_pre_save_hook`)."""
    root = getattr(contents_manager, "root_dir", None)
    if not root or not isinstance(path, str):
        return
    parts = [part for part in path.strip("/").split("/") if part]
    lexical = os.path.join(os.path.abspath(os.path.expanduser(root)), *parts)
    if not provisioner.in_agent_project(lexical):
        return
    expected = os.path.join(os.path.realpath(os.path.expanduser(root)), *parts)
    if os.path.realpath(lexical) != expected:
        raise HTTPError(400, f"Not saved: {path} leads through a symbolic link in an agent's "
                        "project (the agent may have put it there); save it elsewhere")
