"""The playground in a real headless Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright

from gateway.mock.answer import expected_text
from gateway.mock.behaviour import MockBehaviour
from gateway.mock.inprocess import DEMO_BEHAVIOUR
from gateway.mock.openai import _usage
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
    """A dropped playground stream resumes by id: the answer exactly once, one upstream call."""
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
    expected = expected_text(body, MockBehaviour(chunks=60, delay=0.05))
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
    """With no config the playground answers with the demo model; a repeat shows a cache hit."""
    gateway: Proc = start_gateway()  # embedded defaults: no config, no key, the demo model
    page = await browser.new_page()
    await page.goto(gateway.url + "/")
    prompt = "Hello, demo."
    await ask(page, "demo", prompt)
    await finished(page)
    body = {"model": "demo", "messages": [{"role": "user", "content": prompt}]}
    assert await page.text_content("#answer") == expected_text(body, DEMO_BEHAVIOUR)
    assert await page.text_content("#cache") == "miss"
    await page.click("#new-chat")  # a new conversation: the same request as the first
    await ask(page, "demo", prompt)  # the same question again: answered from the cache
    await finished(page)
    assert await page.text_content("#cache") == "cache hit"
    assert await page.text_content("#answer") == expected_text(body, DEMO_BEHAVIOUR)
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
    """A browser EventSource resumes a dropped stream with every id in order and stops on a 204."""
    page = await browser.new_page()
    await page.goto(gateway_on_mock.url + "/")
    result = await page.evaluate(EVENT_SOURCE_SCRIPT)
    ids = [int(n) for n in result["ids"]]
    assert ids == list(range(1, len(ids) + 1)) and len(ids) >= 22  # role, 20 words, stop, [DONE]
    assert result["gone"] == 2  # EventSource.CLOSED


async def mock_records(mock_proc: Proc) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(mock_proc.url + "/_mock/requests") as response,
    ):
        return await response.json()  # type: ignore[no-any-return]


async def test_two_turn_conversation_with_settings_and_usage_figures(
    browser: Browser, start_gateway: Any, slow_mock: Proc, tmp_path: Path
) -> None:
    """Both turns are shown, the second request carries the history, system prompt and settings,
    Enter sends while Shift+Enter does not, and token figures come from the reported usage."""
    gateway: Proc = start_gateway("--config", str(write_config(tmp_path, slow_mock.url)))
    page = await browser.new_page()
    await page.goto(gateway.url + "/")
    await page.fill("#system", "Answer briefly.")
    await page.fill("#max-tokens", "200")
    await page.fill("#temperature", "0.3")
    await ask(page, "mock-gpt", "First question")
    await finished(page)
    first_answer = await page.text_content("#answer")
    await page.click("#prompt")
    await page.keyboard.type("Second")
    await page.keyboard.press("Shift+Enter")  # a new line, not a send
    await page.keyboard.type("question")
    assert await page.input_value("#prompt") == "Second\nquestion"
    assert await page.locator(".message").count() == 2
    await page.keyboard.press("Enter")
    await page.wait_for_function("document.body.dataset.state === 'streaming'")
    await finished(page)
    roles = await page.eval_on_selector_all(".message", "ms => ms.map(m => m.classList[1])")
    assert roles == ["user", "assistant", "user", "assistant"]
    shown = await page.eval_on_selector_all(
        ".message.user .content", "ms => ms.map(m => m.textContent)"
    )
    assert shown == ["First question", "Second\nquestion"]
    _, second = (r for r in await mock_records(slow_mock) if r["path"].endswith("/completions"))
    assert second["body"]["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": first_answer},
        {"role": "user", "content": "Second\nquestion"},
    ]
    assert second["body"]["temperature"] == 0.3 and second["body"]["max_tokens"] == 200
    assert await page.text_content("#answer") == expected_text(
        second["body"], MockBehaviour(chunks=60, delay=0.05)
    )
    usage = _usage(second["body"], second["completion_tokens_sent"])
    assert await page.text_content("#tokens") == (
        f"{usage['prompt_tokens']} / {usage['completion_tokens']}"
    )
    # 60 tokens 50 ms apart: about 20 a second, measured from the usage, not by counting chunks.
    assert 12 < float(await page.text_content("#tps") or 0) < 25
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "playground-conversation.png"), full_page=True)


MARKDOWN = """## Streaming **gateways**

Use `relay_stream()` (or snake_case_names) and read
[the docs](https://example.com/docs) or [this](javascript:alert(1)).

1. first
2. second

- apples
- pears

| setting | default |
| --- | --- |
| workers | 1 |

```python
print("<b>hi</b>")
```

<img src=x onerror="window.__owned = 1"> <script>window.__owned = 2</script>"""


async def test_markdown_is_rendered_and_raw_html_stays_text(
    browser: Browser, start_gateway: Any, slow_mock: Proc, tmp_path: Path
) -> None:
    """Headings, lists, tables, code and links render; the model's HTML never becomes elements."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            slow_mock.url + "/_mock/behaviour", json={"defaults": {"reply": MARKDOWN, "delay": 0}}
        ) as response,
    ):
        assert response.status == 200
    gateway: Proc = start_gateway("--config", str(write_config(tmp_path, slow_mock.url)))
    context = await browser.new_context(permissions=["clipboard-read", "clipboard-write"])
    page = await context.new_page()
    await page.goto(gateway.url + "/")
    await ask(page, "mock-gpt", "Show me markdown")
    await finished(page)
    answer = page.locator("#answer")
    assert await answer.locator("h2").text_content() == "Streaming gateways"
    assert await answer.locator("h2 strong").text_content() == "gateways"
    assert await answer.locator("p code").first.text_content() == "relay_stream()"
    assert await answer.locator("ol li").all_text_contents() == ["first", "second"]
    assert await answer.locator("ul li").all_text_contents() == ["apples", "pears"]
    assert await answer.locator("th").all_text_contents() == ["setting", "default"]
    assert await answer.locator("td").all_text_contents() == ["workers", "1"]
    assert await answer.locator("pre code").text_content() == 'print("<b>hi</b>")'
    links = await answer.locator("a").evaluate_all("as => as.map(a => a.href)")
    assert links == ["https://example.com/docs"]  # the javascript: link stays text
    assert await answer.locator("img, script, b").count() == 0
    assert await answer.locator("strong").count() == 1 and await answer.locator("em").count() == 0
    assert "<img src=x" in (await answer.text_content() or "")
    assert await page.evaluate("window.__owned") is None
    await answer.locator(".code-block .copy").click()
    assert await page.evaluate("navigator.clipboard.readText()") == 'print("<b>hi</b>")'
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "playground-markdown.png"), full_page=True)
    await context.close()


async def test_stop_ends_the_answer_and_the_upstream_request(
    browser: Browser, start_gateway: Any, slow_mock: Proc, tmp_path: Path
) -> None:
    """Stop mid-answer keeps what arrived, says Stopped, and the upstream sees the disconnect."""
    gateway: Proc = start_gateway("--config", str(write_config(tmp_path, slow_mock.url)))
    page = await browser.new_page()
    await page.goto(gateway.url + "/")
    await ask(page, "mock-gpt", "A long story, please.")
    await page.wait_for_function("document.querySelector('#answer').textContent.length > 20")
    await page.click("#stop")
    await finished(page)
    assert await page.text_content("#status") == "Stopped."
    partial = await page.text_content("#answer") or ""
    body = {"model": "mock-gpt", "messages": [{"role": "user", "content": "A long story, please."}]}
    full = expected_text(body, MockBehaviour(chunks=60, delay=0.05))
    assert partial and full.startswith(partial) and len(partial) < len(full)
    assert await page.is_enabled("#send") and not await page.is_enabled("#stop")
    for _ in range(50):
        records = await mock_records(slow_mock)
        if records[-1]["outcome"] != "in_flight":
            break
        await page.wait_for_timeout(100)
    assert records[-1]["outcome"] == "disconnected"


async def test_key_reloads_models_and_no_model_is_explained(
    browser: Browser, start_gateway: Any, keyed_env: dict[str, str]
) -> None:
    """A gateway that needs a key says so; entering the key loads the models it may use."""
    from tests.conftest import create_key

    _, key = create_key(keyed_env)
    gateway: Proc = start_gateway(env=keyed_env)
    page = await browser.new_page()
    await page.goto(gateway.url + "/")
    await page.wait_for_function("document.querySelector('#status').textContent.includes('key')")
    assert await page.text_content("#status") == "This gateway needs an API key: enter one above."
    assert await page.locator("#model option").count() == 0 and not await page.is_enabled("#send")
    await page.fill("#key", key)
    await page.wait_for_function("document.querySelector('#model option[value=\"demo\"]')")
    assert await page.is_enabled("#send")
    await page.fill("#prompt", "Snippet question")
    await page.click("#show-code summary")  # the current request as curl and openai SDK code
    curl = await page.text_content("#code-curl") or ""
    python = await page.text_content("#code-python") or ""
    assert f"{gateway.url}/v1/chat/completions" in curl and '"model": "demo"' in curl
    assert '"content": "Snippet question"' in curl and "$LLM_GATEWAY_KEY" in curl
    assert 'model="demo"' in python and f'base_url="{gateway.url}/v1"' in python
    assert key not in curl + python  # the key is never put into copied code


async def test_a_gateway_listing_no_model_says_so(browser: Browser, start_gateway: Any) -> None:
    """Behind an --upstream that lists no model (here: not reachable), the page explains the
    empty list."""
    gateway: Proc = start_gateway("--upstream", f"http://127.0.0.1:{free_port()}/v1")
    page = await browser.new_page()
    await page.goto(gateway.url + "/")
    await page.wait_for_function("document.querySelector('#status').textContent.startsWith('No')")
    assert await page.text_content("#status") == (
        "No model is listed by this gateway: it may pass any model name through, "
        "so use the API directly (see Show code)."
    )
    assert not await page.is_enabled("#send")
