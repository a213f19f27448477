"""What REST shows of an agent's config: its shape and names, never a secret value.

Both tiers use it: the manager on every agent view, the controller again on whatever a
manager returns (an older or foreign manager may mask less).

A user sees which environment variables and files an agent gets (their names), its
command line, and its URLs. Masked with `REDACTED`:

- every value of an `env` mapping and every content of a `files` mapping, at any depth;
- the value of every key that looks secret (`apiKey`, `token`, `password`, ...);
- in every string: the `user:password@` part of URLs (`https://********@host/`) and the
  value of `name=value` pairs whose name looks secret, which covers `--api-key=X`,
  `OPENAI_API_KEY=X` and query parameters such as `?access_token=X`;
- in lists of strings (`args`, `command`): the item after a flag that looks secret
  (`--api-key X`, `--token X`), the value of `Name: value` headers whose name looks
  secret (`x-api-key: X`), `Bearer X` / `Basic X` credentials, and items that start like
  a well-known token (`sk-`, `ghp_`, `xoxb-`, `AKIA`, ...).

Not recognised: secrets after short or innocently named flags (`-k X`) that have no
known token prefix. Such values belong in `env`, where they are always masked.
"""

from __future__ import annotations

import re
from typing import Any

# Names (keys, flags, variables, headers, query parameters) that mark a secret value.
SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")
REDACTED = "********"
# Mappings whose names are shown and whose values never are.
VALUE_HIDDEN_KEYS = ("env", "files")

_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/?#@\s]+@")
_NAME_VALUE = re.compile(r"(?P<name>[A-Za-z_][\w.-]*)=(?P<value>[^\s&#;,]+)")
_FLAG = re.compile(r"^--?(?P<name>[A-Za-z][\w.-]*)$")
_HEADER = re.compile(r"^(?P<name>[A-Za-z][\w-]*)\s*:\s*(?P<value>.+)$", re.DOTALL)
_SCHEME_CREDENTIAL = re.compile(r"\b(?P<scheme>Bearer|Basic)\s+\S+", re.IGNORECASE)
_TOKEN_PREFIX = re.compile(
    r"^(sk-|sk_|gh[pousr]_|github_pat_|glpat-|xox[abeprs]-|AKIA|ASIA|AIza|hf_)\S{8,}"
)


def looks_secret(name: str) -> bool:
    upper = name.upper()
    return any(marker in upper for marker in SECRET_MARKERS)


def redact(value: Any) -> Any:
    """Copy of a config structure with every secret-looking value masked."""
    if isinstance(value, dict):
        return {key: _redact_item(key, item) for key, item in value.items()}
    if isinstance(value, list):
        return _redact_list(value)
    if isinstance(value, str):
        return redact_string(value)
    return value


def _redact_item(key: Any, item: Any) -> Any:
    if not isinstance(key, str):
        return redact(item)
    if looks_secret(key):
        return REDACTED
    if key in VALUE_HIDDEN_KEYS:
        return {name: REDACTED for name in item} if isinstance(item, dict) else REDACTED
    return redact(item)


def _redact_list(items: list[Any]) -> list[Any]:
    shown: list[Any] = []
    after_secret_flag = False
    for item in items:
        if not isinstance(item, str):
            shown.append(redact(item))
            after_secret_flag = False
            continue
        shown.append(REDACTED if after_secret_flag else _redact_argument(item))
        flag = _FLAG.match(item)
        after_secret_flag = bool(flag and looks_secret(flag["name"]))
    return shown


def _redact_argument(item: str) -> str:
    if _TOKEN_PREFIX.match(item):
        return REDACTED
    header = _HEADER.match(item)
    if header and looks_secret(header["name"]):
        return f"{header['name']}: {REDACTED}"
    item = _SCHEME_CREDENTIAL.sub(lambda m: f"{m['scheme']} {REDACTED}", item)
    return redact_string(item)


def redact_string(text: str) -> str:
    """`text` without URL credentials and without the values of secret `name=value` pairs."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    return _NAME_VALUE.sub(_mask_pair, text)


# In reprs: a quoted secret-named key's quoted value ('password': 'x'), and tokens of
# known formats anywhere.
_QUOTED_PAIR = re.compile(
    r"(?P<key>(?P<kq>['\"])(?P<name>[^'\"\n]{1,64})(?P=kq)\s*:\s*)(?P<vq>['\"])"
    r"(?P<value>(?:(?!(?P=vq)).){0,4096})(?P=vq)")
_SCHEME_IN_TEXT = re.compile(r"\b(?P<scheme>Bearer|Basic)\s+[^\s'\"]+", re.IGNORECASE)
_TOKEN_ANYWHERE = re.compile(
    r"\b(sk-|sk_|gh[pousr]_|github_pat_|glpat-|xox[abeprs]-|AKIA|ASIA|AIza|hf_)[\w\-/+=]{8,}")


def redact_text(text: str) -> str:
    """Free text, such as a variable's repr, without the secrets it shows: URL credentials,
    secret `name=value` and `'name': 'value'` pairs, Bearer/Basic credentials, and tokens
    of known formats (sk-…, ghp_…, AKIA…)."""
    text = _QUOTED_PAIR.sub(lambda m: f"{m['key']}{m['vq']}{REDACTED}{m['vq']}"
                            if looks_secret(m["name"]) else m[0], text)
    text = _SCHEME_IN_TEXT.sub(lambda m: f"{m['scheme']} {REDACTED}", text)
    text = _TOKEN_ANYWHERE.sub(REDACTED, text)
    return redact_string(text)


def _mask_pair(match: re.Match[str]) -> str:
    return f"{match['name']}={REDACTED}" if looks_secret(match["name"]) else match[0]
