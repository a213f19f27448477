"""The ChatWidget's approval card in a notebook in JupyterLab, in headless Chromium.

An ACP agent (the SDK fake) asks before it writes a file: the card shows the request and
its diff, a click on Allow answers it, and the card becomes one line. Screenshots land in
test-artifacts/labextension/widget-approval-*.png.
"""

from __future__ import annotations

import re

import pytest

from .browser import CONTRAST_JS, use_dark_theme
from .fakes import ACP_AGENT_COMMAND
from .test_widget_browser import (  # noqa: F401  (fixtures)
    OUTPUT,
    jp_asyncio_loop,
    jp_server_cleanup,
    lab,
    send,
    shot,
    widget_page,
)

pytestmark = pytest.mark.timeout(300)

CARD = f"{OUTPUT} .agenstra-permission"


def test_clicking_allow_on_the_card_lets_the_agent_write(browser, lab, request):  # noqa: F811
    client = lab.client()
    try:
        client.create_agent("asker", provider="acp", config={"command": ACP_AGENT_COMMAND})
        agent_id = client.agent("asker").id
    finally:
        client.close()
    written = lab.data_dir / "local-manager" / "workspaces" / agent_id / "approved.txt"
    with widget_page(browser, lab, request.node.name, "asker") as page:
        send(page, "approve")
        card = page.locator(CARD)
        card.wait_for(timeout=60_000)
        text = card.inner_text()
        assert "Write approved.txt" in text and "(edit)" in text
        assert "+approved content" in text and "-old content" in text
        buttons = card.locator("button")
        assert buttons.all_inner_texts() == ["Allow", "Always", "Reject", "Never"]
        assert not written.exists()
        shot(page, "widget-approval-card")
        added, removed = f"{CARD} div[style*='46,160,67']", f"{CARD} div[style*='248,81,73']"
        for theme in ("light", "dark"):
            if theme == "dark":
                use_dark_theme(page)
                shot(page, "widget-approval-card-dark")
            ratios = page.evaluate(CONTRAST_JS, [added, removed])
            assert min(ratios.values()) >= 4.5, f"diff below WCAG AA ({theme}): {ratios}"

        card.locator("button", has_text=re.compile("^Allow$")).click()
        page.locator(OUTPUT, has_text="approve: yes file=written").wait_for(timeout=60_000)
        assert written.read_text() == "approved content\n"
        assert page.locator(CARD).count() == 0  # the answer lists it: one line
        assert re.search(r"Allowed by .+: Write approved\.txt",
                         page.locator(OUTPUT).first.inner_text())
        shot(page, "widget-approval-answered")
