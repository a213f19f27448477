"""Projects (DESIGN.md "Projects"): agents working on the user's own folders, and nothing else.

A real `jupyter server` runs in a user's HOME outside /tmp (Jupyter root = HOME, as `jupyter
lab` started there), with its local manager and the real bubblewrap sandbox. The user has
files beside the project, ~/.ssh, Jupyter's runtime and config directories. Bad projects
are refused with a code and a reason and create nothing; a shell agent on a project works
in it and, as an attacker, finds nothing else of the user's tree.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from agenstra_jupyter.client import TurnError
from agenstra_jupyter.manager.models import AgentRecord
from agenstra_jupyter.manager.projects import PathList, relative_project, resolve_relative
from agenstra_jupyter.manager.runtimes import ProcessRuntime
from agenstra_jupyter.manager.runtimes.sandbox import bwrap_argv
from agenstra_jupyter.protocol import AgenstraError

from .conftest import TEST_IMAGE, start_jupyter, stop_jupyter
from .test_isolation import ATTACK_HELPERS

MARK = secrets.token_hex(6)
SSH_KEY = f"-----BEGIN OPENSSH PRIVATE KEY----- proj-secret-{MARK}"
SIBLING = f"sibling-secret-{MARK}"
OWNER = 4321  # a non-root owner for Docker projects


class UserMachine:
    """A user's HOME under /home, Jupyter started in it, with a project and its neighbours."""

    def __init__(self, outside: Path) -> None:
        self.home = Path(f"/home/agenstra-proj-{MARK}")
        (self.home / ".ssh").mkdir(parents=True, mode=0o700)
        (self.home / ".ssh" / "id_rsa").write_text(SSH_KEY)
        (self.home / "notes.txt").write_text("a file, not a folder")
        self.project = self.home / "work" / "proj"
        self.project.mkdir(parents=True)
        (self.project / "hello.txt").write_text(f"hello-{MARK}\n")
        (self.home / "work" / "sibling").mkdir()
        (self.home / "work" / "sibling" / "secret.txt").write_text(SIBLING)
        (self.home / ".hidden-proj").mkdir()
        (self.home / "work" / "outlink").symlink_to(outside)
        # Not hidden, so only "it holds Jupyter's config" can refuse this folder.
        self.config_dir = self.home / "settings" / "jupyter"
        self.config_dir.mkdir(parents=True)
        self.jupyter_data = self.home / ".local" / "share" / "jupyter"
        self.runtime = self.jupyter_data / "runtime"
        self.controller_data = self.jupyter_data / "agenstra"
        self.server = start_jupyter(self.home, extra_env={
            "HOME": str(self.home), "JUPYTER_DATA_DIR": str(self.jupyter_data),
            "JUPYTER_RUNTIME_DIR": str(self.runtime),
            "JUPYTER_CONFIG_DIR": str(self.config_dir),
            "AGENSTRA_CONTROLLER_DATA_DIR": str(self.controller_data),
        })
        self.client = self.server.client()

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=f"{self.server.full_url}agenstra/api", timeout=120,
                            headers={"Authorization": f"token {self.server.token}"})

    def agent_names(self) -> set[str]:
        return {agent["name"] for agent in self.client.agents()}

    def chat(self, agent: str, message: str) -> str:
        try:
            return self.client.agent(agent).chat(message, timeout=120)
        except TurnError as exc:
            raise AssertionError(f"the turn failed: {exc}") from None

    def close(self) -> None:
        self.client.close()
        stop_jupyter(self.server)
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture(scope="module")
def machine(sandbox_available, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (outside / "outside.txt").write_text("outside the root")
    machine = UserMachine(outside)
    yield machine
    machine.close()


# -- refused: a code, a reason, nothing created -------------------------------------------


REFUSED = [
    ("../x", "outside the Jupyter root"),
    ("../..", "outside the Jupyter root"),
    ("/etc", "not an absolute path"),
    ("work/outlink", "outside the Jupyter root"),  # a symlink inside, pointing out
    ("work/missing", "does not exist"),
    ("notes.txt", "not a folder"),
    (".", "choose a subfolder"),  # the root itself (here also HOME)
    ("work/..", "choose a subfolder"),
    (".hidden-proj", "hidden"),
    (".ssh", "hidden"),
    ("work/proj/../../.ssh", "hidden"),
    ("settings", "holds"),  # Jupyter's config dir lies inside it
    ("settings/jupyter", "holds"),
    (".local/share/jupyter/runtime", "hidden"),
]


@pytest.mark.parametrize(("project", "reason"), REFUSED)
def test_a_bad_project_is_refused_with_a_reason_and_creates_nothing(machine, project, reason):
    before = machine.agent_names()
    with machine.http() as http:
        response = http.post("/clients/local/agents",
                             json={"name": "bad-proj", "provider": "shell", "project": project})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "INVALID_PAYLOAD" and reason in body["message"], body
    assert machine.agent_names() == before


def test_the_root_itself_is_refused_even_by_its_real_path(machine):
    with machine.http() as http:
        response = http.post("/clients/local/agents", json={
            "name": "bad-proj", "provider": "shell", "project": "work/proj/../.."})
    assert response.status_code == 400
    assert "choose a subfolder" in response.json()["message"]


def test_a_manager_without_projects_is_refused_by_the_controller(machine, start_manager):
    remote = start_manager("noproj")
    with machine.http() as http:
        client = http.post("/clients", json={"name": "noproj", "endpoint": remote.url,
                                             "apiKey": remote.api_key})
        assert client.status_code == 201, client.text
        client_id = client.json()["id"]
        response = http.post(f"/clients/{client_id}/agents", json={
            "name": "p", "provider": "echo", "project": "work/proj"})
        assert response.status_code == 400
        assert "cannot open your files" in response.json()["message"]
        assert http.get(f"/clients/{client_id}/agents").json() == []
        http.delete(f"/clients/{client_id}")


# -- a shell agent on a project ------------------------------------------------------------


def test_a_shell_agent_works_in_its_project_and_sees_nothing_else(machine):
    created = machine.client.create_agent("p-shell", provider="shell", project="work/proj")
    assert created["project"] == "work/proj"  # relative to the Jupyter root
    listed = next(a for a in machine.client.agents() if a["name"] == "p-shell")
    assert listed["project"] == "work/proj"
    answer = machine.chat("p-shell", "pwd; cat hello.txt; echo agent-wrote > from-agent.txt")
    assert answer.splitlines()[:2] == [str(machine.project), f"hello-{MARK}"], answer
    assert (machine.project / "from-agent.txt").read_text() == "agent-wrote\n"

    (machine.project / "keys").symlink_to(machine.home / ".ssh")  # made by the user
    ssh = machine.home / ".ssh" / "id_rsa"
    attack = "\n".join([
        ATTACK_HELPERS,
        "try_read hello.txt >/dev/null; cat hello.txt >/dev/null && echo control-read",
        f"try_read '{machine.home / 'work' / 'sibling' / 'secret.txt'}'",
        f"try_see '{machine.home / 'work' / 'sibling'}'",
        f"try_read '{ssh}'", "try_read keys/id_rsa", "try_see keys/id_rsa",
        f"try_see '{machine.runtime}'", f"try_see '{machine.config_dir}'",
        *(f"try_read '{path}'" for path in machine.runtime.glob("jpserver-*.json")),
        f"try_read '{machine.controller_data / 'controller.key'}'",
        f"try_read '{machine.home / 'notes.txt'}'",
        # Up the tree: only the folders leading to the binds, empty but for them.
        "cd .. && echo parent: $(ls -A)",
        f"echo home: $(ls -A '{machine.home}')",
        f"try_write '{machine.home / 'work' / f'pwned-{MARK}'}'",
        "echo probes-ran",
    ])
    answer = machine.chat("p-shell", attack)
    assert "probes-ran" in answer and "control-read" in answer, answer
    assert not [line for line in answer.splitlines() if line.startswith("LEAK")], answer
    assert SSH_KEY not in answer and SIBLING not in answer
    parent = next(line for line in answer.splitlines() if line.startswith("parent:"))
    assert parent.split() == ["parent:", "proj"], answer
    home = next(line for line in answer.splitlines() if line.startswith("home:"))
    assert not {".ssh", "notes.txt", "settings", "jupyter.log"} & set(home.split()), answer
    assert not (machine.home / "work" / f"pwned-{MARK}").exists()


def test_deleting_an_agent_leaves_its_project(machine):
    machine.client.create_agent("p-del", provider="shell", project="work/proj")
    machine.chat("p-del", "mkdir -p made && echo kept > made/by-agent.txt")
    machine.client.delete_agent("p-del")
    assert (machine.project / "made" / "by-agent.txt").read_text() == "kept\n"
    assert (machine.project / "hello.txt").read_text() == f"hello-{MARK}\n"


def test_two_agents_share_a_project(machine):
    machine.client.create_agent("p-one", provider="shell", project="work/proj")
    machine.client.create_agent("p-two", provider="shell", project="work/proj/")
    machine.chat("p-one", f"echo from-one-{MARK} > shared.txt")
    assert machine.chat("p-two", "cat shared.txt").splitlines()[0] == f"from-one-{MARK}"
    machine.chat("p-two", "echo from-two >> shared.txt")
    assert machine.chat("p-one", "tail -1 shared.txt").splitlines()[0] == "from-two"


def test_a_projects_git_directory_is_read_only_to_its_agent(machine):
    """git runs hooks and `core.fsmonitor` from .git outside any sandbox (when the user, or
    JupyterLab's git panel, runs git in the folder): an agent must not plant them."""
    repo = machine.home / "work" / "repo"
    (repo / ".git" / "hooks").mkdir(parents=True)
    (repo / ".git" / "config").write_text("[core]\n\tbare = false\n")
    (repo / "code.py").write_text("x = 1\n")
    machine.client.create_agent("p-git", provider="shell", project="work/repo")
    answer = machine.chat("p-git", "\n".join([
        "cat .git/config >/dev/null && echo control-read",
        "echo 'touch /tmp/pwned' > .git/hooks/pre-commit 2>/dev/null && echo LEAK-hook",
        "printf '[core]\\n\\tfsmonitor = touch /tmp/pwned\\n' >> .git/config 2>/dev/null "
        "&& echo LEAK-config",
        "mv .git .git-old 2>/dev/null && echo LEAK-moved",
        "echo y = 2 >> code.py && echo control-write",
    ]))
    assert "control-read" in answer and "control-write" in answer, answer
    assert "LEAK" not in answer, answer
    assert not (repo / ".git" / "hooks" / "pre-commit").exists()
    assert "fsmonitor" not in (repo / ".git" / "config").read_text()
    assert (repo / "code.py").read_text() == "x = 1\ny = 2\n"


def test_an_agent_cannot_swap_a_project_below_its_own_for_a_link(machine):
    """An agent on a folder holds the projects below it: it may replace one with a symlink
    to ~/.ssh. The agent on that project then gets no sandbox at all, never the link's
    target."""
    inner = machine.home / "work" / "nest" / "inner"
    inner.mkdir(parents=True)
    machine.client.create_agent("p-outer", provider="shell", project="work/nest")
    machine.client.create_agent("p-inner", provider="shell", project="work/nest/inner")
    assert machine.chat("p-inner", "pwd").splitlines()[0] == str(inner)  # the control
    machine.chat("p-outer", f"rm -rf inner && ln -s '{machine.home / '.ssh'}' inner && "
                            "echo swapped")
    assert (machine.home / "work" / "nest" / "inner").is_symlink()
    with pytest.raises(TurnError, match="replaced by a link") as refused:
        machine.client.agent("p-inner").chat("cat id_rsa", timeout=120)
    assert SSH_KEY not in str(refused.value)


async def test_a_project_swapped_between_check_and_mount_is_not_followed(sandbox_available,
                                                                          tmp_path):
    """The race the check alone leaves: the folder is checked, then replaced by a link to a
    secret before bwrap mounts it. The descriptor opened at the check is what gets bound."""
    project = tmp_path / "user" / "proj"
    project.mkdir(parents=True)
    (project / "mine.txt").write_text("the user's file\n")
    secret = tmp_path / "user" / "ssh"
    secret.mkdir()
    (secret / "id_rsa").write_text(SSH_KEY)
    runtime = ProcessRuntime(workspace_root=str(tmp_path / "ws"),
                             state_root=str(tmp_path / "agents"))
    agent = AgentRecord(id="a1", name="a1", provider="shell", runtime="process",
                        password_hash="-", created_at="", updated_at="",
                        project=str(project.resolve()))
    await runtime.start(agent)
    spec = runtime._spec(agent, ["sh", "-c", "cat mine.txt id_rsa 2>&1; echo ran"])
    assert spec.workspace_fd is not None  # bwrap here binds descriptors
    project.rename(tmp_path / "user" / "moved")
    project.symlink_to(secret)  # the swap, after the check
    try:
        process = await runtime._exec(bwrap_argv(spec), spec, None)
    finally:
        os.close(spec.workspace_fd)
    output = (await process.stdout.read()).decode()
    await process.wait()
    assert "ran" in output and "the user's file" in output, output
    assert SSH_KEY not in output


@pytest.mark.parametrize("bind_fd", [True, False], ids=["bind-fd", "old-bwrap"])
async def test_git_stays_read_only_with_and_without_descriptor_binds(sandbox_available,
                                                                     tmp_path, monkeypatch,
                                                                     bind_fd):
    """bwrap older than 0.7 binds no descriptors: .git is then bound read-only by path."""
    from agenstra_jupyter.manager.runtimes import process as process_runtime

    monkeypatch.setattr(process_runtime, "_bind_fd_works", lambda _bwrap: bind_fd)
    project = tmp_path / "user" / "repo"
    (project / ".git" / "hooks").mkdir(parents=True)
    runtime = ProcessRuntime(workspace_root=str(tmp_path / "ws"),
                             state_root=str(tmp_path / "agents"))
    agent = AgentRecord(id="g1", name="g1", provider="shell", runtime="process",
                        password_hash="-", created_at="", updated_at="",
                        project=str(project.resolve()))
    result = await runtime.exec(agent, ["sh", "-c", "touch .git/hooks/pre-commit 2>&1; "
                                        "touch code.py && echo control-write"])
    assert "control-write" in result.stdout, result
    assert not (project / ".git" / "hooks" / "pre-commit").exists()
    assert (project / "code.py").exists()


def test_the_python_client_refuses_a_bad_project_with_its_reason(machine):
    with pytest.raises(AgenstraError, match="outside the Jupyter root"):
        machine.client.create_agent("p-bad", provider="shell", project="../..")
    assert "p-bad" not in machine.agent_names()


# -- Docker: the project bound at /workspace, worked on as its owner -----------------------


@pytest.mark.docker
def test_a_docker_agent_writes_its_project_as_the_folder_owner(machine, docker_available):
    project = machine.home / "work" / "dproj"
    project.mkdir()
    (project / "in.txt").write_text(f"docker-in-{MARK}\n")
    (project / ".git" / "hooks").mkdir(parents=True)
    subprocess.run(["chown", "-R", f"{OWNER}:{OWNER}", str(project)], check=True)
    machine.client.create_agent("p-docker", provider="shell", runtime="docker",
                                image=TEST_IMAGE, project="work/dproj")
    answer = machine.chat("p-docker", "id -u; pwd; cat in.txt; echo made > out.txt; "
                                      "echo $HOME > home.txt; "
                                      "touch .git/hooks/pre-commit 2>/dev/null && echo LEAK")
    assert answer.splitlines()[:3] == [str(OWNER), "/workspace", f"docker-in-{MARK}"], answer
    assert "LEAK" not in answer and not (project / ".git" / "hooks" / "pre-commit").exists()
    made = project / "out.txt"
    assert made.read_text() == "made\n"
    assert (made.stat().st_uid, made.stat().st_gid) == (OWNER, OWNER)
    assert (project / "home.txt").read_text().strip() == "/home/agenstra"  # its own HOME
    machine.client.delete_agent("p-docker")
    assert made.is_file() and (project / "in.txt").is_file()  # the user's files stay


@pytest.mark.docker
def test_a_stopped_docker_agent_does_not_follow_a_project_swapped_for_a_link(machine,
                                                                           docker_available):
    """The daemon resolves a bind's source at every container start, not only at create."""
    project = machine.home / "work" / "dswap"
    project.mkdir()
    subprocess.run(["chown", f"{OWNER}:{OWNER}", str(project)], check=True)
    agent = machine.client.create_agent("p-dswap", provider="shell", runtime="docker",
                                        image=TEST_IMAGE, project="work/dswap")
    assert machine.chat("p-dswap", "echo up").splitlines()[0] == "up"
    with machine.http() as http:
        stopped = http.post(f"/clients/local/agents/{agent['id']}/stop")
        assert stopped.status_code == 200, stopped.text
    project.rename(machine.home / "work" / "dswap-moved")
    project.symlink_to(machine.home / ".ssh")
    with pytest.raises(TurnError, match="replaced by a link") as refused:
        machine.client.agent("p-dswap").chat("cat id_rsa", timeout=120)
    assert SSH_KEY not in str(refused.value)
    machine.client.delete_agent("p-dswap")


@pytest.mark.docker
def test_a_root_owned_project_is_refused_for_docker(machine, docker_available):
    project = machine.home / "work" / "rootproj"
    project.mkdir()
    assert project.stat().st_uid == 0, "Docker tests run as root: the folder is root's"
    before = machine.agent_names()
    with pytest.raises(AgenstraError, match="belongs to root"):
        machine.client.create_agent("p-rootdocker", provider="shell", runtime="docker",
                                    image=TEST_IMAGE, project="work/rootproj")
    assert machine.agent_names() == before


# -- the manager checks again, whoever calls it ----------------------------------------------


async def test_the_manager_refuses_projects_outside_its_roots(start_manager, tmp_path):
    root = tmp_path / "root"
    (root / "ok").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "link").symlink_to(tmp_path)
    manager = start_manager("m", env={"AGENSTRA_PROJECT_ROOTS": f"{root}{os.pathsep}/nowhere"})
    async with manager.http() as http:
        assert (await http.get("/api/health")).json()["projects"] is True
        for project, reason in [("/etc", "outside"), (str(tmp_path), "outside"),
                                (str(root / "link"), "outside"), ("ok", "absolute"),
                                (str(root), "whole root"), (str(root / ".hidden"), "hidden"),
                                (str(root / "nope"), "does not exist")]:
            response = await http.post("/api/agents", json={
                "name": "x", "provider": "shell", "project": project})
            assert response.status_code == 400, (project, response.text)
            assert response.json()["code"] == "INVALID_PAYLOAD"
            assert reason in response.json()["message"], (project, response.json())
        assert (await http.get("/api/agents")).json() == []
        created = await http.post("/api/agents", json={
            "name": "ok", "provider": "shell", "project": str(root / "ok" / ".." / "ok")})
        assert created.status_code == 201, created.text
        assert created.json()["project"] == str((root / "ok").resolve())


async def test_a_project_may_not_hold_the_managers_own_data(start_manager, tmp_path):
    manager = start_manager("m", env={"AGENSTRA_PROJECT_ROOTS": str(tmp_path)})
    async with manager.http() as http:
        for project in (manager.data_dir, manager.data_dir / "workspaces"):
            project.mkdir(exist_ok=True)
            response = await http.post("/api/agents", json={
                "name": "x", "provider": "shell", "project": str(project)})
            assert response.status_code == 400, response.text
            assert "must never see" in response.json()["message"]


async def test_a_manager_without_roots_offers_no_projects(manager, tmp_path):
    async with manager.http() as http:
        assert (await http.get("/api/health")).json()["projects"] is False
        response = await http.post("/api/agents", json={
            "name": "x", "provider": "shell", "project": str(tmp_path)})
        assert response.status_code == 400
        assert "cannot open your files" in response.json()["message"]
        assert (await http.get("/api/agents")).json() == []


def test_project_roots_and_views_in_short():
    assert PathList().from_string(f"/a{os.pathsep}/b c{os.pathsep}") == ["/a", "/b c"]
    root = "/nonexistent-root"
    assert relative_project(f"{root}/work/proj", root) == "work/proj"
    assert relative_project(root, root) is None  # never "": the root is no project
    assert relative_project("/elsewhere/proj", root) is None
    assert relative_project(None, root) is None


SYSTEM_REFUSED = ["proc", "proc/self", "sys", "dev", "dev/shm", "tmp", "var/tmp", "etc",
                  "usr/lib", "var/lib", "run", "boot"]


@pytest.mark.parametrize("project", SYSTEM_REFUSED)
def test_with_the_root_at_slash_no_system_folder_is_a_project(project):
    """Containers often run Jupyter with its root at /: a project bound over the sandbox's
    own /proc would show every process's environment, /tmp other programs' sockets."""
    if not os.path.isdir(f"/{project}"):
        pytest.skip(f"/{project} does not exist on this host")  # e.g. /boot in a container
    with pytest.raises(AgenstraError) as refused:
        resolve_relative("/", project)
    assert refused.value.code == "INVALID_PAYLOAD"
    assert any(reason in refused.value.message
               for reason in ("system folder", "shared folder", "must never see"))


def test_the_python_jupyter_runs_from_and_folders_on_path_are_no_projects(tmp_path,
                                                                       monkeypatch):
    """Their programs run outside the sandbox (the kernel, `jupyter`, anything on PATH):
    an agent that could write them would run code as the user."""
    tools = tmp_path / "tools"
    (tools / "bin").mkdir(parents=True)
    (tmp_path / "work" / "proj").mkdir(parents=True)
    monkeypatch.setenv("PATH", f"{tools / 'bin'}{os.pathsep}{os.environ['PATH']}")
    for project in ("tools", "tools/bin"):
        with pytest.raises(AgenstraError, match="outside any sandbox"):
            resolve_relative(str(tmp_path), project)
    assert resolve_relative(str(tmp_path), "work/proj") == (tmp_path / "work" / "proj").resolve()
    prefix = Path(sys.prefix).resolve()
    with pytest.raises(AgenstraError, match=r"outside any sandbox|must never see"):
        resolve_relative(str(prefix.parent), prefix.name)
    inside = next(p for p in (prefix / "lib", prefix / "bin") if p.is_dir())
    with pytest.raises(AgenstraError, match="outside any sandbox"):
        resolve_relative(str(prefix), inside.name)
    # A folder made in a shared scratch folder is fine; the scratch folder itself is not.
    assert resolve_relative("/", str(tmp_path.relative_to("/")) + "/work/proj")
