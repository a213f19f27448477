"""What providers ask before an agent acts, and the policy that answers without the user.

A provider turns its agent's own permission request (ACP `session/request_permission`, a
CLI's permission prompt) into a `PermissionAsk` and awaits `Turn.ask(...)`: the agent's
policy answers at once, or the user is asked (see approvals.py) and the `Resolution` comes
back when someone answers, the request expires or the turn is cancelled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .. import protocol

READING_KINDS = frozenset({"read", "search"})
WRITING_KINDS = frozenset({"edit", "delete", "move"})


@dataclass(frozen=True)
class PermissionAsk:
    """One request of a running turn, in the contract's terms (DESIGN.md "Approvals")."""

    title: str
    kind: str  # one of protocol.PERMISSION_KINDS ("other" when unknown)
    # [{optionId, name, kind}] with kind one of protocol.OPTION_KINDS
    options: list[dict[str, str]] = field(
        default_factory=lambda: [dict(o) for o in protocol.DEFAULT_PERMISSION_OPTIONS])
    paths: list[str] = field(default_factory=list)  # relative to the workspace where inside
    # Whether every path, resolved as the agent sees it, lies in its workspace (the policy
    # allows such reads, and edits under `workspace`); False when there are no paths.
    inside_workspace: bool = False
    diff: list[dict[str, Any]] | None = None  # [{path, oldText, newText}] for edits
    tool_call_id: str | None = None
    # Done outside the agent's sandbox (a notebook tool running code in the user's kernel):
    # always the user's call, once; only `deny` settles it (see policy_decision).
    outside_sandbox: bool = False


@dataclass(frozen=True)
class Resolution:
    request_id: str
    outcome: str  # one of protocol.PERMISSION_OUTCOMES
    by: str  # one of protocol.DECIDERS
    option_id: str | None = None
    user: str | None = None  # who answered, when the controller said

    @property
    def allowed(self) -> bool:
        return self.outcome == "allowed"


def permission_part(ask: PermissionAsk, resolution: Resolution) -> dict[str, Any]:
    """The `permission` part of a turn's answer (DESIGN.md "Approvals")."""
    part: dict[str, Any] = {"kind": "permission", "requestId": resolution.request_id,
                            "title": ask.title, "toolKind": ask.kind, "paths": ask.paths,
                            "outcome": resolution.outcome, "by": resolution.by,
                            "optionId": resolution.option_id}
    if ask.tool_call_id:
        part["toolCallId"] = ask.tool_call_id
    if resolution.user:
        part["user"] = resolution.user
    return part


# Turn.ask: how a provider asks; it returns when the request is settled.
AskPermission = Callable[[PermissionAsk], Awaitable[Resolution]]


def policy_decision(policy: str, ask: PermissionAsk, rule: str | None = None) -> str | None:
    """"allow" or "reject" when the policy (or a remembered `rule`: "allow" | "reject" for
    this tool kind) settles `ask` without the user; None when the user must be asked."""
    if ask.outside_sandbox:  # no policy or rule lets the sandbox be left unasked
        return "reject" if policy == "deny" else None
    if policy == "allow":
        return "allow"
    if policy == "deny":
        return "reject"
    if any(_in_git_dir(path) for path in ask.paths):
        return None  # hooks and git config run outside any sandbox: always the user's call
    if rule in ("allow", "reject"):
        return rule
    free = READING_KINDS | (WRITING_KINDS if policy == "workspace" else frozenset())
    if ask.kind in free and ask.inside_workspace:
        return "allow"
    return None


def _in_git_dir(path: str) -> bool:
    return ".git" in path.replace("\\", "/").split("/")


def pick_option(options: list[dict[str, str]], decision: str) -> str | None:
    """The option id that carries out a policy's "allow" / "reject" (a *_once option first)."""
    wanted = ("allow_once", "allow_always") if decision == "allow" else \
        ("reject_once", "reject_always")
    for kind in wanted:
        for option in options:
            if option.get("kind") == kind:
                return option.get("optionId")
    return None


async def refuse_all(ask: PermissionAsk) -> Resolution:
    """Turn.ask where nobody can be asked (a Turn made outside a channel): reject."""
    return Resolution(request_id="", outcome="rejected", by="policy",
                      option_id=pick_option(ask.options, "reject"))
