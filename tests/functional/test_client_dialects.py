"""The Responses API and Anthropic Messages through the real gateway, with the official SDKs as
clients, over the same pipeline as chat (keys, cache, accounting)."""

from __future__ import annotations

import anthropic
import openai

from tests.conftest import Proc

PROMPT = "tell me something"


async def test_openai_responses_stream_and_json(gateway_on_mock: Proc) -> None:
    """`responses.create` with and without stream gets the same text as chat does."""
    client = openai.AsyncOpenAI(base_url=gateway_on_mock.url + "/v1", api_key="unused")
    chat = await client.chat.completions.create(
        model="mock-gpt", messages=[{"role": "user", "content": PROMPT}]
    )
    expected = chat.choices[0].message.content
    answer = await client.responses.create(model="mock-gpt", input=PROMPT, store=False)
    assert answer.output_text == expected
    assert answer.usage is not None and answer.usage.output_tokens > 0
    text, kinds = "", []
    stream = await client.responses.create(model="mock-gpt", input=PROMPT, store=False, stream=True)
    async for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
    assert text == expected
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    await client.close()


async def test_anthropic_messages_create_stream_and_count(gateway_on_mock: Proc) -> None:
    """`messages.create`, `messages.stream` and `count_tokens` work unchanged on the gateway."""
    client = anthropic.AsyncAnthropic(base_url=gateway_on_mock.url, api_key="unused")
    message = await client.messages.create(
        model="mock-gpt", max_tokens=200, messages=[{"role": "user", "content": PROMPT}]
    )
    text = "".join(block.text for block in message.content if block.type == "text")
    assert text and message.stop_reason == "end_turn"
    assert message.usage.output_tokens > 0
    async with client.messages.stream(
        model="mock-gpt", max_tokens=200, messages=[{"role": "user", "content": PROMPT}]
    ) as stream:
        streamed = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert streamed == text and final.usage.output_tokens == message.usage.output_tokens
    counted = await client.messages.count_tokens(
        model="mock-gpt", messages=[{"role": "user", "content": PROMPT}]
    )
    assert counted.input_tokens > 0
    await client.close()


async def test_errors_come_in_the_clients_dialect(gateway_on_mock: Proc) -> None:
    """An unknown model is a 404 the Anthropic SDK raises as NotFoundError with its message."""
    client = anthropic.AsyncAnthropic(base_url=gateway_on_mock.url, api_key="unused")
    try:
        await client.messages.create(
            model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    except anthropic.NotFoundError as exc:
        assert "no-such-model" in str(exc)
        assert exc.body["type"] == "error"  # type: ignore[index]
    else:
        raise AssertionError("no error")
    finally:
        await client.close()
