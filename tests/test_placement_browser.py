"""The sidebar's create form over several managers: each host's state, "automatic"
placement by a label, a down host shown but not offered (JupyterLab in headless Chromium)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from .browser import (
    PANEL,
    lab_env,
    lab_page,
    open_agent_form,
    open_panel,
    send,
    snap,
    wait_answer,
    wait_selected,
)
from .browser import jp_asyncio_loop as jp_asyncio_loop  # a fixture
from .browser import jp_server_cleanup as jp_server_cleanup  # a fixture
from .conftest import JupyterProcess, start_jupyter, stop_jupyter

pytestmark = pytest.mark.timeout(300)
FORM = f"{PANEL} form.jp-AgenstraChat-create"


@pytest.fixture
def lab(tmp_path) -> Iterator[JupyterProcess]:
    # Health rechecked often, set as an operator would: by its environment variable.
    server = start_jupyter(tmp_path, {**lab_env(tmp_path),
                                      "AGENSTRA_HEALTH_CACHE_SECONDS": "0.3"})
    yield server
    stop_jupyter(server)


def register(lab: JupyterProcess, manager, **extra) -> dict:
    response = httpx.post(f"{lab.full_url}agenstra/api/clients",
                          headers={"Authorization": f"token {lab.token}"},
                          json={"name": manager.data_dir.name, "endpoint": manager.url,
                                "apiKey": manager.api_key, **extra})
    assert response.status_code == 201, response.text
    return response.json()


def host_options(page) -> dict[str, bool]:
    """The Host select's options: label -> whether it can be chosen."""
    return page.eval_on_selector(
        f"{FORM} select[aria-label=Host]",
        "s => Object.fromEntries([...s.options].map(o => [o.textContent, !o.disabled]))")


def test_the_form_shows_each_host_and_places_by_label(browser, lab, start_manager, request):
    alpha, dead = start_manager("alpha"), start_manager("dead")
    register(lab, alpha, labels=["gpu"], capacity=1)
    register(lab, dead)
    dead.kill()
    with lab_page(browser, lab, request.node.name) as page:
        open_panel(page)
        wait_selected(page, "assistant")
        open_agent_form(page)
        page.wait_for_function(
            f"() => [...document.querySelector(\"{FORM} select[aria-label=Host]\").options]"
            ".some(o => o.textContent.startsWith('dead (down'))")
        assert host_options(page) == {
            "automatic (the least busy host)": True,
            'automatic, label "gpu"': True,
            "local (up, 1 agent)": True,
            "alpha (up, 0 of 1 agents)": True,
            "dead (down: Manager unreachable)": False,
        }
        page.fill(f"{FORM} input[aria-label='Agent name']", "placed")
        page.select_option(f"{FORM} select[aria-label=Provider]", "echo")
        page.select_option(f"{FORM} select[aria-label=Host]", label='automatic, label "gpu"')
        snap(page, "create-form-hosts")
        page.click(f"{FORM} button:has-text('Create')")

        # It went to the host carrying the label, which the sidebar now shows, selected.
        wait_selected(page, "placed")
        manager = page.eval_on_selector(f"{PANEL} select[aria-label=Manager]",
                                        "s => s.selectedOptions[0].textContent")
        assert manager == "alpha"
        send(page, "placed by label")
        wait_answer(page, "placed by label")

        # Full now: neither alpha nor its label is offered.
        open_agent_form(page)
        page.wait_for_function(
            f"() => [...document.querySelector(\"{FORM} select[aria-label=Host]\").options]"
            ".some(o => o.textContent.includes('(full)'))")
        options = host_options(page)
        assert options["alpha (up, 1 of 1 agents (full))"] is False
        assert options['automatic, label "gpu"'] is False
        chosen = page.eval_on_selector(f"{FORM} select[aria-label=Host]",
                                       "s => s.selectedOptions[0].textContent")
        assert chosen == "automatic (the least busy host)"  # not the selected, full one
        snap(page, "create-form-hosts-full")
