"""The wire contract, in one place: event names, payload models and error codes.

Every tier (manager, controller, Python client) imports its event names and payload
shapes from here; see DESIGN.md for the contract these constants spell out.
"""

from __future__ import annotations

import re
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# -- transport -------------------------------------------------------------------------

AGENTS_NAMESPACE = "/agents"
CLIENTS_NAMESPACE = "/clients"
MANAGER_SOCKETIO_PATH = "socket.io"
CONTROLLER_SOCKETIO_PATH = "agenstra/socket.io"
# What a manager's GET /api/health says it is, so nothing else passes for one.
MANAGER_SERVICE = "agenstra-manager"
# Largest Socket.IO frame any tier sends or accepts (servers, the controller's upstream
# client, the Python client). A manager keeps every message it stores well under it.
MAX_FRAME_BYTES = 16 * 1024 * 1024


class ManagerEvent:
    """Event names on the manager's `/agents` namespace."""

    LOGIN = "login"
    LOGIN_SUCCESS = "loginSuccess"
    LOGIN_ERROR = "loginError"
    CHAT = "chat"
    CHAT_MESSAGE = "chatMessage"
    CHAT_EVENT = "chatEvent"
    CANCEL = "cancel"
    LOGOUT = "logout"
    LOGOUT_SUCCESS = "logoutSuccess"
    PERMISSION_RESPONSE = "permissionResponse"
    ERROR = "error"


class ControllerEvent:
    """Event names on the controller's `/clients` namespace."""

    SET_CLIENT = "setClient"
    CLIENT_SET = "clientSet"
    FORWARD = "forward"
    FORWARDED_EVENT = "forwardedEvent"
    ERROR = "error"
    REMOTE_DISCONNECTED = "remoteDisconnected"
    REMOTE_RECONNECTING = "remoteReconnecting"
    REMOTE_RECONNECTED = "remoteReconnected"


class ChatEventKind:
    """Kinds of the transient `chatEvent`s a running turn emits."""

    ASSISTANT_DELTA = "assistantDelta"
    TOOL_CALL = "toolCall"
    TOOL_RESULT = "toolResult"
    STATUS = "status"
    PERMISSION_REQUEST = "permissionRequest"
    PERMISSION_RESOLVED = "permissionResolved"
    FILES_CHANGED = "filesChanged"


# -- approvals (DESIGN.md "Approvals") -------------------------------------------------

# What a tool call asking for permission does (ACP's ToolKind values).
PERMISSION_KINDS = ("read", "edit", "delete", "move", "search", "execute", "fetch", "other")
OPTION_KINDS = ("allow_once", "allow_always", "reject_once", "reject_always")
PERMISSION_OUTCOMES = ("allowed", "rejected", "expired", "cancelled")
DECIDERS = ("user", "policy", "timeout")
# Agent config `permissions`: ask (reads inside the workspace allowed, the rest asks),
# workspace (reads and edits inside allowed, the rest asks), allow, deny.
# Notebook tools (MCP): the path under the Jupyter base_url, the server name agents see,
# and how a runtime hands the endpoint to an agent's process.
MCP_PATH = "agenstra/mcp"
MCP_SERVER_NAME = "agenstra"
MCP_URL_ENV = "AGENSTRA_MCP_URL"
MCP_TOKEN_ENV = "AGENSTRA_MCP_TOKEN"  # noqa: S105 (a variable name)
PERMISSION_POLICIES = ("ask", "workspace", "allow", "deny")
DEFAULT_PERMISSION_POLICY = "ask"
# The options a request offers when its agent names none of its own.
# Seconds a permission request waits for an answer (AGENSTRA_PERMISSION_TIMEOUT).
DEFAULT_PERMISSION_TIMEOUT = 600.0
# Each oldText / newText of a permission request's diff, in JSON-encoded bytes: longer
# ones are cut (marked) before they are stored and shown.
PERMISSION_DIFF_TEXT_BYTES = 8 * 1024
DEFAULT_PERMISSION_OPTIONS = (
    {"optionId": "allow_once", "name": "Allow", "kind": "allow_once"},
    {"optionId": "allow_always", "name": "Always allow", "kind": "allow_always"},
    {"optionId": "reject_once", "name": "Reject", "kind": "reject_once"},
    {"optionId": "reject_always", "name": "Always reject", "kind": "reject_always"},
)


class ErrorCode:
    """Codes carried by `error` events, `loginError` and REST error bodies."""

    # shared
    INVALID_PAYLOAD = "INVALID_PAYLOAD"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    UNKNOWN_EVENT = "UNKNOWN_EVENT"
    RATE_LIMITED = "RATE_LIMITED"
    UNAUTHORIZED = "UNAUTHORIZED"
    LOGIN_FAILED = "LOGIN_FAILED"
    INTERNAL = "INTERNAL"
    NOT_FOUND = "NOT_FOUND"
    CONFLICT = "CONFLICT"
    UNAVAILABLE = "UNAVAILABLE"  # the agent's runtime cannot serve this now
    # manager
    NOT_LOGGED_IN = "NOT_LOGGED_IN"
    UNKNOWN_REQUEST = "UNKNOWN_REQUEST"  # a permissionResponse for no pending request
    # controller
    NO_CLIENT = "NO_CLIENT"
    UNKNOWN_CLIENT = "UNKNOWN_CLIENT"
    NO_CREDENTIALS = "NO_CREDENTIALS"
    REMOTE_UNAVAILABLE = "REMOTE_UNAVAILABLE"


ERROR_CODES = frozenset(v for k, v in vars(ErrorCode).items() if k.isupper())
MANAGER_EVENTS = frozenset(v for k, v in vars(ManagerEvent).items() if k.isupper())

# The HTTP status each code gets in a REST answer, unless the raiser says otherwise.
HTTP_STATUS = {
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.LOGIN_FAILED: 401,
    ErrorCode.INTERNAL: 500,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.UNKNOWN_CLIENT: 404,
    ErrorCode.UNKNOWN_REQUEST: 404,
    ErrorCode.REMOTE_UNAVAILABLE: 502,
}

# The one text every login failure gets, whatever its cause.
LOGIN_ERROR_MESSAGE = "Invalid credentials"
UNAUTHORIZED_MESSAGE = "Unauthorized"

Sender = Literal["user", "agent"]
ResponseType = Literal["text", "error"]
# How an agent answer's `result` is shown: `markdown` (agents' prose; the default when the
# response has no `format`) or `text` (command output: preformatted, never read as
# markdown). A turn's `status` events may carry `format` too, so its live view matches.
ResponseFormat = Literal["markdown", "text"]
FORMAT_MARKDOWN: ResponseFormat = "markdown"
FORMAT_TEXT: ResponseFormat = "text"


def response_format(response: Any) -> ResponseFormat:
    """The `format` of an agent response (or status payload); markdown unless it says text."""
    text = isinstance(response, dict) and response.get("format") == FORMAT_TEXT
    return FORMAT_TEXT if text else FORMAT_MARKDOWN


AGENT_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


# Largest sequence number or count any tier accepts (SQLite's INTEGER).
MAX_SEQ = 2**63 - 1
_COUNT = re.compile(r"[0-9]{1,19}")


def parse_count(name: str, raw: str) -> int:
    """A query parameter such as `after` or `limit`: ASCII digits, at most MAX_SEQ."""
    if not _COUNT.fullmatch(raw) or int(raw) > MAX_SEQ:
        raise AgenstraError(ErrorCode.INVALID_PAYLOAD,
                            f"{name} must be an integer from 0 to {MAX_SEQ}")
    return int(raw)


class AgenstraError(Exception):
    """The one error type of every tier: a code from ErrorCode, a message people can
    read, and the HTTP status a REST answer carries. Codes travel unchanged across tiers."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or HTTP_STATUS.get(code, 400)

    @classmethod
    def from_payload(cls, body: Any, status: int | None = None) -> AgenstraError | None:
        """The error an `{message, code}` body (an ack's or a REST answer's) carries, if any."""
        if isinstance(body, dict) and isinstance(body.get("code"), str):
            return cls(body["code"], str(body.get("message") or body["code"]), status)
        return None

    def payload(self) -> dict[str, str]:
        return error_payload(self.code, self.message)

    def __repr__(self) -> str:
        return f"AgenstraError({self.code!r}, {self.message!r}, {self.status})"


def error_payload(code: str, message: str) -> dict[str, str]:
    return {"message": message, "code": code}


_second: tuple[int, str] = (-1, "")  # the last second formatted, and its text


def utc_now() -> str:
    """ISO 8601 UTC timestamp with millisecond precision, as on the wire."""
    # Formatted by hand, each second once: datetime's isoformat, then strftime, were a
    # visible cost per message.
    global _second
    second, millis = divmod(int(time.time() * 1000), 1000)
    cached = _second  # read once: another thread may replace it meanwhile
    if cached[0] != second:
        cached = _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{millis:03d}Z"


# -- inbound payloads ------------------------------------------------------------------


class _Request(BaseModel):
    # Strict: "5" is not an int, 1 is not a string. Unknown fields are ignored (DESIGN.md).
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class LoginRequest(_Request):
    agentId: str | None = Field(default=None, min_length=1, max_length=64)
    agentName: str | None = Field(default=None, min_length=1, max_length=64)
    password: str = Field(max_length=256)
    afterSeq: int | None = Field(default=None, ge=0, le=MAX_SEQ)

    @model_validator(mode="after")
    def _names_an_agent(self) -> LoginRequest:
        if not (self.agentId or self.agentName):
            raise ValueError("agentId or agentName is required")
        return self


# `agentId` on chat, cancel, logout and permissionResponse names the agent when a manager
# socket is logged into several; it may be left out while the socket holds exactly one.


class ChatRequest(_Request):
    message: str = Field(min_length=1)
    correlationId: str | None = Field(default=None, min_length=1, max_length=128)
    stream: bool = True
    agentId: str | None = Field(default=None, min_length=1, max_length=64)


class CancelRequest(_Request):
    correlationId: str | None = Field(default=None, min_length=1, max_length=128)
    agentId: str | None = Field(default=None, min_length=1, max_length=64)


class LogoutRequest(_Request):
    agentId: str | None = Field(default=None, min_length=1, max_length=64)


class PermissionResponseRequest(_Request):
    """A user's answer to a pending `permissionRequest`. The controller sets `user` (who
    answered, from the Jupyter identity); a frontend's own `user` is replaced."""

    requestId: str = Field(min_length=1, max_length=128)
    optionId: str = Field(min_length=1, max_length=128)
    agentId: str | None = Field(default=None, min_length=1, max_length=64)
    user: str | None = Field(default=None, max_length=256)


class AgentCreateRequest(_Request):
    """REST body creating an agent, on the manager and (forwarded) on the controller."""

    name: str = Field(pattern=AGENT_NAME_PATTERN.pattern)
    provider: str = Field(min_length=1, max_length=64)
    runtime: str | None = Field(default=None, min_length=1, max_length=64)
    image: str | None = Field(default=None, min_length=1, max_length=256)
    config: dict[str, Any] = Field(default_factory=dict)
    description: str = Field(default="", max_length=2000)
    # The folder the agent works in (DESIGN.md "Projects"): relative to the Jupyter root
    # when sent to the controller, the resolved absolute path when sent to a manager.
    project: str | None = Field(default=None, min_length=1, max_length=4096)


class NotebookToolsGrant(_Request):
    """The capability an agent reaches the notebook tools with (DESIGN.md "Notebook tools"):
    minted by the controller, sent to the manager once at create, handed to the agent by
    its runtime. Never shown to a frontend."""

    token: str = Field(min_length=32, max_length=256, pattern=r"^[A-Za-z0-9_-]+$")


class ManagerAgentCreateRequest(AgentCreateRequest):
    """What the controller sends a manager: a frontend's body plus the controller's grant
    (a frontend cannot send one: the controller's AgentCreateRequest has no such field)."""

    notebookTools: NotebookToolsGrant | None = None


class ToolPermissionRequest(_Request):
    """The controller's ask, on behalf of a notebook tool the agent called, in the agent's
    running turn: `POST /api/agents/{id}/permissions` on its manager. The answer is
    `{"outcome": allowed | rejected | expired | cancelled}` once the request is settled."""

    title: str = Field(min_length=1, max_length=500)
    kind: str = Field(pattern="^(" + "|".join(PERMISSION_KINDS) + ")$")
    paths: list[str] = Field(default_factory=list, max_length=16)
    diff: list[dict[str, Any]] | None = Field(default=None, max_length=16)
    toolCallId: str | None = Field(default=None, max_length=256)
    # Code run outside the agent's sandbox (in the user's kernel): the user is asked every
    # time, whatever the policy or an earlier "always" (only `deny` refuses it unasked).
    outsideSandbox: bool = False


class SetClientRequest(_Request):
    clientId: str = Field(min_length=1, max_length=64)


class ForwardRequest(_Request):
    event: str = Field(min_length=1, max_length=64)
    payload: dict[str, Any] | None = None
    agentId: str | None = Field(default=None, min_length=1, max_length=64)


class ForwardedLoginPayload(_Request):
    """What a frontend may put in a forwarded `login`: never a password."""

    afterSeq: int | None = Field(default=None, ge=0, le=MAX_SEQ)


class ClientRegisterRequest(_Request):
    """REST body registering a manager with the controller."""

    name: str = Field(pattern=AGENT_NAME_PATTERN.pattern)
    endpoint: str = Field(min_length=1, max_length=2048)
    apiKey: str = Field(min_length=1, max_length=1024)


def ack_ok() -> dict[str, Any]:
    return {"ok": True}


def ack_error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


def parse(model: type[_Request], data: Any) -> Any:
    """Validate an inbound payload; raise AgenstraError(INVALID_PAYLOAD) with a short reason."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise AgenstraError(ErrorCode.INVALID_PAYLOAD, "Payload must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise AgenstraError(ErrorCode.INVALID_PAYLOAD, describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


# -- outbound payloads -----------------------------------------------------------------


def login_success(agent_id: str, agent_name: str) -> dict[str, str]:
    return {"message": f"Welcome, {agent_name}!", "agentId": agent_id, "agentName": agent_name}


def login_error() -> dict[str, str]:
    return error_payload(ErrorCode.LOGIN_FAILED, LOGIN_ERROR_MESSAGE)


def chat_event(
    agent_id: str, correlation_id: str, kind: str, payload: dict[str, Any], sequence: int
) -> dict[str, Any]:
    return {
        "agentId": agent_id,
        "correlationId": correlation_id,
        "kind": kind,
        "payload": payload,
        "sequence": sequence,
    }


def delta_stream(event: str, data: Any) -> tuple[str, str] | None:
    """(agentId, correlationId) when `event` carries a text delta of a turn, as the
    manager's `chatEvent` or wrapped in the controller's `forwardedEvent`: what a socket
    that reads slowly may get merged with the next delta of the same turn."""
    if event == ControllerEvent.FORWARDED_EVENT and isinstance(data, dict):
        event, data = data.get("event"), data.get("payload")
    if event != ManagerEvent.CHAT_EVENT or not isinstance(data, dict) \
            or data.get("kind") != ChatEventKind.ASSISTANT_DELTA:
        return None
    payload = data.get("payload")
    if not (isinstance(payload, dict) and payload.keys() == {"delta"}
            and isinstance(payload["delta"], str)):
        return None
    agent_id, correlation_id = data.get("agentId"), data.get("correlationId")
    if not (isinstance(agent_id, str) and isinstance(correlation_id, str)):
        return None
    return agent_id, correlation_id


def merge_deltas(earlier: dict[str, Any], later: dict[str, Any]) -> dict[str, Any]:
    """One event for two deltas in a row of a turn (both `delta_stream`): `later` with
    `earlier`'s text before its own. Its `sequence` is the later one's, so sequences still
    only rise; the gap is the events merged. Neither argument is changed."""
    if "event" in later:  # a forwardedEvent
        return {**later, "payload": merge_deltas(earlier["payload"], later["payload"])}
    text = earlier["payload"]["delta"] + later["payload"]["delta"]
    return {**later, "payload": {"delta": text}}


def chat_message(
    *,
    id: str,
    seq: int,
    agent_id: str,
    sender: Sender,
    timestamp: str,
    correlation_id: str,
    text: str | None = None,
    response: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A persisted chat message as the manager announces it (user: `text`; agent: `response`)."""
    message: dict[str, Any] = {
        "id": id,
        "seq": seq,
        "agentId": agent_id,
        "from": sender,
        "timestamp": timestamp,
        "correlationId": correlation_id,
    }
    if sender == "user":
        message["text"] = text
    else:
        message["response"] = response
    return message
