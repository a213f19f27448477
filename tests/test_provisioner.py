"""The kernel provisioner (controller/provisioner.py) as an agent attacks it, in a real
Jupyter server (pytest-jupyter) with real ipykernel kernels: the agent writes files in its
project (modules named like the user's imports, IPython config and startup files, .pth
files, symlinks) and must not get any of them run by the user's kernel: a kernel already
running when the folder becomes a project (idle or busy), relative entries in the server's
environment, a symlink swapped between the check and the launch, a kernelspec whose argv
is a wrapper script.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from jupyter_client.provisioning.factory import KernelProvisionerFactory

from agenstra_jupyter.controller import provisioner
from agenstra_jupyter.controller.mcp.kernels import execute

PROBE = """
import json, os, sys
try:
    import helper_module
    found = helper_module.VALUE
except ModuleNotFoundError:
    found = None
print(json.dumps({"cwd": os.getcwd(), "path": sys.path, "found": found,
                  "startup": os.environ.get("PYTHONSTARTUP"),
                  "agenstra_env": sorted(k for k in os.environ if k in (
                      "AGENSTRA_KERNEL_PROJECTS", "AGENSTRA_USER_PYTHONSTARTUP")),
                  "leaked": [n for n in globals() if "agenstra" in n.lower()],
                  "user_startup_ran": globals().get("user_startup_ran", False)}))
"""
PATH_ONLY = "import json, sys; print(json.dumps({'path': sys.path}))"


@pytest.fixture
def jp_server_config():
    return {}  # the server's own kernel manager only


@pytest.fixture
def root(jp_root_dir, monkeypatch) -> Path:
    """The Jupyter root, with the provisioner as default, no project yet, and the
    environment of a user's server (no PYTHONPATH or PYTHONSTARTUP of the test run)."""
    factory = KernelProvisionerFactory.instance()
    monkeypatch.setattr(factory, "default_provisioner_name", factory.default_provisioner_name)
    assert provisioner.use_as_default()
    monkeypatch.setattr(provisioner, "_projects", set())
    for name in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONUSERBASE", "IPYTHONDIR"):
        monkeypatch.delenv(name, raising=False)
    return Path(jp_root_dir).resolve()


def plant(folder: Path, marker: Path, name: str = "helper_module.py") -> None:
    """The agent's module: records that it ran (as the user) and says where it is from."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(f"open({str(marker)!r}, 'a').write({name!r} + '\\n')\n"
                               "VALUE = 'planted'\n")


async def start(serverapp, path: str, kernel_name: str = "python3") -> str:
    return await serverapp.kernel_manager.start_kernel(kernel_name=kernel_name, path=path)


async def probe(serverapp, kernel_id: str, code: str = PROBE) -> dict:
    run = await execute(serverapp, kernel_id, code, timeout=60, max_bytes=100_000)
    text = "".join(output.get("text", "") for output in run.outputs)
    assert run.status == "ok", (run.status, run.outputs)
    return json.loads(text.strip().splitlines()[-1])


def assert_nothing_from(report: dict, folder: Path, marker: Path) -> None:
    assert report["found"] is None, report
    assert not marker.exists(), marker.read_text()
    assert "" not in report["path"] and "." not in report["path"], report["path"]
    assert not [entry for entry in report["path"] if entry.startswith(str(folder))], report


async def test_a_running_kernel_is_scrubbed_when_its_folder_becomes_a_project(
        jp_serverapp, root):
    project, marker = root / "proj", root / "planted-code-ran"
    plant(project, marker)
    kernel_id = await start(jp_serverapp, "proj")
    assert "" in (await probe(jp_serverapp, kernel_id, PATH_ONLY))["path"]  # Jupyter's usual

    tasks = provisioner.add_project(project)
    assert await asyncio.gather(*tasks) == ["done"]
    assert_nothing_from(await probe(jp_serverapp, kernel_id), project, marker)
    assert provisioner.add_project(project) == []  # scrubbed once
    assert (await probe(jp_serverapp, kernel_id))["leaked"] == []  # no name left behind


async def test_a_busy_kernel_gets_its_scrub_queued_without_anyone_waiting(
        jp_serverapp, root, monkeypatch):
    project, marker = root / "proj", root / "planted-code-ran"
    plant(project, marker)
    kernel_id = await start(jp_serverapp, "proj")
    release = root / "release"
    client = jp_serverapp.kernel_manager.get_kernel(kernel_id).client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
        busy = client.execute("import os, time\n"
                              f"while not os.path.exists({str(release)!r}): time.sleep(0.02)")
        while True:  # the cell runs: the kernel is busy
            msg = await client.get_iopub_msg(timeout=60)
            if (msg["parent_header"].get("msg_id") == busy
                    and msg["msg_type"] == "execute_input"):
                break
        monkeypatch.setattr(provisioner, "SCRUB_WAIT", 0.3)
        assert await asyncio.wait_for(asyncio.gather(*provisioner.add_project(project)),
                                      5) == ["queued"]
        release.touch()
        while True:
            reply = await client.get_shell_msg(timeout=60)
            if reply["parent_header"].get("msg_id") == busy:
                break
        assert reply["content"]["status"] == "ok"  # the user's cell was not disturbed
    finally:
        client.stop_channels()
    assert_nothing_from(await probe(jp_serverapp, kernel_id), project, marker)


async def test_relative_or_project_entries_in_the_servers_environment_are_dropped(
        jp_serverapp, root, monkeypatch):
    """'' or '.' in PYTHONPATH is the cwd; a relative PYTHONSTARTUP, IPYTHONDIR or
    PYTHONUSERBASE is read from it (a startup file, a profile's startup files, a .pth)."""
    project, marker, elsewhere = root / "proj", root / "planted-code-ran", root / "libs"
    elsewhere.mkdir()
    plant(project, marker)
    plant(project / "lib", marker)  # found through "lib" or the project's own path
    plant(project, marker, "startup.py")
    plant(project / ".ipython" / "profile_default" / "startup", marker, "00-profile.py")
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = project / "ub" / "lib" / version / "site-packages"
    site.mkdir(parents=True)
    (site / "agent.pth").write_text(f"import os; open({str(marker)!r}, 'a').write('pth\\n')\n")
    # First an entry of the user's: ipykernel_launcher drops a first entry that is the cwd.
    monkeypatch.setenv("PYTHONPATH", f"{elsewhere}::.:lib:{project}/lib")
    monkeypatch.setenv("PYTHONSTARTUP", "startup.py")
    monkeypatch.setenv("IPYTHONDIR", ".ipython")
    monkeypatch.setenv("PYTHONUSERBASE", "ub")
    provisioner.add_project(project)
    kernel_id = await start(jp_serverapp, "proj")
    report = await probe(jp_serverapp, kernel_id)
    assert_nothing_from(report, project, marker)
    assert str(elsewhere) in report["path"]  # the user's own entries stay
    assert report["startup"] is None and report["agenstra_env"] == []


async def test_a_symlink_swapped_after_the_check_does_not_move_the_kernel(
        jp_serverapp, root, monkeypatch):
    """The agent points proj/link outside (no project there) while the provisioner looks,
    then into the project before the kernel starts."""
    project, marker, outside = root / "proj", root / "planted-code-ran", root / "outside"
    outside.mkdir()
    plant(project / "real", marker)
    (project / "link").symlink_to(outside)
    provisioner.add_project(project)
    launch = provisioner.AgentProjectProvisioner.launch_kernel

    async def swapped(self, cmd, **kwargs):
        (project / "link").unlink()
        (project / "link").symlink_to(project / "real")
        return await launch(self, cmd, **kwargs)

    monkeypatch.setattr(provisioner.AgentProjectProvisioner, "launch_kernel", swapped)
    kernel_id = await start(jp_serverapp, "proj/link")
    report = await probe(jp_serverapp, kernel_id)
    assert report["cwd"] == str(outside)  # where it was checked
    assert_nothing_from(report, project, marker)


async def test_a_wrapper_script_kernel_imports_nothing_and_no_config_is_read_from_the_folder(
        jp_serverapp, root, jp_kernel_dir, tmp_path, monkeypatch):
    """A kernelspec whose argv is a script (no ignore_cwd for it) still gets the folder off
    sys.path, and the user's own PYTHONSTARTUP still runs. IPython config files and profiles
    the agent plants in the folder are not read (IPython 8 looks in none there)."""
    project, marker = root / "proj", root / "planted-code-ran"
    plant(project, marker)
    for name in ("ipython_config.py", "ipython_kernel_config.py"):
        plant(project, marker, name)
        plant(project / "profile_default", marker, name)
    plant(project / "profile_default" / "startup", marker, "00-startup.py")
    plant(project / ".ipython" / "profile_default" / "startup", marker, "00-startup.py")
    for name in ("ipython_config.json", "ipython_kernel_config.json"):
        (project / name).write_text(json.dumps(
            {"InteractiveShellApp": {"exec_lines": [f"open({str(marker)!r}, 'a')"]}}))
    wrapper = tmp_path / "wrapped-kernel.sh"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m ipykernel_launcher -f "$1"\n')
    wrapper.chmod(0o755)
    spec = Path(jp_kernel_dir) / "wrapped"
    spec.mkdir()
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(wrapper), "{connection_file}"], "display_name": "wrapped",
        "language": "python"}))
    user_startup = tmp_path / "user-startup.py"
    user_startup.write_text("user_startup_ran = True\n")
    monkeypatch.setenv("PYTHONSTARTUP", str(user_startup))
    provisioner.add_project(project)
    kernel_id = await start(jp_serverapp, "proj", kernel_name="wrapped")
    report = await probe(jp_serverapp, kernel_id)
    assert_nothing_from(report, project, marker)
    assert report["cwd"] == str(project)
    assert report["user_startup_ran"] is True and report["leaked"] == []
    assert report["startup"] == str(user_startup) and report["agenstra_env"] == []
    await jp_serverapp.kernel_manager.restart_kernel(kernel_id)  # the same again, once each
    assert await probe(jp_serverapp, kernel_id) == report
