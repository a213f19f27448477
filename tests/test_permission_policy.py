"""The policy that settles requests without the user (manager/permissions.py)."""

from __future__ import annotations

import pytest

from agenstra_jupyter.manager.permissions import PermissionAsk, pick_option, policy_decision


def ask(kind: str, paths: list[str], inside: bool = True) -> PermissionAsk:
    return PermissionAsk(title=f"{kind} {paths}", kind=kind, paths=paths, inside_workspace=inside)


@pytest.mark.parametrize(("policy", "request_", "expected"), [
    ("ask", ask("read", ["a.py"]), "allow"),
    ("ask", ask("read", ["/etc/passwd"], inside=False), None),
    ("ask", ask("edit", ["a.py"]), None),
    ("workspace", ask("edit", ["a.py"]), "allow"),
    ("workspace", ask("edit", ["../b.py"], inside=False), None),
    ("workspace", ask("execute", []), None),
    ("allow", ask("execute", []), "allow"),
    ("deny", ask("read", ["a.py"]), "reject"),
])
def test_policies(policy, request_, expected):
    assert policy_decision(policy, request_) == expected


@pytest.mark.parametrize("path", [".git/hooks/pre-commit", ".git/config", "sub/.git/config",
                                  ".git"])
def test_anything_in_a_git_directory_asks_whatever_the_policy_or_rule(path):
    """Hooks and `core.fsmonitor` run outside any sandbox when git runs in the folder."""
    for policy in ("ask", "workspace"):
        assert policy_decision(policy, ask("edit", [path])) is None
        assert policy_decision(policy, ask("read", [path])) is None
        assert policy_decision(policy, ask("edit", [path]), rule="allow") is None
    assert policy_decision("workspace", ask("edit", [".gitignore"])) == "allow"


def test_remembered_rules_settle_their_kind():
    assert policy_decision("ask", ask("execute", []), rule="allow") == "allow"
    assert policy_decision("ask", ask("edit", ["a.py"]), rule="reject") == "reject"


def test_the_option_that_carries_out_a_decision():
    options = [{"optionId": "y", "kind": "allow_always"}, {"optionId": "n", "kind": "reject_once"}]
    assert pick_option(options, "allow") == "y"
    assert pick_option(options, "reject") == "n"
    assert pick_option([{"optionId": "y", "kind": "allow_once"}], "reject") is None
