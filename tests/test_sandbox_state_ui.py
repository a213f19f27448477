"""The real sandbox state, as the sidebar, the create form and the ChatWidget show it.

A Jupyter server whose manager runs with AGENSTRA_SANDBOX=none (agents unsandboxed): the
sidebar keeps a warning strip, the form labels the process runtime "NOT sandboxed", the
ChatWidget shows the same warning. Screenshots land in test-artifacts/labextension/.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agenstra_jupyter.widgets import UNSANDBOXED, ChatWidget, sandbox_notice_html

from .browser import (
    CONTRAST_JS,
    PANEL,
    lab_env,
    lab_page,
    open_agent_form,
    open_panel,
    rest,
    snap,
    use_dark_theme,
    wait_selected,
    write_widget_notebook,
)
from .browser import jp_asyncio_loop as jp_asyncio_loop  # a fixture
from .browser import jp_server_cleanup as jp_server_cleanup  # a fixture
from .conftest import JupyterProcess, start_jupyter, stop_jupyter

STRIP = f"{PANEL} .jp-AgenstraChat-sandbox"
INSTALL = ("Agents cannot run: no working sandbox on this host (bubblewrap is not installed). "
           "Install it with `apt-get install bubblewrap slirp4netns`")

pytestmark = pytest.mark.timeout(300)


def catalog(**process) -> dict:
    return {"providers": [], "runtimes": [
        {"name": "process", "available": True, "default": True, **process},
        {"name": "docker", "available": True, "default": False, "sandbox": "container"},
    ]}


# -- the ChatWidget's line, from a catalogue ---------------------------------------------


def test_notice_html_follows_the_agents_runtime():
    assert sandbox_notice_html(catalog(sandbox="bwrap"), "process") == ""
    assert sandbox_notice_html(catalog(sandbox="none"), "docker") == ""
    assert sandbox_notice_html({}, None) == ""  # an older manager says nothing about it
    warning = sandbox_notice_html(catalog(sandbox="none"), None)  # None: the default runtime
    assert UNSANDBOXED in warning and 'data-level="warning"' in warning
    error = sandbox_notice_html(catalog(sandbox="missing", available=False, problem=INSTALL),
                                "process")
    assert 'data-level="error"' in error and "bubblewrap is not installed" in error
    assert "<code>apt-get install bubblewrap slirp4netns</code>" in error
    hostile = sandbox_notice_html(catalog(sandbox="missing", problem="<img src=x onerror=1>"),
                                  "process")
    assert "<img" not in hostile and "&lt;img" in hostile


# -- a server whose agents are not sandboxed ---------------------------------------------


@pytest.fixture(scope="module")
def unsandboxed(tmp_path_factory) -> Iterator[JupyterProcess]:
    root = tmp_path_factory.mktemp("unsandboxed")
    server = start_jupyter(root, {**lab_env(root), "AGENSTRA_SANDBOX": "none"})
    yield server
    stop_jupyter(server)


def test_providers_and_widget_say_agents_run_unsandboxed(unsandboxed):
    runtimes = rest(unsandboxed, "agenstra/api/clients/local/providers")["runtimes"]
    process = next(r for r in runtimes if r["name"] == "process")
    assert process["sandbox"] == "none" and process["available"]
    client = unsandboxed.client()
    try:
        widget = ChatWidget("assistant", client=client)
        assert UNSANDBOXED in widget.sandbox.value
    finally:
        client.close()


def test_sidebar_strip_and_create_form(browser, unsandboxed, request):
    with lab_page(browser, unsandboxed, request.node.name) as page:
        open_panel(page)
        wait_selected(page, "assistant")
        strip = page.locator(STRIP)
        strip.wait_for()
        assert strip.inner_text().strip() == UNSANDBOXED
        assert strip.get_attribute("data-level") == "warning"
        ratio = page.evaluate(CONTRAST_JS, [STRIP])[STRIP]
        assert ratio >= 4.5, f"the strip's text contrast is {ratio:.2f}"

        open_agent_form(page)
        runtime = page.locator(f"{PANEL} select[aria-label=Runtime]")
        labels = runtime.locator("option").all_inner_texts()
        assert "process — NOT sandboxed" in labels
        for info in rest(unsandboxed, "agenstra/api/clients/local/providers")["runtimes"]:
            option = runtime.locator(f"option[value={info['name']}]")
            assert option.is_disabled() is not info["available"]  # listed, maybe disabled
        page.wait_for_selector(f"{PANEL} input[aria-label='Loopback ports']")
        assert "never this host" in page.locator(f"{PANEL} form").inner_text()
        snap(page, "sandbox-none")

        # The network fields go into the config; what the JSON field sets wins.
        page.fill(f"{PANEL} input[aria-label='Agent name']", "netted")
        page.select_option(f"{PANEL} select[aria-label=Provider]", "echo")
        page.select_option(f"{PANEL} select[aria-label=Network]", "egress")
        page.fill(f"{PANEL} input[aria-label='Loopback ports']", "11434, 8080")
        page.fill(f"{PANEL} textarea[aria-label=Config]", '{"loopbackPorts": [9000]}')
        page.click(f"{PANEL} button:has-text('Create')")
        wait_selected(page, "netted")
        agents = rest(unsandboxed, "agenstra/api/clients/local/agents")
        config = next(a for a in agents if a["name"] == "netted")["config"]
        assert config == {"network": "egress", "loopbackPorts": [9000]}
        assert strip.is_visible()  # persistent: still there for the new agent

        use_dark_theme(page)
        ratio = page.evaluate(CONTRAST_JS, [STRIP])[STRIP]
        assert ratio >= 4.5, f"the strip's text contrast in the dark theme is {ratio:.2f}"
        snap(page, "sandbox-none-dark")


def test_form_bad_ports_are_explained(browser, unsandboxed, request):
    with lab_page(browser, unsandboxed, request.node.name) as page:
        open_panel(page)
        open_agent_form(page)
        page.fill(f"{PANEL} input[aria-label='Agent name']", "badports")
        page.fill(f"{PANEL} input[aria-label='Loopback ports']", "11434, ollama")
        page.click(f"{PANEL} button:has-text('Create')")
        error = page.locator(f"{PANEL} .jp-AgenstraChat-formError")
        assert error.inner_text().startswith("Loopback ports")


def test_notebook_widget_shows_the_warning(browser, unsandboxed, request):
    write_widget_notebook(Path(unsandboxed.data_dir).parent, "sandbox", "assistant")
    with lab_page(browser, unsandboxed, request.node.name) as page:
        page.goto(f"{unsandboxed.full_url}lab/tree/sandbox.ipynb")
        page.wait_for_selector(".jp-Notebook .jp-Cell")
        page.locator(".jp-StatusBar-TextItem", has_text="| Idle").wait_for(timeout=60_000)
        page.locator(".jp-Notebook .jp-Cell").first.click()
        page.keyboard.press("Shift+Enter")
        line = page.locator(".jp-OutputArea [data-level=warning]")
        line.wait_for(timeout=60_000)
        assert line.inner_text().strip() == f"⚠ {UNSANDBOXED}"
        selector = ".jp-OutputArea [data-level=warning]"
        ratio = page.evaluate(CONTRAST_JS, [selector])[selector]
        assert ratio >= 4.5, f"the widget's warning contrast is {ratio:.2f}"
        page.locator(".jp-OutputArea").first.screenshot(
            path=str(Path(__file__).resolve().parent.parent / "test-artifacts" / "labextension"
                     / "sandbox-none-widget.png"))
