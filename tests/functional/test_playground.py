"""The playground in a real headless Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright

from gateway import mock
from gateway.providers.inprocess import DEMO_BEHAVIOUR
from tests.conftest import ROOT, Proc, free_port, gateway_command, start_process, write_config

ARTIFACTS = ROOT / "var" / "artifacts"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = shutil.which("chromium")
    assert executable, "chromium is missing: run bin/ensure-test-tools (make test does)"
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-gpu"]
        )
        yield launched
        await launched.close()


@pytest.fixture
def slow_mock(tmp_path: Path) -> Any:
    """A mock upstream whose answers take about 3 s: 60 chunks, 50 ms apart."""
    port = free_port()
    args = gateway_command(
        "mock-upstream", "--port", str(port), "--chunks", "60", "--delay", "0.05"
    )
    proc = start_process(args, port, tmp_path / "slow-mock.log")
    yield proc
    proc.stop()


async def ask(page: Page, model: str, prompt: str) -> None:
    await page.wait_for_function(f"document.querySelector('#model option[value=\"{model}\"]')")
    await page.select_option("#model", model)
    await page.fill("#prompt", prompt)
    await page.click("#send")


async def finished(page: Page) -> None:
    await page.wait_for_function("document.body.dataset.state === 'idle'", timeout=30_000)


async def test_dropped_connection_resumes_with_no_gap_and_no_repeat(
    browser: Browser, start_gateway: Any, slow_mock: Proc, tmp_path: Path
) -> None:
    gateway: Proc = start_gateway("--config", str(write_config(tmp_path, slow_mock.url)))
    page = await browser.new_page()
    await page.goto(gateway.url + "/")
    prompt = "Tell me a story about resumable streams."
    await ask(page, "mock-gpt", prompt)
    await page.wait_for_function("document.querySelector('#answer').textContent.length > 40")
    await page.click("#drop")  # mid-answer: the fetch is aborted, then resumed by id
    await finished(page)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "playground-resumed.png"), full_page=True)

    body = {"model": "mock-gpt", "messages": [{"role": "user", "content": prompt}]}
    expected = mock.expected_text(body, mock.MockBehaviour(chunks=60, delay=0.05))
    assert await page.text_content("#answer") == expected  # the whole answer, exactly once
    assert await page.text_content("#resumes") == "1"
    assert await page.text_content("#status") == "Done."
    assert (await page.text_content("#ttft") or "").endswith(" ms")
    async with (
        aiohttp.ClientSession() as session,
        session.get(slow_mock.url + "/_mock/requests") as response,
    ):
        records = await response.json()
    assert [r["outcome"] for r in records] == ["completed"]  # one upstream call, not restarted


async def test_demo_model_out_of_the_box_with_a_cache_hit_badge(
    browser: Browser, start_gateway: Any
) -> None:
    gateway: Proc = start_gateway()  # embedded defaults: no config, no key, the demo model
    page = await browser.new_page()
    await page.goto(gateway.url + "/")
    prompt = "Hello, demo."
    await ask(page, "demo", prompt)
    await finished(page)
    body = {"model": "demo", "messages": [{"role": "user", "content": prompt}]}
    assert await page.text_content("#answer") == mock.expected_text(body, DEMO_BEHAVIOUR)
    assert await page.text_content("#cache") == "miss"
    await ask(page, "demo", prompt)  # the same question again: answered from the cache
    await finished(page)
    assert await page.text_content("#cache") == "cache hit"
    assert await page.text_content("#answer") == mock.expected_text(body, DEMO_BEHAVIOUR)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "playground-demo.png"), full_page=True)


EVENT_SOURCE_SCRIPT = """async () => {
  const started = await fetch('/v1/chat/completions', {
    method: 'POST',
    headers: {'Content-Type': 'application/json', 'X-Gateway-Resumable': 'true'},
    body: JSON.stringify({model: 'mock-gpt', stream: true, mock: {chunks: 20, delay: 0.03},
                          messages: [{role: 'user', content: 'event source'}]}),
  });
  const id = started.headers.get('X-Gateway-Stream-Id');
  const reader = started.body.getReader();
  await reader.read();
  await reader.cancel();  // the first connection is dropped after its first bytes
  const ids = await new Promise((resolve, reject) => {
    const seen = [];
    const source = new EventSource(`/v1/streams/${id}?after=0`);
    source.onmessage = (event) => {
      seen.push(event.lastEventId);
      if (event.data === '[DONE]') { source.close(); resolve(seen); }
    };
    setTimeout(() => reject(new Error('no [DONE] within 10 s')), 10000);
  });
  const gone = await new Promise((resolve) => {
    const source = new EventSource('/v1/streams/strm_unknown');
    source.onerror = () => resolve(source.readyState);  // 204: CLOSED, no reconnection
  });
  return {ids, gone};
}"""


async def test_event_source_resumes_a_stream_and_stops_on_204(
    browser: Browser, gateway_on_mock: Proc
) -> None:
    page = await browser.new_page()
    await page.goto(gateway_on_mock.url + "/")
    result = await page.evaluate(EVENT_SOURCE_SCRIPT)
    ids = [int(n) for n in result["ids"]]
    assert ids == list(range(1, len(ids) + 1)) and len(ids) >= 22  # role, 20 words, stop, [DONE]
    assert result["gone"] == 2  # EventSource.CLOSED
