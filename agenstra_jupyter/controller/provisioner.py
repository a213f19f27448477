"""Kernels of notebooks in an agent's project do not run the agent's files unasked.

Python looks for a module in the current directory first: `python -m ipykernel_launcher`
started in a notebook's folder imports a planted `ipykernel_launcher.py`, and IPython adds
the folder to `sys.path`, so a module IPython imports later (or a cell's `import pandas`)
may be the agent's file. In an agent's project the agent writes that folder from its
sandbox, so such a kernel would run the agent's code as the user, outside the sandbox.

This provisioner (the server's default, set by the extension; registered under the
`jupyter_client.kernel_provisioners` entry point) starts Python kernels whose working
directory lies in an agent's project with `PYTHONSAFEPATH=1` and IPython's `ignore_cwd`:
the folder is still the kernel's working directory (open("data.csv") works), but nothing
is imported from it unless the user puts it on `sys.path` themselves.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jupyter_client.provisioning import LocalProvisioner

NAME = "agenstra-local-provisioner"

_projects: set[Path] = set()  # resolved folders agents work in (this server's)


def add_project(path: str | os.PathLike[str]) -> None:
    """A folder an agent writes: kernels started in it (or below) import nothing from it."""
    _projects.add(Path(path).resolve())


def in_agent_project(cwd: str | os.PathLike[str]) -> bool:
    folder = Path(cwd).resolve()
    return any(folder == project or project in folder.parents for project in _projects)


class AgentProjectProvisioner(LocalProvisioner):  # type: ignore[misc]
    """The local provisioner, with the current directory off the import path of Python
    kernels started in an agent's project."""

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        kwargs = await super().pre_launch(**kwargs)
        cwd = kwargs.get("cwd")
        language = str(getattr(self.kernel_spec, "language", "") or "").lower()
        if cwd and language == "python" and in_agent_project(cwd):
            kwargs["env"]["PYTHONSAFEPATH"] = "1"
            if any("ipykernel" in part for part in kwargs.get("cmd", [])):
                kwargs["cmd"] = [*kwargs["cmd"], "--IPKernelApp.ignore_cwd=True"]
        return kwargs


def use_as_default() -> bool:
    """Make it the provisioner of kernelspecs that name none, unless the operator chose
    another default (KernelProvisionerFactory.default_provisioner_name); whether it is."""
    from jupyter_client.provisioning.factory import KernelProvisionerFactory

    factory = KernelProvisionerFactory.instance()
    if factory.default_provisioner_name == "local-provisioner":
        try:
            available = factory._check_availability(NAME)  # loads its entry point
        except Exception:  # a jupyter_client without it: say so, start all the same
            available = False
        if available:
            factory.default_provisioner_name = NAME
    return factory.default_provisioner_name == NAME
