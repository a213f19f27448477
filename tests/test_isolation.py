"""The isolation promise, tried as an attacker would, on a machine laid out as a real one.

HOME is not under /tmp: it is a new directory under /home holding ~/.ssh, cloud
credentials and Jupyter's own directories (runtime with the server's token and cookie
secret, the controller's key and registry, the manager's database). A real Jupyter server
runs there with its local manager; agents of every runtime, with and without network, then
try to read each secret, reach the Jupyter server and the manager on loopback, connect to
UNIX sockets, write outside their workspace, escape through symlinks, read other
processes' environments and outlive their turn. Every attack prints `LEAK ...` when it
works; each test also proves its probes ran (positive controls), so none passes vacuously.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from agenstra_jupyter.client import TurnError
from agenstra_jupyter.protocol import ChatEventKind

from .conftest import TEST_IMAGE, start_jupyter, stop_jupyter
from .fakes.vendors import Reply, ToolUse
from .helpers import CLI_BIN, AgentsClient, need_cli

needs_bwrap = pytest.mark.usefixtures("sandbox_available")
MARK = secrets.token_hex(6)
SSH_KEY = f"-----BEGIN OPENSSH PRIVATE KEY----- ssh-secret-{MARK}"
AWS_KEY = f"aws-secret-{MARK}"
ENV_SECRET = f"env-secret-{MARK}"


class RealMachine:
    """A user's HOME outside /tmp with a Jupyter server, as `jupyter lab` makes it."""

    def __init__(self) -> None:
        self.home = Path(f"/home/agenstra-it-{MARK}")
        (self.home / ".ssh").mkdir(parents=True, mode=0o700)
        (self.home / ".ssh" / "id_rsa").write_text(SSH_KEY)
        (self.home / ".aws").mkdir()
        (self.home / ".aws" / "credentials").write_text(f"aws_secret_access_key={AWS_KEY}")
        (self.home / ".bash_history").write_text(f"export TOKEN={AWS_KEY}\n")
        self.jupyter_data = self.home / ".local" / "share" / "jupyter"
        self.runtime = self.jupyter_data / "runtime"
        self.controller_data = self.jupyter_data / "agenstra"
        self.server = start_jupyter(self.home, extra_env={
            "HOME": str(self.home), "JUPYTER_DATA_DIR": str(self.jupyter_data),
            "JUPYTER_RUNTIME_DIR": str(self.runtime),
            "JUPYTER_CONFIG_DIR": str(self.home / ".jupyter"),
            "AGENSTRA_CONTROLLER_DATA_DIR": str(self.controller_data),
            "SOME_PROVIDER_API_KEY": ENV_SECRET,
        })
        self.server.data_dir = self.controller_data
        self.client = self.server.client()
        self.port = int(self.server.url.rsplit(":", 1)[1])

    def secret_files(self) -> list[Path]:
        """Every secret file on this machine an agent must never read."""
        found = [self.home / ".ssh" / "id_rsa", self.home / ".aws" / "credentials",
                 self.home / ".bash_history", *self.runtime.glob("jpserver-*.json"),
                 *self.runtime.glob("jupyter_cookie_secret"),
                 self.controller_data / "controller.key",
                 self.controller_data / "controller.sqlite",
                 *self.controller_data.glob("**/manager.sqlite"), Path("/etc/shadow")]
        for path in found:
            assert path.is_file(), f"{path} should exist on the host for this test to mean much"
        return found

    def manager_port(self) -> int:
        agents = httpx.get(f"{self.server.full_url}agenstra/api/clients/local",
                           headers={"Authorization": f"token {self.server.token}"}).json()
        return int(agents["endpoint"].rsplit(":", 1)[1].strip("/"))

    def close(self) -> None:
        self.client.close()
        stop_jupyter(self.server)
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture(scope="module")
def machine(sandbox_available):
    machine = RealMachine()
    yield machine
    machine.close()


@pytest.fixture
def abstract_socket():
    """A host UNIX socket in the abstract namespace (as X11, D-Bus and containerd have)."""
    name = f"agenstra-test-{MARK}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("\0" + name)
    server.listen(4)
    accepted: list[socket.socket] = []

    def accept() -> None:
        with pytest.raises(OSError):
            while True:
                accepted.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    yield name, accepted
    server.close()


@pytest.fixture
def tcp_server():
    """A host service on 127.0.0.1 that counts connections (the positive control)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []

    def accept() -> None:
        try:
            while True:
                connection, _ = server.accept()
                connection.sendall(b"allowed\n")
                accepted.append(connection)
        except OSError:
            pass

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1], accepted
    server.close()


ATTACK_HELPERS = r"""
leak() { echo "LEAK $*"; }
try_read() { if [ -n "$(cat -- "$1" 2>/dev/null | head -c 64)" ]; then leak read "$1"; fi; }
try_see() { if ls -d -- "$1" >/dev/null 2>&1; then leak sees "$1"; fi; }
try_tcp() {
  if command -v bash >/dev/null; then
    timeout 3 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null && leak tcp "$1:$2"
  else
    nc -w 2 "$1" "$2" </dev/null >/dev/null 2>&1 && leak tcp "$1:$2"
  fi
  true
}
try_write() { (echo pwned > "$1") 2>/dev/null && [ -s "$1" ] && leak wrote "$1"; true; }
"""


def attack_script(machine: RealMachine, extra: str = "") -> str:
    lines = [ATTACK_HELPERS]
    lines += [f"try_read '{path}'" for path in machine.secret_files()]
    lines += [f"try_see '{path}'" for path in (machine.runtime, "/run", "/var/run", "/var/tmp",
                                               "/root", "/etc/ssl/private", "/etc/shadow")]
    # The agent's own workspace lies under HOME, so the directories leading to it exist
    # inside (empty, read-only): none may show what the host has there.
    lines.append(f"ls -A '{machine.home}' '{machine.jupyter_data}' '{machine.controller_data}' "
                 "2>/dev/null | grep -E '^(.ssh|.aws|.bash_history|runtime|controller.(key|"
                 "sqlite)|jupyter.log|manager.sqlite)$' && leak lists HOME")
    for pid in (machine.server.process.pid, machine.server.manager_pid(), 1):
        lines.append(f"grep -qa AGENSTRA_API_KEY /proc/{pid}/environ 2>/dev/null && "
                     f"leak environ {pid}")
    lines.append(f"ls /proc | grep -qx {machine.server.manager_pid()} && leak sees manager pid")
    for host in ("127.0.0.1", "10.0.2.2", "localhost"):
        lines += [f"try_tcp {host} {machine.port}", f"try_tcp {host} {machine.manager_port()}"]
    lines += [f"try_write '{machine.home / f'pwned-{MARK}'}'", f"try_write '/usr/pwned-{MARK}'",
              f"try_write '{machine.controller_data / f'pwned-{MARK}'}'"]
    lines += [f"ln -sf '{machine.home / '.ssh' / 'id_rsa'}' link-{MARK}",
              f"try_read link-{MARK}", f"ln -sf / root-{MARK}",
              f"try_read root-{MARK}/etc/shadow"]
    lines.append(f"env | grep -E 'AGENSTRA_API_KEY|JUPYTER_TOKEN|{ENV_SECRET}' && leak env")
    # Writing a kernel setting back unchanged: harmless if it works, and it must not.
    lines.append("v=$(cat /proc/sys/vm/stat_interval); "
                 "(echo \"$v\" > /proc/sys/vm/stat_interval) 2>/dev/null && leak writes /proc/sys")
    lines.append("[ \"$(df -k /tmp | awk 'NR==2 {print $2}')\" -le 1048576 ] || leak big /tmp")
    lines.append(extra)
    lines.append("echo probes-ran")
    return "\n".join(lines)


def assert_no_leak(machine: RealMachine, answer: str) -> None:
    assert "probes-ran" in answer, answer
    leaks = [line for line in answer.splitlines() if line.startswith("LEAK")]
    assert not leaks, answer
    for secret in (SSH_KEY, AWS_KEY, ENV_SECRET, machine.server.token):
        assert secret not in answer
    for path in (machine.home / f"pwned-{MARK}", Path(f"/usr/pwned-{MARK}"),
                 machine.controller_data / f"pwned-{MARK}"):
        assert not path.exists()


def chat(machine: RealMachine, agent: str, message: str) -> str:
    try:
        return machine.client.agent(agent).chat(message, timeout=120)
    except TurnError as exc:
        raise AssertionError(f"the turn failed: {exc}") from None


@needs_bwrap
def test_shell_agent_without_network_reaches_nothing(machine, abstract_socket):
    name, accepted = abstract_socket
    machine.client.create_agent("iso-plain", provider="shell")
    probe = ("python3 -c \"import socket; s=socket.socket(socket.AF_UNIX); "
             f"s.connect('\\0{name}')\" 2>/dev/null && leak unix abstract; "
             "command -v python3 >/dev/null && echo python-ok")
    answer = chat(machine, "iso-plain", attack_script(machine, probe))
    assert "python-ok" in answer  # the UNIX socket probe really ran
    assert_no_leak(machine, answer)
    assert not accepted


@needs_bwrap
def test_egress_agent_reaches_only_its_listed_loopback_port(machine, tcp_server):
    port, accepted = tcp_server
    machine.client.create_agent("iso-net", provider="shell",
                                config={"network": "egress", "loopbackPorts": [port]})
    control = (f"timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}; head -1 <&3' ; "
               "for range in 192.168.1.1 172.17.0.1 10.1.2.3 169.254.169.254; do "
               "ip route get $range 2>&1 | grep -q prohibit || "
               "ip route get $range 2>&1 | grep -q 'ermission denied' || leak route $range; done;"
               " ip route del prohibit 10.0.0.0/8 2>/dev/null && leak changed routes;"
               " ip -brief address | grep -q tap0 && echo has-egress-interface")
    answer = chat(machine, "iso-net", attack_script(machine, control))
    assert "allowed" in answer and "has-egress-interface" in answer, answer  # controls
    assert len(accepted) == 1  # the listed port, once, and nothing else of the host
    assert_no_leak(machine, answer)


@needs_bwrap
def test_processes_do_not_outlive_their_turn(machine):
    machine.client.create_agent("iso-daemon", provider="shell")
    marker = f"{int(MARK[:4], 16) % 1000}.{os.getpid() % 1000}"
    answer = chat(machine, "iso-daemon",
                  f"setsid sleep {marker} </dev/null >/dev/null 2>&1 & "
                  f"nohup sleep {marker} >/dev/null 2>&1 & sleep 0.2; pgrep -c -x sleep")
    assert answer.startswith("2"), answer  # both were running inside the turn
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        left = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True)
        if left.returncode != 0:
            break
        time.sleep(0.2)
    assert left.returncode != 0, "a process of the agent survived its turn"


@needs_bwrap
def test_resource_limits_hold(machine):
    machine.client.create_agent("iso-limits", provider="shell")
    answer = chat(machine, "iso-limits",
                  "prlimit --data --fsize --cpu --core --nproc -o SOFT | tail -n +2 | tr -s ' ';"
                  " python3 -c 'bytearray(3 * 1024**3)' 2>&1 | tail -1")
    soft = answer.split("\n")[:5]
    assert soft[0].strip() == str(2 * 1024**3)  # memory (data): 2g by default
    assert soft[1].strip() == str(4 * 1024**3)  # file size: 4g
    assert soft[2].strip() == "7200" and soft[3].strip() == "0" and soft[4].strip() == "512"
    assert "MemoryError" in answer


@needs_bwrap
def test_other_agents_workspaces_are_invisible(machine):
    machine.client.create_agent("iso-a", provider="shell")
    machine.client.create_agent("iso-b", provider="shell")
    where = chat(machine, "iso-a", f"echo secret-a-{MARK} > mine.txt; pwd").split("\n")[0]
    answer = chat(machine, "iso-b", f"cat {where}/mine.txt; ls {Path(where).parent}; pwd")
    assert f"secret-a-{MARK}" not in answer
    assert (Path(where) / "mine.txt").read_text().strip() == f"secret-a-{MARK}"  # it exists


@needs_bwrap
async def test_real_claude_code_asked_to_escape_gets_nothing(start_manager, vendor):
    need_cli("claude")
    home = Path(f"/home/agenstra-cli-{MARK}")
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    (home / ".ssh" / "id_rsa").write_text(SSH_KEY)
    try:
        manager = start_manager(env={"HOME": str(home), "SOME_PROVIDER_API_KEY": ENV_SECRET,
                                     "PATH": f"{CLI_BIN}:{os.environ['PATH']}"})
        database = manager.data_dir / "manager.sqlite"
        command = (f"cat {home}/.ssh/id_rsa; head -c 300 {database} | od -c | head -3;"
                   f" (exec 3<>/dev/tcp/127.0.0.1/{manager.port}) 2>/dev/null && echo REACHED;"
                   " env; echo tool-ran")
        vendor.script(Reply(tool=ToolUse("Bash", {"command": command, "description": "look"})),
                      Reply(text="done"))
        agent = await manager.create_agent(name="escape", provider="cli", config={
            # The CLI's own checks stand aside: only our sandbox is under test.
            "preset": "claude", "loopbackPorts": [vendor.port],
            "permissionMode": "bypassPermissions",
            "env": {"ANTHROPIC_BASE_URL": vendor.url, "ANTHROPIC_API_KEY": "sk-iso",
                    "IS_SANDBOX": "1"}})
        client = await AgentsClient().connect(manager)
        await client.login(agent)
        answer = await client.chat("run it", correlationId="e", timeout=120)
        assert answer["response"]["result"] == "done"
        results = [str(p.get("result")) for p in answer["response"]["parts"]
                   if p["kind"] == ChatEventKind.TOOL_RESULT]
        assert any("tool-ran" in text for text in results), results  # the tool did run
        for text in results:
            for secret in (SSH_KEY, "SQLite format", "REACHED", ENV_SECRET, manager.api_key):
                assert secret not in text, text
        await client.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.docker
def test_docker_agent_with_egress_reaches_nothing_of_the_host(machine, docker_available):
    machine.client.create_agent("iso-docker", provider="shell", runtime="docker",
                                image=TEST_IMAGE, config={"network": "egress"})
    script = "\n".join([ATTACK_HELPERS, *(f"try_tcp 127.0.0.1 {p}" for p in
                                          (machine.port, machine.manager_port())),
                        *(f"try_read '{p}'" for p in machine.secret_files()),
                        "try_see /var/run/docker.sock", "try_see /run/docker.sock",
                        f"try_see '{os.environ.get('DOCKER_HOST', '').removeprefix('unix://')}'",
                        "id -u", "echo probes-ran"])
    answer = chat(machine, "iso-docker", script)
    assert "probes-ran" in answer and "LEAK" not in answer, answer
    assert answer.splitlines()[-3] != "0"  # not root inside
    machine.client.delete_agent("iso-docker")
    with pytest.raises(Exception, match="network"):
        machine.client.create_agent("iso-docker-host", provider="shell", runtime="docker",
                                    image=TEST_IMAGE, config={"network": "host"})


# -- fail closed -------------------------------------------------------------------------


async def test_without_bubblewrap_agents_refuse_to_run_and_say_why(start_manager, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    manager = start_manager(env={"PATH": str(empty)})  # bwrap is not on its PATH
    async with manager.http() as http:
        offer = (await http.get("/api/providers")).json()
        process = next(r for r in offer["runtimes"] if r["name"] == "process")
        assert process["sandbox"] == "missing" and process["available"] is False
        assert "apt-get install bubblewrap" in process["problem"]
        created = await http.post("/api/agents", json={"name": "sh", "provider": "shell"})
        assert created.status_code == 201
        agent = created.json()
        assert (await http.get(f"/api/agents/{agent['id']}")).json()["state"] == "error"
    client = await AgentsClient().connect(manager)
    await client.login(agent)
    answer = await client.chat("echo unsandboxed > proof")
    assert answer["response"]["type"] == "error"
    assert "apt-get install bubblewrap" in answer["response"]["result"]
    assert not list((manager.data_dir / "workspaces").glob("*/proof"))
    await client.close()


async def test_the_operator_can_opt_out_and_every_view_says_so(start_manager):
    manager = start_manager(env={"AGENSTRA_SANDBOX": "none"})
    async with manager.http() as http:
        offer = (await http.get("/api/providers")).json()
    process = next(r for r in offer["runtimes"] if r["name"] == "process")
    assert process["sandbox"] == "none" and process["available"] is True
    agent = await manager.create_agent(name="sh", provider="shell")
    client = await AgentsClient().connect(manager)
    await client.login(agent)
    answer = await client.chat("env | grep -c AGENSTRA_API_KEY")
    assert answer["response"]["result"].startswith("0")  # even unsandboxed: a clean env
    await client.close()


async def test_manager_variables_are_never_passed_to_agents(manager):
    async with manager.http() as http:
        for config in ({"preset": "claude", "passEnv": ["AGENSTRA_API_KEY"]},
                       {"preset": "claude", "passEnv": ["JUPYTER_TOKEN"]}):
            response = await http.post("/api/agents", json={"name": "x", "provider": "cli",
                                                            "config": config})
            assert response.status_code == 400
            assert "never passed on" in response.json()["message"]
        response = await http.post("/api/agents", json={
            "name": "y", "provider": "openai",
            "config": {"model": "m", "apiKeyEnv": "AGENSTRA_API_KEY"}})
        assert response.status_code == 400
