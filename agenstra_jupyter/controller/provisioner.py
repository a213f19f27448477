"""Kernels of notebooks in an agent's project do not run the agent's files unasked.

Python looks for a module in the current directory first: `python -m ipykernel_launcher`
started in a notebook's folder imports a planted `ipykernel_launcher.py`, and IPython adds
the folder to `sys.path`, so a module IPython imports later (or a cell's `import pandas`)
may be the agent's file. In an agent's project the agent writes that folder from its
sandbox, so such a kernel would run the agent's code as the user, outside the sandbox.

This provisioner (the server's default, set by the extension; registered under the
`jupyter_client.kernel_provisioners` entry point) starts Python kernels whose working
directory lies in an agent's project, named (normalised, not resolved) or resolved, so:
- in the resolved folder (what was checked is where it runs: a symlink swapped after the
  check does not move the kernel);
- with `PYTHONSAFEPATH=1`, and `--IPKernelApp.ignore_cwd=True` when the kernelspec's argv
  runs ipykernel;
- with `kernel_startup.py` as PYTHONSTARTUP, which IPython runs while the kernel starts:
  it takes '', relative entries, the folder and the project off `sys.path` (for a wrapper
  script in argv, which gets no ignore_cwd; IPython reads no config from an env variable)
  and then runs the user's own PYTHONSTARTUP;
- without '', relative or project entries in PYTHONPATH, and without a relative or
  project PYTHONSTARTUP, PYTHONUSERBASE, PYTHONPYCACHEPREFIX or IPYTHONDIR (each would
  make Python or IPython read files from the agent's folder).
The folder is still the kernel's working directory (open("data.csv") works), but nothing
is imported from it unless the user puts it on `sys.path` themselves. IPython 8 reads no
config file or profile from the working directory (only its profile, sys.prefix/etc and
/etc); the tests plant them to keep it so.

A Python kernel already running when its folder becomes an agent's project (add_project)
is scrubbed: one silent execute of `kernel_startup.py` takes the same entries off its
`sys.path`. A busy kernel gets it queued, ahead of any later cell; nobody waits for it
longer than SCRUB_WAIT seconds.

Not protected: kernels of other languages (R, Julia, ... import from their folder as they
always did); Python kernels started by another provisioner (a kernelspec naming one, or
another default); with a wrapper script in argv, what IPython imports before it runs
PYTHONSTARTUP (user-configured extensions) and a user config that turns PYTHONSTARTUP off
(`exec_PYTHONSTARTUP = False`); Python kernels that are not IPython (xeus-python) get only
PYTHONSAFEPATH and the environment scrub at start; a running kernel keeps modules it
imported from the folder before its scrub, and one whose scrub fails is logged (restart it).
"""

from __future__ import annotations

import asyncio
import os
import weakref
from pathlib import Path
from typing import Any

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.provisioning import LocalProvisioner
from jupyter_client.session import new_id

NAME = "agenstra-local-provisioner"
STARTUP = str(Path(__file__).with_name("kernel_startup.py"))
SCRUB_WAIT = 10.0  # seconds a running kernel has to confirm its scrub (a busy one: queued)
# Read by Python or IPython as one folder or file, relative to the working directory.
PATH_VARIABLES = ("PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONPYCACHEPREFIX", "IPYTHONDIR")

_projects: set[Path] = set()  # folders agents work in (this server's): named and resolved
_kernels: weakref.WeakSet[AgentProjectProvisioner] = weakref.WeakSet()
_scrubs: set[asyncio.Task[str]] = set()  # running scrubs, held until done


def add_project(path: str | os.PathLike[str]) -> list[asyncio.Task[str]]:
    """A folder an agent writes: kernels started in it (or below) import nothing from it;
    Python kernels already running there are scrubbed (the tasks, already started)."""
    _projects.update({_lexical(path), Path(path).resolve()})
    return _scrub_running()


def _lexical(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.normpath(os.path.abspath(path)))


def projects_of(path: str | os.PathLike[str]) -> list[str]:
    """The agents' projects `path` lies in, by its name (normalised) or its resolution."""
    forms = {_lexical(path), Path(path).resolve()}
    return sorted(str(project) for project in tuple(_projects)  # a copy: read in threads
                  if any(form == project or project in form.parents for form in forms))


def in_agent_project(path: str | os.PathLike[str]) -> bool:
    return bool(projects_of(path))


def _scrub_running() -> list[asyncio.Task[str]]:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no server running (a script): no kernel either
        return []
    started = []
    for kernel in list(_kernels):
        projects = kernel.unprotected_projects()
        if projects:
            kernel.protected = True  # once: add_project is called on every agents listing
            task = loop.create_task(kernel.scrub(projects))
            _scrubs.add(task)
            task.add_done_callback(_scrubs.discard)
            started.append(task)
    return started


def scrubbed_env(env: dict[str, str]) -> list[str]:
    """Take what would make the kernel read the agent's folder out of `env` (in place);
    the names of the variables changed."""
    changed = []
    if "PYTHONPATH" in env:
        entries = env["PYTHONPATH"].split(os.pathsep)
        kept = [entry for entry in entries if _outside_projects(entry)]
        if kept != entries:
            changed.append("PYTHONPATH")
            env["PYTHONPATH"] = os.pathsep.join(kept)
            if not kept:
                del env["PYTHONPATH"]
    for name in PATH_VARIABLES:
        if name in env and not _outside_projects(env[name]):
            changed.append(name)
            del env[name]
    return changed


def _where(requested: str) -> tuple[str, list[str]]:
    """The folder a kernel asked to start in `requested` runs in, and its projects."""
    return os.path.realpath(requested), projects_of(requested)


def _outside_projects(entry: str) -> bool:
    """An absolute path in no agent's project ('' and relative ones mean the cwd)."""
    return bool(entry) and os.path.isabs(entry) and not in_agent_project(entry)


class AgentProjectProvisioner(LocalProvisioner):  # type: ignore[misc]
    """The local provisioner, with the current directory off the import path of Python
    kernels started in an agent's project."""

    cwd: str | None = None  # the resolved folder it runs in
    protected = False  # started protected, or scrubbed (or its scrub queued) since

    def is_python(self) -> bool:
        return str(getattr(self.kernel_spec, "language", "") or "").lower() == "python"

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        kwargs = await super().pre_launch(**kwargs)
        _kernels.add(self)
        requested = kwargs.get("cwd")
        self.protected = False
        self.cwd, projects = None, []
        if requested:  # the file system, in a thread
            self.cwd, projects = await asyncio.to_thread(_where, requested)
            kwargs["cwd"] = self.cwd  # checked: where it runs, whatever a link says later
        if projects and self.is_python():
            await asyncio.to_thread(self._protect, kwargs, projects)  # stats PYTHONPATH
            self.protected = True
        return kwargs

    def _protect(self, kwargs: dict[str, Any], projects: list[str]) -> None:
        env = kwargs["env"] = dict(kwargs["env"])  # a copy: a restart starts from the user's
        changed = scrubbed_env(env)
        if changed:
            self.log.info("agenstra: kernel %s in an agent's project: %s dropped from its "
                          "environment (relative or in the project)", self.kernel_id,
                          ", ".join(changed))
        env["PYTHONSAFEPATH"] = "1"
        env["AGENSTRA_KERNEL_PROJECTS"] = os.pathsep.join(projects)
        if env.get("PYTHONSTARTUP"):
            env["AGENSTRA_USER_PYTHONSTARTUP"] = env["PYTHONSTARTUP"]
        env["PYTHONSTARTUP"] = STARTUP
        if any("ipykernel" in part for part in kwargs.get("cmd", [])):
            kwargs["cmd"] = [*kwargs["cmd"], "--IPKernelApp.ignore_cwd=True"]

    def unprotected_projects(self) -> list[str]:
        """The agents' projects this running Python kernel works in, when it was started
        without protection (its folder became a project later)."""
        if self.protected or not self.cwd or not self.has_process or not self.is_python():
            return []
        return projects_of(self.cwd)

    async def scrub(self, projects: list[str]) -> str:
        """Take '', the folder and `projects` off the running kernel's sys.path: "done",
        "queued" (busy: it runs when the kernel is free) or "failed"."""
        code = (f"__import__('runpy').run_path({STARTUP!r}, {{'AGENSTRA_PROJECTS': "
                f"{projects!r}}}, 'agenstra_scrub')")
        client = self._own_client()
        if not isinstance(client, AsyncKernelClient):
            self.log.warning("agenstra: kernel %s runs in an agent's project but cannot be "
                             "scrubbed (no async client): restart it", self.kernel_id)
            return "failed"
        channels = {"shell": True, "iopub": False, "stdin": False, "hb": False,
                    "control": False}
        client.start_channels(**channels)
        try:
            msg_id = client.execute(code, silent=True, store_history=False,
                                    allow_stdin=False, stop_on_error=False)
            status = await asyncio.wait_for(_reply_status(client, msg_id), SCRUB_WAIT)
        except asyncio.TimeoutError:
            self.log.info("agenstra: kernel %s is busy: its sys.path scrub (its folder is "
                          "now an agent's project) is queued, it runs before any later "
                          "cell", self.kernel_id)
            return "queued"
        finally:
            client.stop_channels()
        if status != "ok":
            self.log.warning("agenstra: kernel %s runs in an agent's project and its "
                             "sys.path scrub failed (%s): restart it", self.kernel_id, status)
            return "failed"
        self.log.info("agenstra: kernel %s: its folder became an agent's project; the folder "
                      "and the project are off its sys.path now", self.kernel_id)
        return "done"

    def _own_client(self) -> Any:
        return None if self.parent is None else own_client(self.parent)


def own_client(manager: Any) -> Any:
    """A client of a kernel with a session (socket identity) of its own: one sharing the
    kernel manager's would take over the replies of another client's running request."""
    session = manager.session.clone()
    session.session = new_id()
    return manager.client(session=session)


async def _reply_status(client: AsyncKernelClient, msg_id: str) -> str:
    """The execute_reply's status ("ok", or "error: <exception name>")."""
    while True:
        msg = await client.get_shell_msg()
        if msg.get("parent_header", {}).get("msg_id") == msg_id:
            content = msg.get("content", {})
            status = str(content.get("status"))
            return status if status == "ok" else f"{status}: {content.get('ename')}"


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
