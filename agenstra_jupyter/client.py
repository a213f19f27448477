"""Python client of the controller: for notebooks, widgets, magics and the session runner.

    from agenstra_jupyter.client import connect
    client = connect()                   # inside a kernel: finds its Jupyter server
    agent = client.agent("assistant")
    agent.chat("ls -la")                 # -> the answer's text (or `await agent.achat(...)`)

The client keeps its own event loop in a background thread, so its blocking helpers work
in a kernel whose loop is busy running the cell, and its `a*` coroutines work with
top-level `await`. It reconnects with backoff, logs each agent in again with `afterSeq` =
the last `seq` it holds, and drops anything it already has: no gap, no duplicate. A chat
interrupted (Ctrl-C, its timeout) cancels its turn; once the server is gone, or refuses the
client's token, chats fail at once with an AgenstraError that says so.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import inspect
import logging
import os
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import socketio

from .protocol import (
    CLIENTS_NAMESPACE,
    CONTROLLER_SOCKETIO_PATH,
    MAX_FRAME_BYTES,
    UNAUTHORIZED_MESSAGE,
    AgenstraError,
    ChatEventKind,
    ControllerEvent,
    ErrorCode,
    ManagerEvent,
    utc_now,
)
from .sessions import (
    ReplayDecisions,
    execution_count,
    headless_choice,
    option_for,
    permission_decisions,
    recorder,
    replay_decisions,
)

T = TypeVar("T")
Listener = Callable[[str, dict[str, Any]], None]  # (event name, payload)
# on_permission: (request) -> optionId, or None to leave it to someone else; may be async.
PermissionCallback = Callable[[dict[str, Any]], Any]
MAX_SETTLED = 512  # settled request ids remembered, so a late re-send is not shown again
DEFAULT_TIMEOUT = 600.0
CLEANUP_WAIT = 10.0  # seconds an interrupted call may take to tidy up (cancel its turn)
RECONNECT_WAIT = 30.0  # seconds a call waits for a reconnection that has not failed yet
RESPOND_WAIT = 30.0  # seconds an answer is sent again while the manager is unreachable
log = logging.getLogger(__name__)


class TurnError(AgenstraError):
    """The agent answered a turn with an error (`response.type == 'error'`)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INTERNAL, message)


@dataclass(frozen=True)
class ServerInfo:
    url: str  # http://host:port (no base path)
    base_url: str  # "/" or "/prefix/"
    token: str


def discover_server() -> ServerInfo:
    """The Jupyter server to talk to: AGENSTRA_URL/AGENSTRA_TOKEN, else the server running
    this kernel (found among the running servers by process ancestry), else the only one."""
    if url := os.environ.get("AGENSTRA_URL"):
        return _split(url, os.environ.get("AGENSTRA_TOKEN", ""))
    from jupyter_server.serverapp import list_running_servers

    servers = list(list_running_servers())
    ancestors = _ancestor_pids()
    mine = [s for s in servers if s.get("pid") in ancestors] or servers[-1:]
    if not mine:
        raise AgenstraError(
            ErrorCode.REMOTE_UNAVAILABLE,
            "No Jupyter server found: start one with the agenstra extension, or set "
            "AGENSTRA_URL (and AGENSTRA_TOKEN)",
        )
    server = mine[0]
    # In a JupyterHub single-user server the kernel has the server's own Hub token.
    token = os.environ.get("AGENSTRA_TOKEN") or server.get("token") or \
        os.environ.get("JUPYTERHUB_API_TOKEN", "")
    return _split(server["url"], token)


def _split(url: str, token: str) -> ServerInfo:
    parsed = httpx.URL(url)
    base = parsed.path if parsed.path.endswith("/") else parsed.path + "/"
    origin = f"{parsed.scheme}://{parsed.host}" + (f":{parsed.port}" if parsed.port else "")
    return ServerInfo(origin, base, parsed.params.get("token") or token)


def _auth_header(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"} if token else {}


def _ancestor_pids() -> set[int]:
    """This process's parent, grand-parent, ...: a kernel is a child of its Jupyter server."""
    pids, pid = set(), os.getppid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


class _LoopThread:
    """One event loop in a daemon thread, shared by every client of this process."""

    _instance: _LoopThread | None = None
    _guard = threading.Lock()

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="agenstra-client", daemon=True).start()

    @classmethod
    def get(cls) -> _LoopThread:
        with cls._guard:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None,
            pump: Callable[[], None] | None = None) -> T:
        """Run on the client loop and block for the result (from any other thread).

        If the caller is interrupted (Ctrl-C in a kernel) or gives up, the coroutine is
        cancelled, not left running, and may tidy up (a chat cancels its turn) first.
        `pump`, if given, is called in the caller's thread while it waits (to prompt there).
        """
        if threading.current_thread().name == "agenstra-client":
            coroutine.close()
            raise RuntimeError("A blocking agenstra call on the client's own thread would "
                               "never return: return the option from the callback instead")
        finished = threading.Event()
        future = asyncio.run_coroutine_threadsafe(_then_set(coroutine, finished), self.loop)
        try:
            return _wait(future, timeout, pump)
        except BaseException:
            if future.cancel():  # still running: the interruption is the caller's
                finished.wait(CLEANUP_WAIT)
            raise

    async def run_async(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Await the coroutine, run on the client loop, from another event loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))


def _wait(future: concurrent.futures.Future[T], timeout: float | None,
          pump: Callable[[], None] | None) -> T:
    if pump is None:
        return future.result(timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            return future.result(0.1)
        except concurrent.futures.TimeoutError:
            if deadline is not None and time.monotonic() > deadline:
                raise
        pump()


async def _then_set(coroutine: Coroutine[Any, Any, T], finished: threading.Event) -> T:
    try:
        return await coroutine
    finally:
        finished.set()


@dataclass
class Agent:
    """One agent as seen by this client: its transcript and its conversation."""

    client: AgenstraClient
    client_id: str
    id: str
    name: str
    provider: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)
    _listeners: list[Listener] = field(default_factory=list)
    _waiting: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    _turn_events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # Approvals: requests waiting for an answer (by requestId, in arrival order), those
    # settled lately (a re-send after a login must not bring one back), the callbacks, and
    # for this client's own turns where their requests go (a prompt in the caller's thread,
    # the decisions of a replayed recording).
    _pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    _settled: dict[str, None] = field(default_factory=dict)
    _permission_callbacks: list[PermissionCallback] = field(default_factory=list)
    _inboxes: dict[str, queue.SimpleQueue[dict[str, Any]]] = field(default_factory=dict)
    _replayed: dict[str, ReplayDecisions] = field(default_factory=dict)
    _answering: set[asyncio.Future[None]] = field(default_factory=set)

    @property
    def last_seq(self) -> int:
        return self.messages[-1]["seq"] if self.messages else 0

    # -- conversation --------------------------------------------------------------------

    def chat(self, message: str, timeout: float | None = DEFAULT_TIMEOUT) -> str:
        """Send `message`; block until the answer and return its text (TurnError if failed)."""
        return self.ask(message, timeout).get("result", "")

    async def achat(self, message: str, timeout: float | None = DEFAULT_TIMEOUT) -> str:
        return (await self.client._loop.run_async(self._chat(message, timeout))).get(
            "result", "")

    def ask(self, message: str, timeout: float | None = DEFAULT_TIMEOUT,
            on_permission: PermissionCallback | None = None) -> dict[str, Any]:
        """As `chat`, but the whole answer: `{type, result, format?, parts?, ...}` (its
        `format` says how to show the text: command output is `text`, not markdown).

        `on_permission(request)`, if given, is called in the calling thread (where it may
        prompt, as %agent does with `input()`) for each request of this turn that no
        `on_permission` callback of the agent answered; it returns an optionId or None."""
        if on_permission is None:
            return self.client._loop.run(self._chat(message, timeout))
        inbox: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        return self.client._loop.run(self._chat(message, timeout, inbox),
                                     pump=lambda: self._serve(inbox, on_permission))

    def send(self, message: str,
             on_error: Callable[[AgenstraError], None] | None = None) -> str:
        """Send without waiting for the answer; return the correlation id. If it cannot be
        sent, `on_error(error)` is called (on the client thread), else the error is logged."""
        correlation_id = str(uuid.uuid4())
        future = asyncio.run_coroutine_threadsafe(self._send(message, correlation_id),
                                                  self.client._loop.loop)
        future.add_done_callback(lambda done: _report(done, on_error))
        return correlation_id

    def cancel(self, correlation_id: str | None = None) -> None:
        payload = {"correlationId": correlation_id} if correlation_id else {}
        self.client._loop.run(self.client._forward(ManagerEvent.CANCEL, self, payload), 30)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(event, payload)` for each of this agent's events (any thread)."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    # -- approvals (DESIGN.md "Approvals") -----------------------------------------------

    def pending_permissions(self) -> list[dict[str, Any]]:
        """The agent's requests waiting for an answer, oldest first: each the
        `permissionRequest` payload (`requestId, title, kind, paths?, diff?, options,
        expiresAt`) plus the `correlationId` of its turn. Requests asked before this client
        logged in are there too (the manager sends them again after the history)."""
        # list() copies at once: the client's thread may change the dict meanwhile.
        return [dict(request) for request in list(self._pending.values())]

    def on_permission(self, callback: PermissionCallback) -> Callable[[], None]:
        """Call `callback(request)` for each pending request of this agent, new ones as
        they come and those already pending now: it returns the optionId to answer with
        (see `option_for`), or None to leave the request to someone else. A plain function
        runs in a worker thread (`asyncio.to_thread`), so it may block: `input()`, or this
        client's blocking helpers (`respond`, `chat`, ...); a coroutine function is awaited
        on the client's own loop and must not block it. Returns the unsubscriber."""
        self._permission_callbacks.append(callback)
        for request in self.pending_permissions():
            self.client._loop.loop.call_soon_threadsafe(self._dispatch_to, [callback], request)
        return lambda: (self._permission_callbacks.remove(callback)
                        if callback in self._permission_callbacks else None)

    def respond(self, request_id: str, option_id: str) -> None:
        """Answer a pending request with one of its options. AgenstraError UNKNOWN_REQUEST
        if it is settled already (answered elsewhere, expired, its turn cancelled)."""
        self.client._loop.run(self._respond(request_id, option_id), 60)

    async def arespond(self, request_id: str, option_id: str) -> None:
        await self.client._loop.run_async(self._respond(request_id, option_id))

    def allow(self, request_id: str, always: bool = False) -> None:
        """Allow a pending request (once, or for this kind of tool from now on)."""
        self.respond(request_id, self._option(request_id, "allow", always))

    def reject(self, request_id: str, always: bool = False) -> None:
        self.respond(request_id, self._option(request_id, "reject", always))

    def _option(self, request_id: str, decision: str, always: bool) -> str:
        request = self._pending.get(request_id)
        if request is None:
            raise AgenstraError(ErrorCode.UNKNOWN_REQUEST, "No such pending request")
        option = option_for(request, decision, always)
        if option is None:
            raise AgenstraError(ErrorCode.INVALID_PAYLOAD,
                                f"The request offers no option to {decision}")
        return option

    async def _respond(self, request_id: str, option_id: str) -> None:
        """Answer once; while the controller says its manager is away (a brief link drop),
        answer again with backoff for up to RESPOND_WAIT (as _send does): a lost answer
        would let the request expire as rejected."""
        payload = {"requestId": request_id, "optionId": option_id}
        deadline = time.monotonic() + RESPOND_WAIT
        attempt = 0
        while True:
            try:
                await self.client._forward(ManagerEvent.PERMISSION_RESPONSE, self, payload)
                return
            except AgenstraError as exc:
                delay = min(5.0, 0.25 * 2**attempt)
                if (exc.code != ErrorCode.REMOTE_UNAVAILABLE or not self.client.connected
                        or request_id in self._settled or time.monotonic() + delay > deadline):
                    raise
            await asyncio.sleep(delay)
            attempt += 1

    def _serve(self, inbox: queue.SimpleQueue[dict[str, Any]],
               answer: PermissionCallback) -> None:
        """In the caller's thread, while its turn runs: its requests nobody answered yet."""
        while True:
            try:
                request = inbox.get_nowait()
            except queue.Empty:
                return
            if request["requestId"] not in self._pending:
                continue  # answered meanwhile (another frontend, expiry)
            option = answer(request)
            if option is None:
                continue
            try:
                self.respond(request["requestId"], option)
            except AgenstraError as exc:
                if exc.code == ErrorCode.UNKNOWN_REQUEST:
                    print("agenstra: this request was settled elsewhere first", file=sys.stderr)
                elif exc.code == ErrorCode.REMOTE_UNAVAILABLE:  # the turn goes on regardless
                    print(f"agenstra: the answer could not be sent ({exc}); the request "
                          "stays pending until it expires", file=sys.stderr)
                else:
                    raise
            except TimeoutError:
                print("agenstra: the answer could not be sent in time; the request stays "
                      "pending until it expires", file=sys.stderr)

    def _track_permission(self, event: dict[str, Any]) -> None:
        """Keep the pending list from the events: a request once (the manager sends pending
        ones again after each login), gone when resolved."""
        kind, payload = event.get("kind"), event.get("payload")
        if not isinstance(payload, dict) or not isinstance(payload.get("requestId"), str):
            return
        request_id = payload["requestId"]
        if kind == ChatEventKind.PERMISSION_RESOLVED:
            self._settle(request_id)
        elif (kind == ChatEventKind.PERMISSION_REQUEST and request_id not in self._pending
              and request_id not in self._settled):
            request = {**payload, "correlationId": event.get("correlationId")}
            self._pending[request_id] = request
            if self._permission_callbacks or request["correlationId"] in self._waiting:
                self._dispatch_to(list(self._permission_callbacks), request)

    def _settle(self, request_id: str) -> None:
        self._pending.pop(request_id, None)
        self._settled[request_id] = None
        while len(self._settled) > MAX_SETTLED:
            self._settled.pop(next(iter(self._settled)))

    def _settle_turn(self, message: dict[str, Any]) -> None:
        """A turn's answer settles all its requests (and its stored parts name them)."""
        response = message.get("response") or {}
        for part in response.get("parts") or []:
            if isinstance(part, dict) and part.get("kind") == "permission":
                self._settle(str(part.get("requestId")))
        turn = message.get("correlationId")
        for request_id in [r for r, q in self._pending.items() if q["correlationId"] == turn]:
            self._settle(request_id)

    def _dispatch_to(self, callbacks: list[PermissionCallback], request: dict[str, Any]) -> None:
        task = asyncio.ensure_future(self._dispatch(callbacks, request))
        self._answering.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._answering.discard)

    async def _dispatch(self, callbacks: list[PermissionCallback],
                        request: dict[str, Any]) -> None:
        """Who answers: the first callback with an option, else for this client's own turns
        a replayed recording's decision or the headless policy, else the turn's prompt."""
        option = None
        for callback in callbacks:
            option = await _call_back(callback, request)
            if option is not None:
                break
        turn = request.get("correlationId", "")
        if option is None and turn in self._waiting:
            replayed = self._replayed.get(turn)
            option = (replayed.answer(request) if replayed is not None else None) or \
                headless_choice(request)
        if option is None:
            if (inbox := self._inboxes.get(turn)) is not None:
                inbox.put(request)
            return
        if request["requestId"] not in self._pending:
            return  # settled while the callback thought
        try:
            await self._respond(request["requestId"], option)  # sent again while unreachable
        except AgenstraError as exc:
            level = logging.INFO if exc.code == ErrorCode.UNKNOWN_REQUEST else logging.WARNING
            log.log(level, "agenstra: answering request %s: %s", request["requestId"], exc)

    async def _chat(self, message: str, timeout: float | None,
                    inbox: queue.SimpleQueue[dict[str, Any]] | None = None) -> dict[str, Any]:
        correlation_id = str(uuid.uuid4())
        answer = asyncio.get_running_loop().create_future()
        self._waiting[correlation_id] = answer
        self._turn_events[correlation_id] = events = []
        if inbox is not None:
            self._inboxes[correlation_id] = inbox
        if (decisions := replay_decisions(self.name, message)) is not None:
            self._replayed[correlation_id] = decisions
        started, clock = utc_now(), time.monotonic()
        try:
            await self._send(message, correlation_id)
            response = (await self._answer(answer, timeout))["response"]
        except (asyncio.CancelledError, TimeoutError):
            await self._cancel_turn(correlation_id)  # an abandoned turn must not run on
            raise
        finally:
            for held in (self._waiting, self._turn_events, self._inboxes, self._replayed):
                held.pop(correlation_id, None)
        if (session := recorder()) is not None:
            session.add({"agent": self.name, "agentId": self.id, "clientId": self.client_id,
                         "provider": self.provider, "prompt": message, "events": events,
                         "permissions": permission_decisions(events),
                         "response": response, "executionCount": execution_count(),
                         "startedAt": started, "endedAt": utc_now(),
                         "durationMs": round((time.monotonic() - clock) * 1000)})
        if response.get("replayed") is False:
            print("agenstra: this turn is not in the recording; it was answered live",
                  file=sys.stderr, flush=True)
        if response.get("type") == "error":
            raise TurnError(response.get("result", "The agent failed"))
        return response

    async def _answer(self, answer: asyncio.Future[dict[str, Any]],
                      timeout: float | None) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(answer, timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"No answer from {self.name} within {timeout:g} s: "
                               "the turn was cancelled") from None

    async def _cancel_turn(self, correlation_id: str) -> None:
        """Best effort and bounded: the turn may be over, or the server gone."""
        try:
            await asyncio.wait_for(self.client._forward(
                ManagerEvent.CANCEL, self, {"correlationId": correlation_id}), CLEANUP_WAIT)
        except (AgenstraError, asyncio.TimeoutError) as exc:
            log.info("agenstra: could not cancel turn %s: %s", correlation_id, exc)

    async def _send(self, message: str, correlation_id: str) -> None:
        """Send once; while the manager is unreachable, send again (same id: stored once)."""
        payload = {"message": message, "correlationId": correlation_id}
        for attempt in range(60):
            try:
                await self.client._forward(ManagerEvent.CHAT, self, payload)
                return
            except AgenstraError as exc:
                # Resend only what the controller refused for its manager being away: when
                # the controller itself is gone, the user hears it now, not in minutes.
                if (exc.code != ErrorCode.REMOTE_UNAVAILABLE or not self.client.connected
                        or attempt == 59):
                    raise
                await asyncio.sleep(min(5.0, 0.25 * 2**attempt))

    def _fail_turns(self, error: AgenstraError) -> None:
        """Answers that cannot come any more (the server is gone): fail their chats."""
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(_fresh(error))

    # -- events from the controller (client loop) ----------------------------------------

    def _receive(self, event: str, payload: dict[str, Any]) -> None:
        if event == ManagerEvent.CHAT_EVENT:
            events = self._turn_events.get(payload.get("correlationId", ""))
            if events is not None and not _sent_again(events, payload):
                events.append({"kind": payload.get("kind"), "payload": payload.get("payload")})
            self._track_permission(payload)
        if event == ManagerEvent.CHAT_MESSAGE:
            # seq grows strictly per agent, so the last one held is all a dedupe needs.
            if not isinstance(payload.get("seq"), int) or payload["seq"] <= self.last_seq:
                return  # already held: a replay after a reconnect
            self.messages.append(payload)
            if payload.get("from") == "agent":
                self._settle_turn(payload)
                waiter = self._waiting.get(payload.get("correlationId", ""))
                if waiter is not None and not waiter.done():
                    waiter.set_result(payload)
        for listener in list(self._listeners):
            try:
                listener(event, payload)
            except Exception:  # a broken listener must not stop the others
                log.exception("agent listener failed")


def _sent_again(events: list[dict[str, Any]], event: dict[str, Any]) -> bool:
    """Whether `event` is a pending request the manager sent again (it does after each
    login): recorded once, or a replay would ask the same request twice."""
    payload = event.get("payload")
    if event.get("kind") != ChatEventKind.PERMISSION_REQUEST or not isinstance(payload, dict):
        return False
    request_id = payload.get("requestId")
    return any(e["kind"] == ChatEventKind.PERMISSION_REQUEST
               and isinstance(e["payload"], dict) and e["payload"].get("requestId") == request_id
               for e in events)


async def _call_back(callback: PermissionCallback, request: dict[str, Any]) -> str | None:
    """A callback's option; a failing one is logged and counts as no answer. A plain
    function runs in a worker thread: one that blocks (input(), the client's blocking API)
    must not freeze the client's loop, which its own answer needs."""
    try:
        if inspect.iscoroutinefunction(callback):
            option = callback(dict(request))
        else:
            option = await asyncio.to_thread(callback, dict(request))
        if inspect.isawaitable(option):
            option = await option
    except Exception:
        log.exception("agenstra: on_permission callback failed")
        return None
    return option if isinstance(option, str) and option else None


def _report(done: Any, on_error: Callable[[AgenstraError], None] | None) -> None:
    """The outcome of a send nobody awaits: to `on_error`, or to the log."""
    error = None if done.cancelled() else done.exception()
    if error is None:
        return
    if on_error is not None and isinstance(error, AgenstraError):
        on_error(error)
    else:
        log.warning("agenstra: a message was not sent: %s", error)


class AgenstraClient:
    """A connection to the controller of one Jupyter server."""

    def __init__(self, server: ServerInfo | None = None, client_id: str = "local") -> None:
        self.server = server or discover_server()
        self.client_id = client_id
        self.state = "disconnected"  # connected | reconnecting | disconnected
        self._loop = _LoopThread.get()
        self._agents: dict[tuple[str, str], Agent] = {}
        self._state_listeners: list[Callable[[str], None]] = []
        self._sio: socketio.AsyncClient | None = None
        self._restored: asyncio.Event | None = None  # linked, and the session restored
        self._failed: asyncio.Event | None = None  # the last (re)connection attempt failed
        self._failure: AgenstraError | None = None  # ... and why
        self._restore_error: AgenstraError | None = None
        self._closed = False
        self._redial_task: asyncio.Future[None] | None = None
        self._context = client_id  # the controller's current client for this socket
        self._loop.run(self._connect(), 120)  # longer than the dial and restore waits

    @property
    def connected(self) -> bool:
        """Linked to the controller, with the session restored."""
        return self._restored is not None and self._restored.is_set()

    @property
    def closed(self) -> bool:
        """Closed, or refused by its server for good: connect() then makes a new client."""
        return self._closed

    @property
    def _where(self) -> str:
        return f"{self.server.url}{self.server.base_url}"

    # -- connection ----------------------------------------------------------------------

    async def _connect(self) -> None:
        self._sio = self._socket()
        self._restored, self._failed = asyncio.Event(), asyncio.Event()
        try:
            await self._dial_and_restore()
        except BaseException:  # refused, timed out or cancelled: no socket left redialling
            await self._sio.shutdown()
            raise

    async def _dial_and_restore(self) -> None:
        try:
            await self._dial()
        except socketio.exceptions.ConnectionError as exc:
            raise _fresh(self._failure) or AgenstraError(
                ErrorCode.REMOTE_UNAVAILABLE,
                f"Cannot connect to the controller at {self._where}: {exc}") from None
        await asyncio.wait_for(self._restored.wait(), 60)
        if (error := self._restore_error) is not None:  # e.g. no such manager: of no use
            raise AgenstraError(error.code, f"Cannot use manager {self.client_id!r} of "
                                            f"{self._where}: {error.message}")

    def _socket(self) -> socketio.AsyncClient:
        # handle_sigint=False: an interrupted cell must not disconnect the client.
        sio = socketio.AsyncClient(reconnection=True, reconnection_attempts=0, handle_sigint=False,
                                   reconnection_delay=0.5, reconnection_delay_max=5,
                                   randomization_factor=0.5,
                                   websocket_extra_options={"max_msg_size": MAX_FRAME_BYTES})
        sio.on("connect", self._on_connect, namespace=CLIENTS_NAMESPACE)
        sio.on("connect_error", self._on_connect_error, namespace=CLIENTS_NAMESPACE)
        sio.on("disconnect", self._on_disconnect, namespace=CLIENTS_NAMESPACE)
        sio.on(ControllerEvent.FORWARDED_EVENT, self._on_forwarded, namespace=CLIENTS_NAMESPACE)
        for event in (ControllerEvent.REMOTE_DISCONNECTED, ControllerEvent.REMOTE_RECONNECTING):
            sio.on(event, lambda *_: self._set_state("reconnecting"), namespace=CLIENTS_NAMESPACE)
        sio.on(ControllerEvent.REMOTE_RECONNECTED, lambda *_: self._set_state("connected"),
               namespace=CLIENTS_NAMESPACE)
        return sio

    async def _dial(self) -> None:
        assert self._sio is not None
        path = (self.server.base_url + CONTROLLER_SOCKETIO_PATH).strip("/")
        # The header too: a JupyterHub server reads a URL token only from browsers.
        await self._sio.connect(f"{self.server.url}?token={self.server.token}",
                                headers=_auth_header(self.server.token),
                                socketio_path=path, namespaces=[CLIENTS_NAMESPACE],
                                transports=["websocket"], wait_timeout=30)

    async def _redial(self) -> None:
        """Reconnect with backoff until it works, or the client is closed (or refused)."""
        delay = 0.5
        while not self._closed:
            await asyncio.sleep(delay)
            try:
                await self._dial()  # a failure reaches _on_connect_error first
                return
            except (socketio.exceptions.ConnectionError, ValueError):
                delay = min(delay * 2, 5.0)

    async def _on_connect(self) -> None:
        self._failure = None
        if self._failed is not None:
            self._failed.clear()
        # Runs inside the socket's reader: the restore (which awaits replies) runs beside it.
        self._restore_task = asyncio.ensure_future(self._restore())

    async def _on_connect_error(self, data: Any = None) -> None:
        """A (re)connection attempt failed: the server is gone, or refuses our token."""
        refused = isinstance(data, dict)  # by the controller; else the handshake failed
        reason = data.get("message") if refused else data
        if reason == UNAUTHORIZED_MESSAGE or (not refused and await self._token_refused()):
            self._closed = True  # a stale token never works again: stop knocking with it
            if self._sio is not None:
                self._shutdown_task = asyncio.ensure_future(self._sio.shutdown())
            self._fail(AgenstraError(
                ErrorCode.UNAUTHORIZED,
                f"The Jupyter server at {self._where} refuses this client's token (a restarted "
                "server has a new one). Connect again: connect() in a kernel of that server, "
                "or connect(url, token=...) with its current token (or set AGENSTRA_TOKEN), "
                "then get the agent again."))
            self._set_state("disconnected")
        elif not refused:
            self._fail(AgenstraError(
                ErrorCode.REMOTE_UNAVAILABLE,
                f"The Jupyter server at {self._where} is not reachable ({reason}): is it "
                "still running? This client reconnects when it is back."))

    async def _token_refused(self) -> bool:
        """Whether the server is up but refuses our token (Jupyter answers the socket's
        handshake with a bare 403 then, as it does when the server is gone: ask its API)."""
        try:
            async with httpx.AsyncClient(timeout=10) as http:
                response = await http.get(f"{self._where}api/status", headers={
                    "Authorization": f"token {self.server.token}"})
        except httpx.HTTPError:
            return False
        return response.status_code in (401, 403)

    def _fail(self, error: AgenstraError) -> None:
        """The link is down for a known reason: calls now, and answers awaited, fail with it."""
        self._failure = error
        if self._failed is not None:
            self._failed.set()
        for agent in list(self._agents.values()):
            agent._fail_turns(error)

    async def _wait_restored(self) -> None:
        """Wait out a reconnection in progress, unless it is known to fail."""
        assert self._restored is not None and self._failed is not None
        if not (self._restored.is_set() or self._failed.is_set()):
            waits = {asyncio.ensure_future(self._restored.wait()),
                     asyncio.ensure_future(self._failed.wait())}
            try:
                await asyncio.wait(waits, timeout=RECONNECT_WAIT,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
        if not self._restored.is_set():
            raise _fresh(self._failure) or AgenstraError(
                ErrorCode.REMOTE_UNAVAILABLE, f"Still reconnecting to {self._where}")

    async def _restore(self) -> None:
        """After every (re)connect: the client context, then each agent after what we hold."""
        self._restore_error = None
        try:
            await self._call(ControllerEvent.SET_CLIENT, {"clientId": self.client_id})
            self._context = self.client_id
            for agent in list(self._agents.values()):
                await self._forward(ManagerEvent.LOGIN, agent, {"afterSeq": agent.last_seq},
                                    restoring=True)
        except AgenstraError as exc:
            # e.g. the manager is restarting: the controller logs the agent in when it is back.
            self._restore_error = exc
            log.warning("agenstra: restoring the session: %s", exc)
        assert self._restored is not None
        self._restored.set()
        self._set_state("connected")

    async def _on_disconnect(self, reason: Any = None) -> None:
        if self._restored is not None:
            self._restored.clear()
        self._set_state("disconnected" if self._closed else "reconnecting")
        if reason == socketio.AsyncClient.reason.SERVER_DISCONNECT and not self._closed:
            # python-socketio reconnects after a broken transport only, not when the server
            # closes the connection, as it does when it shuts down (or restarts).
            self._redial_task = asyncio.ensure_future(self._redial())

    def _set_state(self, state: str) -> None:
        self.state = state
        for listener in list(self._state_listeners):
            listener(state)

    def on_state(self, listener: Callable[[str], None]) -> None:
        """Call `listener(state)` when the connection state changes (any thread)."""
        self._state_listeners.append(listener)

    def close(self) -> None:
        """Disconnect for good (reconnecting stops too); connect() then makes a new client."""
        self._loop.run(self._close(), 30)

    async def _close(self) -> None:
        self._closed = True
        if self._redial_task is not None:
            self._redial_task.cancel()
        if self._sio is not None:
            await self._sio.shutdown()
        self._fail(AgenstraError(ErrorCode.REMOTE_UNAVAILABLE,
                                 "This client is closed: connect() again"))
        self._set_state("disconnected")

    # -- agents --------------------------------------------------------------------------

    def agent(self, name_or_id: str, client_id: str | None = None) -> Agent:
        """The named agent, logged in, with its history (replayed by the manager)."""
        return self._loop.run(self._agent(name_or_id, client_id or self.client_id), 120)

    async def aagent(self, name_or_id: str, client_id: str | None = None) -> Agent:
        return await self._loop.run_async(self._agent(name_or_id, client_id or self.client_id))

    async def _agent(self, name_or_id: str, client_id: str) -> Agent:
        listing = await self._rest("GET", f"/clients/{client_id}/agents")
        found = next((a for a in listing if name_or_id in (a["id"], a["name"])), None)
        if found is None:
            raise AgenstraError(ErrorCode.NOT_FOUND, f"No agent named {name_or_id!r}")
        key = (client_id, found["id"])
        if key not in self._agents:
            agent = Agent(self, client_id, found["id"], found["name"], found.get("provider", ""))
            self._agents[key] = agent
            await self._forward(ManagerEvent.LOGIN, agent, {})
            await self._history_settled(agent)
        return self._agents[key]

    async def _history_settled(self, agent: Agent) -> None:
        """Wait until the replayed history reaches what the manager has stored."""
        stored = await self._rest("GET", f"/clients/{agent.client_id}/agents/{agent.id}/messages",
                                  params={"after": max(agent.last_seq, 0), "limit": 1000})
        target = stored[-1]["seq"] if stored else 0
        for _ in range(200):
            if agent.last_seq >= target:
                return
            await asyncio.sleep(0.05)

    async def _forward(self, event: str, agent: Agent, payload: dict[str, Any],
                       restoring: bool = False) -> None:
        if not restoring:
            await self._wait_restored()
        if agent.client_id != self._context:
            await self._call(ControllerEvent.SET_CLIENT, {"clientId": agent.client_id})
            self._context = agent.client_id
        await self._call(ControllerEvent.FORWARD,
                         {"event": event, "agentId": agent.id, "payload": payload})

    async def _call(self, event: str, payload: dict[str, Any]) -> None:
        if self._sio is None:
            raise AgenstraError(ErrorCode.REMOTE_UNAVAILABLE, "Not connected to the controller")
        try:
            ack = await self._sio.call(event, payload, namespace=CLIENTS_NAMESPACE, timeout=60)
        except socketio.exceptions.SocketIOError:
            raise AgenstraError(ErrorCode.REMOTE_UNAVAILABLE,
                                "The controller did not answer") from None
        if not (isinstance(ack, dict) and ack.get("ok")):
            error = ack.get("error") if isinstance(ack, dict) else None
            raise AgenstraError.from_payload(error) or AgenstraError(ErrorCode.INTERNAL, "Refused")

    async def _on_forwarded(self, data: dict[str, Any]) -> None:
        agent = self._agents.get((data.get("clientId"), data.get("agentId")))
        if agent is not None and isinstance(data.get("payload"), dict):
            agent._receive(data.get("event", ""), data["payload"])

    # -- management (REST) ---------------------------------------------------------------

    def clients(self) -> list[dict[str, Any]]:
        return self._loop.run(self._rest("GET", "/clients"), 60)

    def providers(self, client_id: str | None = None) -> dict[str, Any]:
        """The providers (with detected agent CLIs) and runtimes a manager offers."""
        path = f"/clients/{client_id or self.client_id}/providers"
        return self._loop.run(self._rest("GET", path), 60)

    def agents(self, client_id: str | None = None) -> list[dict[str, Any]]:
        return self._loop.run(self._rest("GET", f"/clients/{client_id or self.client_id}/agents"),
                              60)

    def create_agent(self, name: str, provider: str = "shell", runtime: str | None = None,
                     image: str | None = None, config: dict[str, Any] | None = None,
                     client_id: str | None = None, project: str | None = None,
                     permissions: str | None = None) -> dict[str, Any]:
        """Create an agent. `project`: a folder relative to the Jupyter root to work in;
        `permissions`: its policy (`config.permissions`: ask, workspace, allow, deny)."""
        config = dict(config or {})
        if permissions is not None:
            config["permissions"] = permissions
        body: dict[str, Any] = {"name": name, "provider": provider, "config": config}
        body.update({k: v for k, v in (("runtime", runtime), ("image", image),
                                       ("project", project)) if v})
        path = f"/clients/{client_id or self.client_id}/agents"
        return self._loop.run(self._rest("POST", path, json=body), 300)

    def delete_agent(self, name_or_id: str, client_id: str | None = None) -> None:
        client_id = client_id or self.client_id
        agent_id = self._agent_id(name_or_id, client_id)
        self._agents.pop((client_id, agent_id), None)
        self._loop.run(self._rest("DELETE", f"/clients/{client_id}/agents/{agent_id}"), 120)

    def start_agent(self, name_or_id: str, client_id: str | None = None) -> dict[str, Any]:
        return self._action(name_or_id, "start", client_id)

    def stop_agent(self, name_or_id: str, client_id: str | None = None) -> dict[str, Any]:
        return self._action(name_or_id, "stop", client_id)

    def _action(self, name_or_id: str, action: str, client_id: str | None) -> dict[str, Any]:
        client_id = client_id or self.client_id
        agent_id = self._agent_id(name_or_id, client_id)
        path = f"/clients/{client_id}/agents/{agent_id}/{action}"
        return self._loop.run(self._rest("POST", path), 120)

    def _agent_id(self, name_or_id: str, client_id: str) -> str:
        for agent in self.agents(client_id):
            if name_or_id in (agent["id"], agent["name"]):
                return agent["id"]
        raise AgenstraError(ErrorCode.NOT_FOUND, f"No agent named {name_or_id!r}")

    async def _rest(self, method: str, path: str, **kwargs: Any) -> Any:
        url = f"{self.server.url}{self.server.base_url}agenstra/api{path}"
        headers = {"Authorization": f"token {self.server.token}"}
        async with httpx.AsyncClient(timeout=300) as http:
            response = await http.request(method, url, headers=headers, **kwargs)
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            raise AgenstraError.from_payload(body, response.status_code) or AgenstraError(
                ErrorCode.INTERNAL, f"HTTP {response.status_code}", response.status_code)
        return response.json() if response.content else None


def _fresh(error: AgenstraError | None) -> AgenstraError | None:
    """A new instance to raise: one raised many times would pile up tracebacks."""
    return None if error is None else AgenstraError(error.code, error.message, error.status)


_clients: dict[tuple[ServerInfo, str], AgenstraClient] = {}
_clients_guard = threading.Lock()


def connect(url: str | None = None, token: str | None = None,
            client_id: str = "local") -> AgenstraClient:
    """The client of manager `client_id` of a Jupyter server: the one running this kernel
    unless `url` names another; `token` overrides the one found. One client per server and
    manager, made on first use, and made again once closed (or refused by a restarted
    server with a new token)."""
    if url is not None:
        server = _split(url, token or os.environ.get("AGENSTRA_TOKEN", ""))
    else:
        server = discover_server()
        server = dataclasses.replace(server, token=token) if token else server
    with _clients_guard:
        client = _clients.get((server, client_id))
        if client is None or client.closed:
            client = _clients[(server, client_id)] = AgenstraClient(server, client_id)
        return client
