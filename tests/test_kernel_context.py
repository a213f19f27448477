"""Kernel context: summaries of a kernel's variables sent with a message (`%%agent --with`,
the ChatWidget's "Attach variables").

The summaries first (real numpy arrays; pandas by look-alikes of its module's types unless
pandas is installed), their bounds against hostile values, then the magic's parsing, the
widget's picker against a real server and echo agent, and a notebook run headlessly,
recorded and replayed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from agenstra_jupyter import magics
from agenstra_jupyter.client import AgenstraError
from agenstra_jupyter.sessions import read_session
from agenstra_jupyter.variables import (
    CONTEXT_END,
    CONTEXT_HEADER,
    MESSAGE_CHARS,
    VALUE_CHARS,
    VARIABLE_CHARS,
    UnknownVariables,
    context_block,
    public_names,
    split_context,
    summarize,
    with_context,
)
from agenstra_jupyter.widgets import ChatWidget, bubble_html

from .test_sessions import cli, server_args, write_notebook
from .test_widget import bubbles, click, type_and_send, wait_for

CUT_NOTE = 40  # "… [N more characters]"


# -- summaries --------------------------------------------------------------------------------


def test_scalars_strings_and_bytes():
    assert summarize("n", 42) == "n: int\n42"
    assert summarize("f", 1.5) == "f: float\n1.5"
    assert summarize("s", "héllo") == "s: str\n'héllo'"
    assert summarize("b", b"\x00ab") == "b: bytes, 3 bytes\nb'\\x00ab'"
    assert summarize("big", 10 ** 5000) == "big: int\n<int of 16610 bits>"  # str() refuses it


def test_containers_say_their_length_and_first_items():
    assert summarize("xs", list(range(100))) == "xs: list, 100 items\nfirst: 0, 1, 2, 3, 4, …"
    assert summarize("t", (1,)) == "t: tuple, 1 item\nfirst: 1"
    assert summarize("d", {"a": 1, "b": [1, 2]}) == "d: dict, 2 items\nfirst: 'a': 1, 'b': [1, 2]"
    assert summarize("e", {}) == "e: dict, 0 items"


def test_other_objects_by_type_and_repr_without_addresses():
    class Model:
        pass

    summary = summarize("model", Model())
    assert summary.startswith("model: tests.test_kernel_context.")
    assert "Model object>" in summary and " at 0x" not in summary  # the same text each run


def test_sets_come_in_the_same_order_whatever_the_hash_seed():
    code = ("from agenstra_jupyter.variables import summarize;"
            "print(summarize('s', {chr(97 + i) * 3 for i in range(26)}))")
    seen = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
            for seed in ("1", "2", "3")}
    assert seen == {"s: set, 26 items\nfirst: 'aaa', 'bbb', 'ccc', 'ddd', 'eee', …\n"}


def test_numpy_arrays_by_shape_dtype_and_first_values():
    numpy = pytest.importorskip("numpy", reason="numpy is not installed (optional)")
    summary = summarize("a", numpy.arange(12, dtype="int32").reshape(3, 4))
    assert summary == ("a: numpy.ndarray, shape (3, 4), dtype int32\n"
                       "first values: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, …]")
    # A billion values (8 GB if copied or printed): none of them are.
    huge = summarize("h", numpy.broadcast_to(numpy.float64(0.5), (1000, 1000, 1000)))
    assert huge.startswith("h: numpy.ndarray, shape (1000, 1000, 1000), dtype float64\n")
    assert len(huge) < 200


def _pandas_like(name: str):
    """A class named as pandas names it, in a module named as pandas', with just the
    attributes a summary reads (pandas itself is not installed here)."""
    return type(name, (), {"__module__": f"pandas.core.{name.lower()}"})


class _Rows:
    def __init__(self, text: str) -> None:
        self.text = text

    def to_string(self, **options) -> str:
        return self.text


class _Indexer:
    def __init__(self, result) -> None:
        self.result = result
        self.asked: list = []

    def __getitem__(self, key):
        self.asked.append(key)
        return self.result


def fake_dataframe(columns: dict[str, str], rows: int, head: str):
    frame = _pandas_like("DataFrame")()
    frame.shape = (rows, len(columns))
    dtypes = _pandas_like("Series")()
    dtypes.iloc = _Indexer(type("Items", (), {"items": lambda self: iter(columns.items())})())
    frame.dtypes = dtypes
    frame.iloc = _Indexer(_Rows(head))
    return frame


def test_a_dataframe_by_shape_columns_and_head():
    frame = fake_dataframe({"city": "object", "temp": "float64"}, 1000,
                           "   city  temp\n0  Oslo  -3.5\n1  Rome  14.0")
    assert summarize("df", frame) == (
        "df: pandas.DataFrame, shape (1000, 2)\ncolumns:\n  'city': object\n"
        "  'temp': float64\nhead(5):\n   city  temp\n0  Oslo  -3.5\n1  Rome  14.0")
    # Only the head's rows and first columns are rendered, never the whole frame.
    assert frame.iloc.asked == [(slice(None, 5), slice(None, 20))]
    assert frame.dtypes.iloc.asked == [slice(None, 20)]


def test_a_dataframe_that_breaks_is_still_summarised():
    frame = _pandas_like("DataFrame")()  # no shape, no dtypes
    summary = summarize("df", frame)
    assert summary.startswith("df: pandas.core.dataframe.DataFrame (not summarised: "
                              "AttributeError)\n<pandas.core.dataframe.DataFrame object>")


def test_a_huge_dataframe_head_is_cut():
    frame = fake_dataframe({"c": "object"}, 5, "x" * 1_000_000)
    summary = summarize("df", frame)
    assert len(summary) <= VARIABLE_CHARS + CUT_NOTE and "more characters]" in summary


def test_real_pandas_if_installed():
    if os.environ.get("AGENSTRA_REQUIRE_PANDAS") != "1":
        pytest.importorskip("pandas", reason="pandas is not installed; the look-alike "
                            "tests above cover the path (AGENSTRA_REQUIRE_PANDAS=1 fails)")
    import pandas

    frame = pandas.DataFrame({"city": ["Oslo", "Rome"] * 10, "temp": [-3.5, 14.0] * 10})
    summary = summarize("df", frame)
    text_dtype = str(frame["city"].dtype)  # object before pandas 3, str since
    assert summary.startswith("df: pandas.DataFrame, shape (20, 2)\ncolumns:\n"
                              f"  'city': {text_dtype}\n  'temp': float64\nhead(5):\n")
    assert "Oslo" in summary and summary.count("Rome") == 2  # rows 1 and 3 of the head
    series = summarize("t", frame["temp"])
    assert series.startswith("t: pandas.Series, length 20, dtype float64, name 'temp'")


# -- bounds ---------------------------------------------------------------------------------


def test_a_ten_megabyte_string_is_cut_fast():
    text = "a" * 10_000_000
    summary = summarize("s", text)
    assert summary.startswith("s: str, 10000000 characters\n'aaa")
    assert summary.endswith("'…") and len(summary) < VALUE_CHARS + 50


class _Raises:
    def __repr__(self) -> str:
        raise RuntimeError("secret state")


class _Megabyte:
    def __repr__(self) -> str:
        return "m" * 1_000_000


def test_a_repr_that_raises_or_is_huge():
    raised = summarize("r", _Raises())
    assert raised == ("r: tests.test_kernel_context._Raises\n"
                      "<tests.test_kernel_context._Raises (repr failed: RuntimeError)>")
    assert "secret" not in raised
    huge = summarize("m", _Megabyte())
    assert huge.endswith("… [999800 more characters]") and len(huge) < VALUE_CHARS + 100
    inside = summarize("xs", [_Raises(), _Megabyte()])  # as items of a list, too
    assert "repr failed: RuntimeError" in inside and len(inside) < 3 * VALUE_CHARS


def test_a_recursive_list_ends():
    loop: list = [1]
    loop.append(loop)
    nested: dict = {}
    nested["self"] = nested
    assert summarize("loop", loop) == "loop: list, 2 items\nfirst: 1, [1, [1, [1, [...]]]]"
    assert summarize("d", nested).startswith("d: dict, 1 item\nfirst: 'self': {'self': {")


def test_a_message_is_capped_and_each_variable_too():
    namespace = {f"v{i}": _Megabyte() for i in range(3)}
    wide = {f"{'c' * 300}{n}": "object" for n in range(20)}  # 20 long column names
    namespace.update({f"s{i}": fake_dataframe(wide, 1, "y" * 100_000) for i in range(10)})
    block = context_block(namespace, list(namespace))
    assert len(block) < MESSAGE_CHARS + 2000  # fences and the header on top of the cap
    assert "s3: left out (the context is limited to 32768 characters)" in block
    assert "s9: left out" in block and "v2: tests." in block
    summaries = [part for part in block.split("```") if part.startswith("text\n")]
    assert all(len(part) <= VARIABLE_CHARS + CUT_NOTE for part in summaries)


# -- the context section ---------------------------------------------------------------------


def test_context_block_fences_each_variable_and_splits_back():
    namespace = {"x": 3, "code": "```python\nrm -rf /\n```", "_private": 1}
    block = context_block(namespace, ["x", "code", "x"])
    assert block.startswith(f"{CONTEXT_HEADER} (variables x, code):\n\n```text\nx: int\n3\n```")
    assert block.endswith(CONTEXT_END)
    assert "````text\ncode: str\n'```python" in block  # a longer fence: the text cannot close it
    sent = with_context(block, "What is x?")
    assert split_context(sent) == (block, "What is x?")
    assert split_context("What is x?") == ("", "What is x?")
    assert with_context("", "hi") == "hi" and context_block(namespace, []) == ""


def test_unknown_names_are_refused_listing_what_exists():
    namespace = {"df": 1, "model": 2, "_hidden": 3, "os": os, "In": []}
    with pytest.raises(UnknownVariables) as refused:
        context_block(namespace, ["df", "dff", "nope"], hidden={"In"})
    assert str(refused.value) == ("No variables dff, nope in the kernel; nothing was sent. "
                                  "It has: df, model")
    assert isinstance(refused.value, NameError)
    assert public_names(namespace, hidden={"In"}) == ["df", "model"]


# -- the magic's arguments ---------------------------------------------------------------------


def test_split_with():
    assert magics.split_with("--with df,model k-ctx", anywhere=True) == (["df", "model"],
                                                                         "k-ctx")
    assert magics.split_with("k-ctx --with=df", anywhere=True) == (["df"], "k-ctx")
    assert magics.split_with("--with x", anywhere=True) == (["x"], "")
    assert magics.split_with("--with x,y scribe say  --with   this") == (
        ["x", "y"], "scribe say  --with   this")  # a line's message keeps its text
    assert magics.split_with("scribe explain --with x") == ([], "scribe explain --with x")
    for bad in ("--with", "--with=", "--with ,"):
        with pytest.raises(AgenstraError) as refused:
            magics.split_with(bad, anywhere=True)
        assert refused.value.code == "INVALID_PAYLOAD" and "df,model" in str(refused.value)


# -- the ChatWidget's picker (real server, echo agent) ------------------------------------------


@pytest.fixture(scope="module")
def client(jupyter_server):
    client = jupyter_server.client()
    yield client
    client.close()


def set_state(widget, **state) -> None:
    """A change made in the browser, as its comm delivers it."""
    widget.comm.handle_msg({"content": {"data": {"method": "update", "state": state}},
                            "buffers": []})


def test_widget_attaches_the_chosen_variables_to_the_next_message(client):
    client.create_agent("c-widget", provider="echo")
    namespace = {"x": [1, 2, 3], "name": "Ada", "_private": 0}
    widget = ChatWidget("c-widget", client=client, namespace=namespace)
    assert widget.attach in widget.children and widget.attach.selected_index is None
    assert widget.variables.options == ("name", "x")

    namespace["late"] = {"k": "v"}  # defined after the widget: listed when it is opened
    set_state(widget.attach, selected_index=0)
    assert widget.variables.options == ("late", "name", "x")
    set_state(widget.variables, index=[0, 2])
    assert widget.variables.value == ("late", "x")
    type_and_send(widget, "what are these?")
    answer = wait_for(lambda: len(widget.transcript.children) == 2  # the final answer
                      and "<p>Echo: " in bubbles(widget)[1] and bubbles(widget)[1])
    assert widget.variables.value == ()  # for that message only
    [sent] = [m for m in client.agent("c-widget").messages if m["from"] == "user"]
    assert sent["text"].startswith(f"{CONTEXT_HEADER} (variables late, x):")
    assert "late: dict, 1 item\nfirst: 'k': 'v'" in sent["text"]
    assert "x: list, 3 items\nfirst: 1, 2, 3" in sent["text"]
    assert sent["text"].endswith(f"{CONTEXT_END}\n\nwhat are these?")
    assert "<p>Echo: Context from the kernel (variables late, x):</p>" in answer  # received
    user = bubbles(widget)[0]  # folded under one line, the question below it
    assert '<details class="agenstra-context">' in user
    assert "Context from the kernel (variables late, x)</summary>" in user
    assert user.index("</details>") < user.index("what are these?")

    type_and_send(widget, "and now?")  # nothing chosen: the message alone
    wait_for(lambda: len(widget.transcript.children) == 4)
    assert client.agent("c-widget").messages[-2]["text"] == "and now?"


def test_widget_refuses_a_variable_deleted_after_it_was_chosen(client):
    client.create_agent("c-gone", provider="echo")
    namespace = {"a": 1, "b": 2}
    widget = ChatWidget("c-gone", client=client, namespace=namespace)
    set_state(widget.variables, index=[0, 1])
    del namespace["b"]
    type_and_send(widget, "hello")
    assert "No variable b in the kernel; nothing was sent. It has: a" in widget.error.value
    assert widget.input.value == "hello"  # kept, to send again
    assert widget.variables.options == ("a",) and widget.variables.value == ("a",)
    time.sleep(0.5)
    assert widget.transcript.children == () and client.agent("c-gone").messages == []
    click(widget.send_button)
    wait_for(lambda: len(widget.transcript.children) == 2)
    assert client.agent("c-gone").messages[0]["text"].startswith(
        f"{CONTEXT_HEADER} (variables a):\n\n```text\na: int\n1\n```")


def test_a_plain_message_bubble_has_no_context_fold():
    bubble = bubble_html({"from": "user", "text": f"{CONTEXT_HEADER} is what I want"})
    assert "<details" not in bubble and "is what I want" in bubble


# -- %%agent --with in a notebook run headlessly, recorded and replayed ---------------------


def cell_texts(path: Path) -> list[str]:
    """Each code cell's outputs as the text a reader sees."""
    book = nbformat.read(path, as_version=4)
    texts = []
    for cell in book.cells:
        parts = []
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append((output.get("data") or {}).get("text/plain", ""))
        texts.append("".join(parts))
    return texts


def test_agent_magic_with_sends_the_summaries_and_replays(jupyter_server, client, tmp_path):
    client.create_agent("c-magic", provider="echo")
    notebook = write_notebook(
        tmp_path / "n.ipynb", "%load_ext agenstra_jupyter",
        "x = {'answer': 42, 'letters': list('abc')}",
        "%%agent --with x c-magic\nWhat is x?",
        "%agent --with x,nope c-magic hello",  # refused: nothing sent
        "%agent --with=x c-magic in the line form")
    session = tmp_path / "s.jsonl"
    run = cli("run", notebook, "--record", session, "-o", tmp_path / "a.ipynb",
              *server_args(jupyter_server))
    assert run.returncode == 0, run.stderr
    cells = cell_texts(tmp_path / "a.ipynb")
    assert cells[2].startswith("agenstra: attached the kernel's x\n")
    assert "Echo: Context from the kernel (variables x):" in cells[2]
    assert "x: dict, 2 items" in cells[2] and "'letters': ['a', 'b', 'c']" in cells[2]
    assert "No variable nope in the kernel; nothing was sent. It has: x" in cells[3]
    assert "Echo" not in cells[3]
    assert "Echo: Context from the kernel" in cells[4] and "in the line form" in cells[4]
    agent = client.agent("c-magic")
    wait_for(lambda: len(agent.messages) == 4)  # the run's turns, seen by this client too
    sent = [m["text"] for m in agent.messages if m["from"] == "user"]
    expected = ("Context from the kernel (variables x):\n\n```text\nx: dict, 2 items\n"
                "first: 'answer': 42, 'letters': ['a', 'b', 'c']\n```\n\nEnd of context.\n\n")
    assert sent == [expected + "What is x?", expected + "in the line form"]
    _, turns = read_session(session)
    assert [t["prompt"] for t in turns] == sent  # recorded as sent, context included

    # A strict replay sends the same text again (the summaries are deterministic) …
    replayed = cli("run", notebook, "--replay", session, "-o", tmp_path / "b.ipynb")
    assert replayed.returncode == 0, replayed.stderr
    assert cell_texts(tmp_path / "b.ipynb") == cells
    # … and tells when the kernel's variable is not what it was at the recording.
    book = nbformat.read(notebook, as_version=4)
    book.cells[1].source = "x = {'answer': 43, 'letters': list('abc')}"
    nbformat.write(book, notebook)
    changed = cli("run", notebook, "--replay", session, "-o", tmp_path / "c.ipynb")
    assert changed.returncode == 0, changed.stderr  # %agent shows the failed turn, as a line
    assert "the recording has prompt" in cell_texts(tmp_path / "c.ipynb")[2]


def test_the_sidebars_notebook_context_folds_too():
    sent = ("Context from the notebook a.ipynb (cells 1-2):\n\n```python\nx = 1\n```\n\n"
            "End of context.\n\nwhat does this do?")
    context, text = split_context(sent)
    assert context.startswith("Context from the notebook") and text == "what does this do?"
