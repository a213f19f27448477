"""Short, bounded summaries of a kernel's variables, for a model to read.

`%%agent --with df,model` and the ChatWidget's "Attach variables" picker put them in front
of a message (`context_block`, `with_context`); the notebook tools' "list variables" will
reuse `summarize`. So this module imports nothing from Jupyter, and nothing heavy: pandas
and numpy values are recognised by their type's module (`type(value).__module__`), never
by importing them.

A summary must not hang the kernel or flood the model: only cheap attributes are read
(`shape`, `dtype`, `len` of built-in containers, a few first items), every repr is cut
(and one that raises says so), and there are hard caps per variable and per message.
Summaries are also deterministic (no memory addresses, sets in sorted order) so that a
recorded session replays: its prompt, context included, must be the same text again.
"""

from __future__ import annotations

import builtins
import re
import reprlib
import types
from collections.abc import Iterable, Mapping
from typing import Any

VALUE_CHARS = 200  # a scalar's or an item's repr
VARIABLE_CHARS = 8 * 1024  # one variable's summary, in characters
MESSAGE_CHARS = 32 * 1024  # all summaries of one message together
FIRST_ITEMS = 5
HEAD_ROWS = 5
HEAD_COLUMNS = 20
LISTED_NAMES = 30  # an unknown name's error lists at most this many that exist
CONTEXT_HEADER = "Context from the kernel"
# Every context section starts so (the sidebar's "Context from the notebook ..." too).
CONTEXT_PREFIX = "Context from the "
CONTEXT_END = "End of context."
_BIG_INT_BITS = 4000  # str() of a larger int is refused by Python (and slow)


class UnknownVariables(NameError):
    """Names asked for that the namespace does not have (nothing is sent)."""


class _BoundedRepr(reprlib.Repr):
    """reprlib's bounded repr of containers, with reprs that fail, addresses and huge ints
    handled."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3  # a recursive list stops here
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = FIRST_ITEMS
        self.maxdeque = self.maxarray = self.maxdict = FIRST_ITEMS
        self.maxstring = self.maxother = self.maxlong = VALUE_CHARS

    def repr_int(self, x: int, level: int) -> str:
        if abs(x).bit_length() > _BIG_INT_BITS:
            return f"<int of {abs(x).bit_length()} bits>"
        return super().repr_int(x, level)

    def repr_instance(self, x: Any, level: int) -> str:
        try:
            text = builtins.repr(x)
        except Exception as exc:  # a broken __repr__ must not break the message
            return f"<{_type_name(x)} (repr failed: {type(exc).__name__})>"
        return cut(_no_address(text), VALUE_CHARS)


_repr = _BoundedRepr()


def short_repr(value: Any) -> str:
    """A repr of at most about VALUE_CHARS characters, whatever the value."""
    try:
        return _repr.repr(value)
    except Exception as exc:  # e.g. a container whose iteration raises
        return f"<{_type_name(value)} (repr failed: {type(exc).__name__})>"


def cut(text: str, limit: int) -> str:
    """`text` up to `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit} more characters]"


def _no_address(text: str) -> str:
    """`<Foo object at 0x7f…>` as `<Foo object>`: the same text in every run."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text)


def _type_name(value: Any) -> str:
    kind = type(value)
    module = getattr(kind, "__module__", "") or ""
    name = getattr(kind, "__qualname__", kind.__name__)
    return name if module == "builtins" else f"{module}.{name}"


# -- one variable ---------------------------------------------------------------------------


def summarize(name: str, value: Any) -> str:
    """`name: type, facts` and then a few lines of content; at most VARIABLE_CHARS."""
    try:
        body = _summary(value)
    except Exception as exc:  # an odd DataFrame look-alike, a property that raises…
        body = f"{_type_name(value)} (not summarised: {type(exc).__name__})\n" \
               f"{short_repr(value)}"
    return cut(f"{name}: {body}", VARIABLE_CHARS)


def _summary(value: Any) -> str:
    module = getattr(type(value), "__module__", "") or ""
    kind = type(value).__name__
    if module.split(".")[0] == "pandas" and kind == "DataFrame":
        return _dataframe(value)
    if module.split(".")[0] == "pandas" and kind == "Series":
        return _series(value)
    if module.split(".")[0] == "numpy" and kind == "ndarray":
        return _ndarray(value)
    if isinstance(value, str):
        more = f", {len(value)} characters" if len(value) > VALUE_CHARS else ""
        return f"str{more}\n{_cut_repr(value)}"
    if isinstance(value, (bytes, bytearray)):
        return f"{_type_name(value)}, {len(value)} bytes\n{_cut_repr(value)}"
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        return _container(value)
    return f"{_type_name(value)}\n{short_repr(value)}"


def _cut_repr(value: str | bytes | bytearray) -> str:
    """The repr of the first characters only: never the repr of a 10 MB string."""
    shown = repr(value[:VALUE_CHARS])
    return shown if len(value) <= VALUE_CHARS else f"{shown}…"


def _container(value: list | tuple | set | frozenset | dict) -> str:
    size = len(value)  # built-in containers: cheap
    unit = "item" if size == 1 else "items"
    if isinstance(value, dict):
        first = [f"{short_repr(k)}: {short_repr(v)}"
                 for k, v in _first(value.items(), FIRST_ITEMS)]
    else:
        items = list(_first(value, FIRST_ITEMS * 20 if isinstance(value, (set, frozenset))
                            else FIRST_ITEMS))
        if isinstance(value, (set, frozenset)):  # in a stable order, as reprlib does
            items = _sorted(items)[:FIRST_ITEMS]
        first = [short_repr(item) for item in items]
    if not first:
        return f"{_type_name(value)}, {size} {unit}"
    more = ", …" if size > len(first) else ""
    return f"{_type_name(value)}, {size} {unit}\nfirst: {', '.join(first)}{more}"


def _first(items: Iterable[Any], count: int) -> Iterable[Any]:
    for index, item in enumerate(items):
        if index >= count:
            return
        yield item


def _sorted(items: list[Any]) -> list[Any]:
    try:
        return sorted(items)
    except TypeError:  # mixed kinds: by repr, still the same order each run
        return sorted(items, key=short_repr)


def _ndarray(value: Any) -> str:
    shape, dtype = tuple(value.shape), value.dtype
    # `.flat[:n]` copies n values only, whatever the array's size or layout.
    first = value.flat[:FIRST_ITEMS * 2].tolist() if value.size else []
    more = ", …" if value.size > len(first) else ""
    values = ", ".join(short_repr(v) for v in first)
    return f"numpy.ndarray, shape {shape}, dtype {dtype}\nfirst values: [{values}{more}]"


def _dataframe(value: Any) -> str:
    rows, columns = tuple(value.shape)
    dtypes = [f"  {short_repr(column)}: {dtype}"
              for column, dtype in value.dtypes.iloc[:HEAD_COLUMNS].items()]
    if columns > HEAD_COLUMNS:
        dtypes.append(f"  … {columns - HEAD_COLUMNS} more columns")
    head = value.iloc[:HEAD_ROWS, :HEAD_COLUMNS].to_string(max_colwidth=40)
    return (f"pandas.DataFrame, shape ({rows}, {columns})\ncolumns:\n" + "\n".join(dtypes) +
            f"\nhead({HEAD_ROWS}):\n{cut(head, VARIABLE_CHARS // 2)}")


def _series(value: Any) -> str:
    head = value.iloc[:HEAD_ROWS].to_string(max_rows=HEAD_ROWS)
    return (f"pandas.Series, length {len(value)}, dtype {value.dtype}, "
            f"name {short_repr(value.name)}\nhead({HEAD_ROWS}):\n{cut(head, VARIABLE_CHARS // 2)}")


# -- a message's context ----------------------------------------------------------------------


def public_names(namespace: Mapping[str, Any], hidden: Iterable[str] = ()) -> list[str]:
    """The names a user would attach: not private, not hidden (IPython's own: In, Out,
    exit…), not modules."""
    hidden = set(hidden)
    return sorted(name for name, value in list(namespace.items())
                  if not name.startswith("_") and name not in hidden
                  and not isinstance(value, types.ModuleType))


def parse_names(text: str) -> list[str]:
    """"df, model" as ["df", "model"] (each once, in order)."""
    return list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def context_block(namespace: Mapping[str, Any], names: Iterable[str],
                  hidden: Iterable[str] = ()) -> str:
    """The summaries of `names` as one delimited section, at most about MESSAGE_CHARS;
    "" for no names. UnknownVariables (and nothing built) if one is not in `namespace`."""
    names = list(dict.fromkeys(names))
    missing = [name for name in names if name not in namespace]
    if missing:
        raise UnknownVariables(_unknown_message(missing, public_names(namespace, hidden)))
    if not names:
        return ""
    blocks, used = [], 0
    for name in names:
        summary = summarize(name, namespace[name])
        if used + len(summary) > MESSAGE_CHARS:
            summary = f"{name}: left out (the context is limited to {MESSAGE_CHARS} characters)"
        used += len(summary)
        fence = "`" * max(3, _longest_backtick_run(summary) + 1)  # the summary cannot close it
        blocks.append(f"{fence}text\n{summary}\n{fence}")
    header = f"{CONTEXT_HEADER} (variables {', '.join(names)}):"
    return "\n\n".join([header, *blocks, CONTEXT_END])


def with_context(block: str, message: str) -> str:
    """The message as sent: the context section first, then the user's text."""
    return f"{block}\n\n{message}" if block else message


def split_context(text: str) -> tuple[str, str]:
    """A sent message as (context section, the user's text); ("", text) without one."""
    end = text.find(f"\n\n{CONTEXT_END}\n\n")
    if not text.startswith(CONTEXT_PREFIX) or end < 0:
        return "", text
    return text[:end + 2 + len(CONTEXT_END)], text[end + 4 + len(CONTEXT_END):]


def _unknown_message(missing: list[str], existing: list[str]) -> str:
    listed = ", ".join(existing[:LISTED_NAMES]) + (", …" if len(existing) > LISTED_NAMES else "")
    which = "variable" if len(missing) == 1 else "variables"
    return (f"No {which} {', '.join(missing)} in the kernel; nothing was sent. "
            f"It has: {listed or '(no variables)'}")


def _longest_backtick_run(text: str) -> int:
    longest = run = 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    return longest
