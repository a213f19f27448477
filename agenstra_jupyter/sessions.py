"""Reproducible agent sessions: run notebooks headlessly, record their agent turns, replay them.

Session file (JSON lines, UTF-8), version 1:

    {"type": "session", "version": 1, "created": "...Z", "notebook": "...", "agenstra": "0.1.0"}
    {"type": "turn", "index": 0, "agent": "scribe", "agentId": "...", "clientId": "local",
     "provider": "echo", "prompt": "...", "events": [{"kind": "assistantDelta",
     "payload": {...}}, ...], "response": {"type": "text", "result": "...", ...},
     "permissions": [{"title": "...", "kind": "edit", "outcome": "allowed", "by": "user",
     "optionKind": "allow_once"}, ...],
     "executionCount": 3, "startedAt": "...Z", "endedAt": "...Z", "durationMs": 12}

`permissions` are the decisions on the requests the turn asked, in order: a request's id
is new in every run, so a replay matches them by kind and title (see ReplayDecisions).

The header comes first, then one line per completed turn in the order the notebook made
them. Every change rewrites the file through a temporary file and an atomic rename, so a
crash leaves the previous complete file, never a torn one.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._version import __version__
from .protocol import response_format, utc_now
from .render import result_html, result_markdown
from .secrets import create_private_file

SESSION_VERSION = 1
RECORD_ENV = "AGENSTRA_RECORD"
# Set by `agenstra-jupyter run` for its kernel: how the run answers its agents' requests
# (allow | deny), and the session a replay answers them from first.
PERMISSIONS_ENV = "AGENSTRA_PERMISSIONS"
REPLAY_ENV = "AGENSTRA_REPLAY"
HEADLESS_POLICIES = ("allow", "deny")
Progress = Callable[[str], None]


# -- the session file ---------------------------------------------------------------------


def read_session(path: Path | str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The header and the turns of a session file; ValueError if it is not one."""
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} is empty")
    try:
        records = [json.loads(line) for line in lines]
    except ValueError as exc:
        raise ValueError(f"{path} is not a session file ({exc})") from None
    header = records[0]
    if header.get("type") != "session":
        raise ValueError(f"{path} is not a session file (no header)")
    if header.get("version") != SESSION_VERSION:
        raise ValueError(f"{path} has session format {header.get('version')}, "
                         f"this agenstra reads {SESSION_VERSION}")
    return header, [r for r in records[1:] if r.get("type") == "turn"]


class SessionWriter:
    """Appends turns to a session file, atomically (thread-safe)."""

    def __init__(self, path: Path | str, notebook: str = "") -> None:
        self.path = Path(path)
        self.header = {"type": "session", "version": SESSION_VERSION, "created": utc_now(),
                       "notebook": notebook, "agenstra": __version__}
        self.turns: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        if self.path.exists():  # the runner wrote the header; the kernel adds the turns
            try:
                self.header, self.turns = read_session(self.path)
            except ValueError:
                pass
        self._write()

    def add(self, turn: dict[str, Any]) -> None:
        with self._lock:
            self.turns.append({"type": "turn", "index": len(self.turns), **turn})
            self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for record in [self.header, *self.turns]:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)


_recorder: SessionWriter | None = None


def recorder() -> SessionWriter | None:
    """The session this process records into (AGENSTRA_RECORD), if any."""
    global _recorder
    path = os.environ.get(RECORD_ENV)
    if path and (_recorder is None or _recorder.path != Path(path)):
        _recorder = SessionWriter(path)
    return _recorder if path else None


def execution_count() -> int | None:
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        return None
    return getattr(shell, "execution_count", None) if shell is not None else None


# -- approvals in recorded and headless runs ------------------------------------------------


def option_for(request: dict[str, Any], decision: str, always: bool = False) -> str | None:
    """The optionId of `request` that carries out "allow" or "reject": the *_once option
    (the *_always one with `always`), else the other of the pair; None if it offers none."""
    once, forever = f"{decision}_once", f"{decision}_always"
    options = [o for o in request.get("options") or [] if isinstance(o, dict)]
    for kind in ((forever, once) if always else (once, forever)):
        for option in options:
            if option.get("kind") == kind and isinstance(option.get("optionId"), str):
                return option["optionId"]
    return None


def headless_policy() -> str | None:
    """"allow" or "deny" in a headless run (`run --permissions`), else None."""
    policy = os.environ.get(PERMISSIONS_ENV, "")
    return policy if policy in HEADLESS_POLICIES else None


def headless_choice(request: dict[str, Any]) -> str | None:
    """The option a headless run answers `request` with; None outside one."""
    policy = headless_policy()
    if policy is None:
        return None
    return option_for(request, "allow" if policy == "allow" else "reject")


def permission_decisions(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The decisions on a turn's asked requests, in order, from its events."""
    asked: dict[str, dict[str, Any]] = {}
    for event in events:
        payload = event.get("payload") or {}
        request_id = payload.get("requestId") if isinstance(payload, dict) else None
        if event.get("kind") == "permissionRequest" and request_id not in asked:
            kinds = {o.get("optionId"): o.get("kind") for o in payload.get("options") or []}
            asked[request_id] = {"title": payload.get("title"), "kind": payload.get("kind"),
                                 "outcome": None, "by": None, "_kinds": kinds}
        elif event.get("kind") == "permissionResolved" and request_id in asked:
            decision = asked[request_id]
            decision.update(outcome=payload.get("outcome"), by=payload.get("by"),
                            optionKind=decision["_kinds"].get(payload.get("optionId")))
    return [{k: v for k, v in d.items() if k != "_kinds"} for d in asked.values()]


class ReplayDecisions:
    """The recorded decisions of one replayed turn: each answers the first request of this
    run with the same kind and title, once."""

    def __init__(self, decisions: list[dict[str, Any]]) -> None:
        self._left = [d for d in decisions if isinstance(d, dict) and d.get("outcome")]

    def answer(self, request: dict[str, Any]) -> str | None:
        for decision in self._left:
            if (decision.get("kind"), decision.get("title")) == (request.get("kind"),
                                                                  request.get("title")):
                self._left.remove(decision)
                return self._option(request, decision)
        return None

    @staticmethod
    def _option(request: dict[str, Any], decision: dict[str, Any]) -> str | None:
        wanted = decision.get("optionKind")
        for option in request.get("options") or []:
            if isinstance(option, dict) and wanted and option.get("kind") == wanted:
                return option.get("optionId")
        # An "always" decision is not made again: the replay answers once.
        return option_for(request, "allow" if decision["outcome"] == "allowed" else "reject")


class _Replay:
    """Which recorded turn each replayed agent is at, as the replay provider counts."""

    def __init__(self, path: str) -> None:
        self.path = path
        _, self.turns = read_session(path)
        self.cursor: dict[str, int] = {}

    def next_turn(self, agent: str, prompt: str) -> dict[str, Any] | None:
        mine = [t for t in self.turns if t.get("agent") == agent]
        at = self.cursor.get(agent, 0)
        if at < len(mine) and mine[at].get("prompt") == prompt:
            self.cursor[agent] = at + 1
            return mine[at]
        return None  # a mismatch: the provider fails it, or answers it live


_replay: _Replay | None = None


def replay_decisions(agent: str, prompt: str) -> ReplayDecisions | None:
    """In a replay run (AGENSTRA_REPLAY), the recorded decisions of the turn this prompt
    replays; None outside a replay, or for a turn that is not in the recording."""
    global _replay
    path = os.environ.get(REPLAY_ENV)
    if not path:
        return None
    if _replay is None or _replay.path != path:
        try:
            _replay = _Replay(path)
        except (OSError, ValueError):
            return None
    turn = _replay.next_turn(agent, prompt)
    if turn is None:
        return None
    return ReplayDecisions(turn.get("permissions") or permission_decisions(turn.get("events")
                                                                           or []))


# -- a Jupyter server for headless runs ------------------------------------------------------


# What would point a run's own server at the user's state: their databases, keys, an
# external manager, a token that would win over the run's own.
SHARED_STATE_ENV = ("AGENSTRA_CONTROLLER_DB", "AGENSTRA_SECRET_KEY", "AGENSTRA_MANAGER_URL",
                    "AGENSTRA_MANAGER_API_KEY", "AGENSTRA_DB", "AGENSTRA_DATA_DIR",
                    "AGENSTRA_MANAGER_KEY_FILE", "AGENSTRA_WORKSPACE_ROOT",
                    "AGENSTRA_AGENT_STATE_ROOT", "JUPYTER_TOKEN")


@dataclass
class Server:
    url: str  # with base path, ending in "/"
    token: str
    process: subprocess.Popen[bytes]
    root: Path  # its data, runtime dir and log: removed after the run

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def start_server(data_dir: Path | None = None, env: dict[str, str] | None = None) -> Server:
    """A Jupyter server with the extension (and its local manager), for this run only.

    Isolated, as nbclient's fresh kernel is: its controller data, local manager and runtime
    dir live in a temporary directory of its own (`Server.root`; the controller's data in
    `data_dir` if given), so a run never touches the user's running JupyterLab, its agents
    or its manager. Its token goes by a 0600 file (JUPYTER_TOKEN_FILE), deleted once the
    server is up: never on the command line, which `ps` shows every user.
    """
    root = Path(tempfile.mkdtemp(prefix="agenstra-run-"))  # 0700
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token = secrets.token_hex(24)
    token_file = root / "token"
    create_private_file(token_file)
    token_file.write_text(token)  # no newline: jupyter_server reads the file as is
    server_env = {key: value for key, value in os.environ.items() if key not in SHARED_STATE_ENV}
    server_env.update(JUPYTER_RUNTIME_DIR=str(root / "runtime"),
                      AGENSTRA_CONTROLLER_DATA_DIR=str(data_dir or root / "agenstra"),
                      JUPYTER_TOKEN_FILE=str(token_file), **(env or {}))
    log = open(root / "jupyter.log", "wb")  # lives as long as the server
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root",
         f"--port={port}", "--ip=127.0.0.1", f"--ServerApp.root_dir={root}"],
        stdout=log, stderr=log, env=server_env, cwd=root, start_new_session=True,
    )
    server = Server(f"http://127.0.0.1:{port}/", token, process, root)
    try:
        if _wait_ready(server):
            return server
    finally:
        token_file.unlink(missing_ok=True)
    server.stop()
    raise RuntimeError(f"The Jupyter server did not start; see {root / 'jupyter.log'}")


def _wait_ready(server: Server, timeout: float = 90) -> bool:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.process.poll() is None:
        try:
            response = httpx.get(f"{server.url}agenstra/api/clients",
                                 headers={"Authorization": f"token {server.token}"}, timeout=30)
            if response.status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


# -- running notebooks ----------------------------------------------------------------------


class CellFailed(Exception):
    def __init__(self, cell: str, message: str) -> None:
        super().__init__(f"{cell} failed: {message}")
        self.cell = cell  # as the progress lines name it: "cell 3/10"
        self.message = message


@dataclass
class RunResult:
    notebook: Any
    output: Path | None
    warnings: list[str] = field(default_factory=list)


def inject_parameters(book: Any, parameters: dict[str, Any]) -> int | None:
    """Papermill's convention: a cell after the one tagged `parameters` overrides it.

    Returns the position of the injected cell.
    """
    import nbformat

    if not parameters:
        return None
    index = next((i for i, c in enumerate(book.cells)
                  if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if index is None:
        raise ValueError("Parameters given, but no cell is tagged 'parameters'")
    source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    book.cells.insert(index + 1, cell)
    return index + 1


def parse_value(text: str) -> Any:
    """`-p n 3` gives 3, `-p name abc` gives "abc": JSON if it parses, else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def run_notebook(
    path: Path | str,
    output: Path | str | None = None,
    parameters: dict[str, Any] | None = None,
    *,
    url: str | None = None,
    token: str | None = None,
    record: Path | str | None = None,
    replay: Path | str | None = None,
    replay_mode: str = "strict",
    cell_timeout: float = 600,
    progress: Progress | None = None,
    keep_data: bool = False,
    permissions: str = "deny",
) -> RunResult:
    """Execute a notebook headlessly against the controller at `url`, or, without one, a
    server of its own, isolated from the user's (removed afterwards unless `keep_data`).
    `permissions` (allow | deny) answers every request the run's turns ask."""
    import nbformat

    book = nbformat.read(path, as_version=4)
    injected = inject_parameters(book, parameters or {})
    say = progress or (lambda _: None)
    server = None
    if permissions not in HEADLESS_POLICIES:
        raise ValueError(f"permissions must be one of {', '.join(HEADLESS_POLICIES)}")
    env: dict[str, str] = {PERMISSIONS_ENV: permissions}
    if record:
        SessionWriter(Path(record).absolute(), notebook=str(path))  # header, no turns yet
        env[RECORD_ENV] = str(Path(record).absolute())
    if replay:
        _, turns = read_session(replay)  # fail early on a bad file
        env[REPLAY_ENV] = str(Path(replay).absolute())
        server = start_server(env={"AGENSTRA_DEFAULT_PROVIDER": ""})
        _prepare_replay(server, Path(replay).absolute(), turns, replay_mode, say)
    elif url is None:
        say("starting a Jupyter server of this run's own (--url attaches to a running one)")
        server = start_server()
    if server is not None:
        url, token = server.url, server.token
        env["JUPYTER_RUNTIME_DIR"] = str(server.root / "runtime")  # the kernel's files too
    env.update(AGENSTRA_URL=url or "", AGENSTRA_TOKEN=token or os.environ.get(
        "AGENSTRA_TOKEN", ""))
    try:
        _execute(book, Path(path), env, cell_timeout, say, injected)
    finally:
        if server is not None:
            _finish(server, keep_data, say)
        if output is not None:
            nbformat.write(book, output)
    return RunResult(book, Path(output) if output else None)


def _finish(server: Server, keep: bool, say: Progress) -> None:
    server.stop()
    if keep:
        say(f"the run's server data is kept in {server.root}")
    else:
        server.remove()


def _prepare_replay(server: Server, session: Path, turns: list[dict[str, Any]], mode: str,
                    say: Progress) -> None:
    """In the run's own manager: one `replay` agent per recorded agent, under its name."""
    import httpx

    agents: dict[str, dict[str, Any]] = {}
    for turn in turns:
        agents.setdefault(turn["agent"], turn)
    headers = {"Authorization": f"token {server.token}"}
    for name, first in agents.items():
        config: dict[str, Any] = {"session": str(session), "agent": name, "mode": mode}
        if mode == "lenient" and first.get("provider") in ("echo", "shell"):
            config["fallback"] = {"provider": first["provider"], "config": {}}
        response = httpx.post(f"{server.url}agenstra/api/clients/local/agents", headers=headers,
                              json={"name": name, "provider": "replay", "config": config},
                              timeout=60)
        if response.status_code != 201:
            raise RuntimeError(f"Cannot prepare the replay of {name}: {response.text}")
        say(f"replaying {sum(t['agent'] == name for t in turns)} turn(s) of agent {name}")


def _execute(book: Any, path: Path, env: dict[str, str], cell_timeout: float,
             say: Progress, injected: int | None) -> None:
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the kernel inherits them
    client = NotebookClient(book, kernel_name=book.metadata.get("kernelspec", {}).get(
        "name", "python3"), timeout=cell_timeout, store_widget_state=True,
        resources={"metadata": {"path": str(path.parent.absolute())}}, config=_kernel_config())
    label = _cell_labels(book, injected)
    current = {"cell": "", "start": time.monotonic()}  # the failing one, if the run fails

    def started(cell: Any, cell_index: int, **_: Any) -> None:
        if cell.cell_type == "code":
            current.update(cell=label(cell_index), start=time.monotonic())
            say(f"{current['cell']} …")

    def finished(cell: Any, cell_index: int, execute_reply: Any = None, **_: Any) -> None:
        reply = (execute_reply or {}).get("content", {})
        if cell.cell_type == "code" and reply.get("status", "ok") == "ok":
            say(f"{current['cell']} done in {time.monotonic() - current['start']:.1f}s")

    client.on_cell_start = started
    client.on_cell_executed = finished
    # The kernel process's own stderr is not the cells' (those come over IOPub): libzmq and
    # ipykernel noise at its shutdown stays out of the progress lines, and is shown only
    # when the kernel dies or never starts.
    kernel_log = tempfile.TemporaryFile()
    try:
        client.execute(stderr=kernel_log)
    except CellTimeoutError as exc:
        raise CellFailed(current["cell"], f"timed out after {cell_timeout:g}s") from exc
    except CellExecutionError as exc:
        raise CellFailed(current["cell"], f"{exc.ename}: {exc.evalue}") from exc
    except RuntimeError as exc:  # nbclient's DeadKernelError, or a kernel that never started
        said = _tail(kernel_log)
        raise CellFailed(current["cell"] or "the kernel's start",
                         f"{exc}" + (f"; the kernel said:\n{said}" if said else "")) from exc
    finally:
        kernel_log.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _tail(log: Any, limit: int = 4000) -> str:
    """The end of a kernel's stderr, for the error that says it died."""
    log.seek(0, os.SEEK_END)
    log.seek(max(0, log.tell() - limit))
    return log.read().decode(errors="replace").strip()


def _cell_labels(book: Any, injected: int | None) -> Callable[[int], str]:
    """One counter for progress and failures: the position among the notebook's own code
    cells ("cell 3/10"); the injected parameters are "parameters"."""
    own = [i for i, c in enumerate(book.cells) if c.cell_type == "code" and i != injected]

    def label(index: int) -> str:
        return "parameters" if index == injected else f"cell {own.index(index) + 1}/{len(own)}"

    return label


def _kernel_config() -> Any:
    """The run's kernels talk over encrypted channels (CurveZMQ) when pyzmq can: else
    ipykernel warns at each start that they are plain TCP, amid the progress lines."""
    import zmq
    from traitlets.config import Config

    policy = "auto" if zmq.has("curve") else "disabled"
    return Config({"KernelManager": {"transport_encryption": policy}})


# -- export -----------------------------------------------------------------------------------


def error_line(message: str) -> str:
    """How %agent reports a failed turn (a cancelled one too): on stderr, one line."""
    return f"agenstra: {message}\n"


def _answer_output(response: dict[str, Any]) -> Any:
    """The output %%agent gives for `response`, so that a replay of the export matches it."""
    import nbformat

    if response.get("type") != "text":
        return nbformat.v4.new_output("stream", name="stderr",
                                      text=error_line(response.get("result", "")))
    # What magics.AgentAnswer shows, by the answer's format, rendered later by whatever
    # opens the notebook: no image in it may load itself.
    text, fmt = response.get("result", ""), response_format(response)
    return nbformat.v4.new_output(
        "execute_result", data={"text/plain": repr(text), "text/html": result_html(text, fmt),
                                "text/markdown": result_markdown(text, fmt)})


def export_conversation(client: Any, agent: str, notebook: Path | str,
                        session: Path | str) -> Any:
    """An agent's stored conversation as a runnable notebook (one %%agent cell per user turn,
    outputs filled from the history) and its session file, ready for --replay."""
    import nbformat

    handle = client.agent(agent)
    provider = next((a["provider"] for a in client.agents() if a["id"] == handle.id), "")
    answers = {m["correlationId"]: m for m in handle.messages if m["from"] == "agent"}
    book = nbformat.v4.new_notebook()
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                   "language": "python"}
    book.cells.append(nbformat.v4.new_markdown_cell(
        f"# Conversation with `{agent}`\n\nExported by agenstra-jupyter; replay it with "
        f"`agenstra-jupyter run {Path(notebook).name} --replay {Path(session).name}`."))
    book.cells.append(nbformat.v4.new_code_cell(f"%load_ext agenstra_jupyter\n%agent use {agent}"))
    writer = SessionWriter(session, notebook=str(notebook))
    writer.turns = []
    for message in handle.messages:
        if message["from"] != "user":
            continue
        answer = answers.get(message["correlationId"])
        response = (answer or {}).get("response") or {"type": "error", "result": "no answer"}
        cell = nbformat.v4.new_code_cell(f"%%agent\n{message['text']}")
        cell.outputs = [_answer_output(response)]
        book.cells.append(cell)
        writer.add({"agent": agent, "agentId": handle.id, "clientId": handle.client_id,
                    "provider": provider, "prompt": message["text"], "events": [],
                    "response": response, "startedAt": message["timestamp"],
                    "endedAt": (answer or message)["timestamp"], "durationMs": None})
    nbformat.write(book, notebook)
    return book
