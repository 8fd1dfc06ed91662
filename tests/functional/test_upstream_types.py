"""Every inbound API against every upstream type, through the real gateway and the real mock:
the same text and the same usage at the far end, streamed and not."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import anthropic
import openai
import pytest

from tests.conftest import Proc

TYPES = {"openai": "/v1", "azure": "/openai", "anthropic": "/v1", "gemini": "/v1beta"}
PROMPT = [{"role": "user", "content": "tell me something"}]


@pytest.fixture
def typed_gateway(start_gateway, mock_upstream: Proc, tmp_path: Path) -> Proc:  # type: ignore[no-untyped-def]
    """One deployment of each upstream type on the mock, a model `via-TYPE` for each."""
    deployments = "\n".join(
        f"  {kind}: {{type: {kind}, base_url: '{mock_upstream.url}{root}', api_key: sk-up}}"
        for kind, root in TYPES.items()
    )
    models = "\n".join(
        f"  via-{kind}: {{deployments: [{kind}], upstream_model: mock-gpt}}" for kind in TYPES
    )
    path = tmp_path / "types.yaml"
    path.write_text(f"deployments:\n{deployments}\nmodels:\n{models}\n")
    proc: Proc = start_gateway("--config", str(path))
    return proc


async def chat_text(url: str, model: str, stream: bool) -> tuple[str, int]:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused")
    try:
        if not stream:
            answer = await client.chat.completions.create(model=model, messages=PROMPT)  # type: ignore[arg-type]
            assert answer.usage is not None
            return answer.choices[0].message.content or "", answer.usage.completion_tokens
        text, tokens = "", 0
        chunks = await client.chat.completions.create(
            model=model,
            messages=PROMPT,
            stream=True,
            stream_options={"include_usage": True},  # type: ignore[arg-type]
        )
        async for chunk in chunks:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return text, tokens
    finally:
        await client.close()


async def responses_text(url: str, model: str, stream: bool) -> tuple[str, int]:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused")
    try:
        if not stream:
            answer = await client.responses.create(model=model, input="tell me something")
            assert answer.usage is not None
            return answer.output_text, answer.usage.output_tokens
        text, tokens = "", 0
        events = await client.responses.create(model=model, input="tell me something", stream=True)
        async for event in events:
            if event.type == "response.output_text.delta":
                text += event.delta
            elif event.type == "response.completed":
                assert event.response.usage is not None
                tokens = event.response.usage.output_tokens
        return text, tokens
    finally:
        await client.close()


async def messages_text(url: str, model: str, stream: bool) -> tuple[str, int]:
    client = anthropic.AsyncAnthropic(base_url=url, api_key="unused")
    try:
        if not stream:
            message = await client.messages.create(model=model, max_tokens=500, messages=PROMPT)  # type: ignore[arg-type]
            text = "".join(b.text for b in message.content if b.type == "text")
            return text, message.usage.output_tokens
        async with client.messages.stream(model=model, max_tokens=500, messages=PROMPT) as s:  # type: ignore[arg-type]
            text = "".join([piece async for piece in s.text_stream])
            final = await s.get_final_message()
        return text, final.usage.output_tokens
    finally:
        await client.close()


CLIENTS = {"chat": chat_text, "responses": responses_text, "messages": messages_text}


@pytest.mark.parametrize("stream", [False, True])
async def test_every_client_on_every_upstream_type(
    typed_gateway: Proc, mock_upstream: Proc, stream: bool
) -> None:
    """3 inbound APIs x 4 upstream types: identical text and completion tokens everywhere."""
    expected = await chat_text(typed_gateway.url, "via-openai", stream=False)
    assert expected[0] and expected[1] > 0
    seen = {}
    for client, read in CLIENTS.items():
        for kind in TYPES:
            seen[(client, kind)] = await read(typed_gateway.url, f"via-{kind}", stream)
    wrong = {case: got for case, got in seen.items() if got != expected}
    assert wrong == {}, f"expected {expected}"
    async with aiohttp.ClientSession() as session:
        records = await (await session.get(mock_upstream.url + "/_mock/requests")).json()
    paths = {record["path"].split(":")[0] for record in records}
    # Each type was asked in its own API (Gemini's path ends :generateContent or
    # :streamGenerateContent; Azure's names its deployment).
    assert "/v1/messages" in paths and "/v1/chat/completions" in paths
    assert any(p.startswith("/openai/deployments/") for p in paths)
    assert any(p.startswith("/v1beta/models/") for p in paths)
