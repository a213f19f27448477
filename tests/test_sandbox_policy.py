"""What the sandbox binds for a program, tried with the tricks an agent or a hostile config
would use (each one was a way out before it was closed)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from agenstra_jupyter.manager.providers.common import check_program_config
from agenstra_jupyter.manager.runtimes.netns import validate_network
from agenstra_jupyter.manager.runtimes.sandbox import (
    Program,
    SandboxSpec,
    bwrap_argv,
    resolve_program,
    sandbox_environment,
    secret_paths,
)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A user's HOME (a symlink, as on Fedora Atomic) holding a key and a tool."""
    real = tmp_path / "realhome"
    (real / ".ssh").mkdir(parents=True)
    (real / ".ssh" / "id_rsa").write_text("secret")
    (real / "bin").mkdir()
    tool = real / "bin" / "mytool"
    tool.write_text("#!/bin/sh\necho hi\n")
    tool.chmod(0o755)
    link = tmp_path / "home"
    link.symlink_to(real)
    monkeypatch.setenv("HOME", str(link))
    return link


def binds(program: Program) -> list[Path]:
    return [bind.resolve() for bind in program.binds]


def exposes(program: Program, path: Path) -> bool:
    return any(path.resolve() == b or b in path.resolve().parents for b in binds(program))


def test_a_tool_in_a_symlinked_home_binds_its_directory_only(home):
    secrets = secret_paths()
    program = resolve_program([str(home / "bin" / "mytool")], os.defpath, secrets)
    assert not exposes(program, home / ".ssh" / "id_rsa")
    assert exposes(program, home / "bin" / "mytool")


def test_a_program_right_in_home_is_bound_alone(home):
    tool = home / "tool"
    tool.write_text("#!/bin/sh\necho hi\n")
    tool.chmod(0o755)
    program = resolve_program([str(tool)], os.defpath, secret_paths())
    assert set(binds(program)) == {tool.resolve()}  # at its own path and its real one


def test_arguments_of_shells_and_later_arguments_are_never_bound(home):
    secret = home / ".ssh" / "id_rsa"
    for argv in (["sh", "-c", "x", "sh", "read", str(secret), "/w"], ["sh", str(secret)],
                 [sys.executable, "-c", "pass", str(secret)], [sys.executable, "/proc/cmdline"],
                 [sys.executable, "/etc/shadow"]):
        program = resolve_program(argv, os.environ["PATH"], secret_paths())
        assert not exposes(program, secret), argv
        assert not any(b in (Path("/proc"), Path("/etc")) for b in binds(program)), argv


def test_a_script_named_after_an_interpreter_is_bound_with_its_directory(tmp_path):
    script = tmp_path / "agents" / "agent.py"
    script.parent.mkdir()
    script.write_text("print(1)")
    program = resolve_program([sys.executable, str(script)], os.environ["PATH"], secret_paths())
    assert exposes(program, script)


def test_programs_in_agent_writable_places_get_nothing_bound(tmp_path, home):
    workspace = tmp_path / "workspaces" / "a1"
    venv = workspace / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python3").symlink_to(shutil.which("python3") or sys.executable)
    (venv / "pyvenv.cfg").write_text(f"home = {home}/.ssh/x\n")  # forged by the agent
    program = resolve_program([str(venv / "bin" / "python3")], os.defpath, secret_paths(),
                              writable=[tmp_path / "workspaces"])
    assert program.binds == [] and program.path_dirs == []


def test_bwrap_is_called_by_its_absolute_path_with_proc_sys_read_only(tmp_path):
    spec = SandboxSpec(workspace=tmp_path, home=tmp_path, program=Program(["true"]),
                       secrets=[], bwrap="/usr/bin/bwrap", tmp_size=1 << 20)
    argv = bwrap_argv(spec)
    assert argv[0] == "/usr/bin/bwrap"
    assert argv[argv.index("/proc/sys") - 1] == "--ro-bind"
    assert argv[argv.index("--tmpfs") - 2:argv.index("--tmpfs")] == ["--size", str(1 << 20)]
    env = sandbox_environment(spec, {"LD_PRELOAD": "/w/evil.so", "FOO": "bar"})
    assert "LD_PRELOAD" not in env and env["FOO"] == "bar"
    assert set(env) <= {"PATH", "HOME", "TMPDIR", "TERM", "AGENSTRA_WORKSPACE", "FOO",
                        "LANG", "LC_ALL", "TZ"}


def test_configs_that_would_steer_the_sandbox_are_refused():
    for env in ({"LD_PRELOAD": "x"}, {"LD_LIBRARY_PATH": "x"}, {"GCONV_PATH": "x"}):
        with pytest.raises(ValueError, match="steer"):
            check_program_config({"env": env})
    with pytest.raises(ValueError, match="egress"):
        validate_network({"network": "host"})
