"""agenstra_jupyter.redact alone: each rule of its docstring, at any depth, and what it leaves."""

from __future__ import annotations

import copy

import pytest

from agenstra_jupyter.redact import REDACTED, looks_secret, redact, redact_string

R = REDACTED


@pytest.mark.parametrize("name", [
    "apiKey", "API_KEY", "x-api-key", "token", "accessToken", "GITHUB_TOKEN", "secret",
    "clientSecret", "password", "db_passwd", "credentials", "AWS_SECRET_ACCESS_KEY",
    "monkey",  # contains KEY: masked too (a false positive is the safe side)
])
def test_names_that_look_secret(name):
    assert looks_secret(name)


@pytest.mark.parametrize("name", ["model", "timeout", "baseUrl", "command", "user", "path"])
def test_names_that_do_not(name):
    assert not looks_secret(name)


def test_env_and_files_show_names_never_values_at_any_depth():
    config = {
        "env": {"A": "1", "PATH": "/bin"},
        "files": {"a/b.json": "{}", "c": {"nested": "x"}},
        "extra": {"deeper": [{"env": {"NESTED": "n"}}, {"files": "not-a-mapping"}]},
    }
    assert redact(config) == {
        "env": {"A": R, "PATH": R},
        "files": {"a/b.json": R, "c": R},
        "extra": {"deeper": [{"env": {"NESTED": R}}, {"files": R}]},
    }


def test_secret_keys_mask_whatever_they_hold():
    config = {"apiKey": "k", "token": 12345, "password": None, "clientSecret": {"a": "b"},
              "keys": ["a", "b"], "model": "m"}
    assert redact(config) == {"apiKey": R, "token": R, "password": R, "clientSecret": R,
                              "keys": R, "model": "m"}


@pytest.mark.parametrize(("text", "shown"), [
    ("https://bob:pw@api.example.com/v1", f"https://{R}@api.example.com/v1"),
    ("git+ssh://me@h/r.git", f"git+ssh://{R}@h/r.git"),  # a user name alone is masked too
    ("see http://a:b@h1/ and ftp://c:d@h2/x", f"see http://{R}@h1/ and ftp://{R}@h2/x"),
    ("http://h/p?id=1&access_token=t#frag", f"http://h/p?id=1&access_token={R}#frag"),
    ("http://h/p?api_key=k;x=1", f"http://h/p?api_key={R};x=1"),
    ("OPENAI_API_KEY=sk1 MODEL=m", f"OPENAI_API_KEY={R} MODEL=m"),
    ("--token=abc,--model=m", f"--token={R},--model=m"),
    ("user@example.com", "user@example.com"),  # no scheme: not a URL's credentials
    ("mailto:user@example.com", "mailto:user@example.com"),
    ("a=b c=d", "a=b c=d"),
    ("", ""),
])
def test_strings(text, shown):
    assert redact_string(text) == shown
    assert redact(text) == shown


@pytest.mark.parametrize(("args", "shown"), [
    (["--api-key", "k", "--model", "m"], ["--api-key", R, "--model", "m"]),
    (["-token", "t"], ["-token", R]),
    (["--token", "--model", "m"], ["--token", R, "m"]),  # the next item, whatever it is
    (["--password"], ["--password"]),  # nothing after it
    (["--secret", 5, "x"], ["--secret", 5, "x"]),  # a non-string ends the flag's reach
    (["x-api-key: v", "X-Auth-Token:v2", "Accept: json"],
     [f"x-api-key: {R}", f"X-Auth-Token: {R}", "Accept: json"]),
    (["Authorization: Bearer abc"], [f"Authorization: Bearer {R}"]),
    (["Bearer abc", "basic dXNlcg==", "-H", "Proxy: Bearer x y"],
     [f"Bearer {R}", f"basic {R}", "-H", f"Proxy: Bearer {R} y"]),
    (["GITHUB_TOKEN=g", "--token=t", "https://u:p@h/"],
     [f"GITHUB_TOKEN={R}", f"--token={R}", f"https://{R}@h/"]),
    (["-k", "hunter2"], ["-k", "hunter2"]),  # documented: not recognised (belongs in env)
])
def test_argument_lists(args, shown):
    assert redact(args) == shown
    assert redact({"command": ["tool", *args]}) == {"command": ["tool", *shown]}


@pytest.mark.parametrize("token", [
    "sk-abcdefgh", "sk_live_abcdefgh", "ghp_abcdefgh", "gho_abcdefgh", "ghu_abcdefgh",
    "ghs_abcdefgh", "ghr_abcdefgh", "github_pat_abcdefgh", "glpat-abcdefgh", "xoxb-abcdefgh",
    "xoxp-abcdefgh", "AKIAABCDEFGH", "ASIAABCDEFGH", "AIzaabcdefgh", "hf_abcdefgh",
])
def test_well_known_token_prefixes_in_argument_lists(token):
    assert redact(["--x", token]) == ["--x", R]


@pytest.mark.parametrize("item", ["sk-short", "skeleton", "ghp_", "hf_x", "AKIA"])
def test_short_or_lookalike_items_stay(item):
    assert redact([item]) == [item]


def test_nested_lists_and_non_string_keys():
    config = {1: "sk-abcdefghijk", "args": [["--token", "t"], {"password": "p"}],
              "plain": [1, 2.5, True, None]}
    assert redact(config) == {1: "sk-abcdefghijk", "args": [["--token", R], {"password": R}],
                              "plain": [1, 2.5, True, None]}


def test_scalars_pass_through():
    for value in (None, 0, 3.5, True):
        assert redact(value) is value


def test_redaction_copies_and_is_idempotent():
    config = {"env": {"A": "1"}, "args": ["--token", "t", "https://u:p@h/?token=q"],
              "baseUrl": "https://u:p@h/v1?access_token=z&model=m"}
    original = copy.deepcopy(config)
    shown = redact(config)
    assert config == original  # the input is not touched
    assert redact(shown) == shown  # masking what is masked (manager, then controller)
    assert shown["baseUrl"] == f"https://{R}@h/v1?access_token={R}&model=m"
    assert shown["args"] == ["--token", R, f"https://{R}@h/?token={R}"]
