"""Every client dialect x every upstream type, stream and not, text and tools, through the SDKs.

The official SDKs (openai chat and Responses, anthropic) talk to tests/translator.py, a fake gateway
made of the translators alone, in front of the real mock process answering in each provider's
dialect. The far end must get the mock's exact text, the exact tool call and the same usage.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from gateway.mock.answer import expected_text, plan
from gateway.mock.behaviour import DEFAULT_BEHAVIOUR
from tests.conftest import Proc, free_port, gateway_command, start_process
from tests.translator import ROOTS, translator

QUESTION = "what is the weather like in lisbon today"
MODEL = "mock-gpt"
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
}
CANONICAL = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}]}
PROMPT_TOKENS = len(QUESTION.split())
COMPLETION_TOKENS = DEFAULT_BEHAVIOUR.chunks


@dataclass
class Result:
    """What a client ended up with."""

    text: str
    call: tuple[str, Any] | None  # (function name, parsed arguments)
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


def expected_call() -> tuple[str, Any]:
    """The tool call the mock makes for the question."""
    chat_tool = {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}
    choice = plan({**CANONICAL, "tools": [chat_tool]}, COMPLETION_TOKENS, 1)[0]
    assert choice.tool is not None
    return choice.tool.name, json.loads(choice.tool.arguments)


async def set_behaviour(proc: Proc, behaviour: dict[str, Any]) -> None:
    """Change how the mock answers from now on (``{}`` restores its start-up behaviour)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(proc.url + "/_mock/behaviour", json=behaviour) as answer,
    ):
        assert answer.status == 200


@pytest.fixture(scope="module")
def real_gateways(
    shared_mock: Proc, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """A real `llm-gateway serve` per upstream type, each routing `mock-gpt` to a deployment of
    that type on the shared mock."""
    started: list[Proc] = []
    urls: dict[str, str] = {}
    directory = tmp_path_factory.mktemp("gateways")
    for kind, root in ROOTS.items():
        config = directory / f"{kind}.yaml"
        config.write_text(
            f"deployments:\n  up: {{type: {kind}, base_url: '{shared_mock.url}{root}', "
            f"api_key: sk-up}}\nmodels:\n  {MODEL}: {{deployments: [up]}}\n"
        )
        port = free_port()
        proc = start_process(
            gateway_command("serve", "--port", str(port), "--config", str(config)),
            port,
            directory / f"{kind}.log",
            {"LLM_GATEWAY_STORE__PATH": str(directory / f"{kind}.sqlite3")},
        )
        started.append(proc)
        urls[kind] = proc.url
    yield urls
    for proc in started:
        proc.stop()


@pytest.fixture(params=["translator", "gateway"])
async def gateway(
    request: pytest.FixtureRequest, shared_mock: Proc, real_gateways: dict[str, str]
) -> AsyncIterator[Callable[[str], str]]:
    """Where to ask, per upstream type: the translating fake gateway (the translators alone) or
    the real gateway (the stream engine with the translators in it)."""
    if request.param == "gateway":
        yield real_gateways.__getitem__
    else:
        async with translator(shared_mock.url) as url:
            yield lambda upstream: url
    await set_behaviour(shared_mock, {})


async def via_chat(client: Any, stream: bool, tools: bool) -> Result:
    extra: dict[str, Any] = {}
    if tools:
        function = {"name": "get_weather", "description": "weather", "parameters": SCHEMA}
        extra["tools"] = [{"type": "function", "function": function}]
    messages: Any = [{"role": "user", "content": QUESTION}]
    if not stream:
        answer = await client.chat.completions.create(model=MODEL, messages=messages, **extra)
        message = answer.choices[0].message
        calls = message.tool_calls or []
        call = (calls[0].function.name, json.loads(calls[0].function.arguments)) if calls else None
        usage = answer.usage
        assert usage is not None
        details = usage.prompt_tokens_details
        cached = details.cached_tokens or 0 if details else 0
        return Result(
            message.content or "", call, usage.prompt_tokens, usage.completion_tokens, cached
        )
    chunks = await client.chat.completions.create(
        model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}, **extra
    )
    text, name, arguments, last = "", "", "", None
    async for chunk in chunks:
        if chunk.usage is not None:
            last = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for delta in choice.delta.tool_calls or ():
                assert delta.function is not None
                name += delta.function.name or ""
                arguments += delta.function.arguments or ""
    assert last is not None
    details = last.prompt_tokens_details
    cached = details.cached_tokens or 0 if details else 0
    call = (name, json.loads(arguments)) if name else None
    return Result(text, call, last.prompt_tokens, last.completion_tokens, cached)


async def via_responses(client: Any, stream: bool, tools: bool) -> Result:
    extra: dict[str, Any] = {}
    if tools:
        extra["tools"] = [
            {"type": "function", "name": "get_weather", "parameters": SCHEMA, "strict": False}
        ]
    if stream:
        async with client.responses.stream(model=MODEL, input=QUESTION, **extra) as events:
            async for _ in events:
                pass
            response = await events.get_final_response()
    else:
        response = await client.responses.create(model=MODEL, input=QUESTION, **extra)
    assert response.status == "completed"
    calls = [item for item in response.output if item.type == "function_call"]
    call = (calls[0].name, json.loads(calls[0].arguments)) if calls else None
    usage = response.usage
    assert usage is not None
    return Result(
        response.output_text,
        call,
        usage.input_tokens,
        usage.output_tokens,
        usage.input_tokens_details.cached_tokens,
    )


async def via_messages(client: Any, stream: bool, tools: bool) -> Result:
    extra: dict[str, Any] = {}
    if tools:
        extra["tools"] = [{"name": "get_weather", "description": "w", "input_schema": SCHEMA}]
    messages: Any = [{"role": "user", "content": QUESTION}]
    if stream:
        async with client.messages.stream(
            model=MODEL, max_tokens=1000, messages=messages, **extra
        ) as events:
            message = await events.get_final_message()
    else:
        message = await client.messages.create(
            model=MODEL, max_tokens=1000, messages=messages, **extra
        )
    text = "".join(block.text for block in message.content if block.type == "text")
    uses = [block for block in message.content if block.type == "tool_use"]
    call = (uses[0].name, uses[0].input) if uses else None
    assert message.stop_reason == ("tool_use" if tools else "end_turn")
    usage = message.usage
    cached = usage.cache_read_input_tokens or 0
    return Result(text, call, usage.input_tokens + cached, usage.output_tokens, cached)


CLIENTS = {"chat": via_chat, "responses": via_responses, "messages": via_messages}


async def ask(
    gateway: Callable[[str], str], client: str, upstream: str, stream: bool, tools: bool
) -> Result:
    """Ask the question with the client's SDK, routed to ``upstream``."""
    url = gateway(upstream)
    headers = {"X-Upstream-Type": upstream}
    sdk: Any
    if client == "messages":
        sdk = anthropic.AsyncAnthropic(
            base_url=url, api_key="k", default_headers=headers, max_retries=0
        )
    else:
        sdk = openai.AsyncOpenAI(
            base_url=url + "/v1", api_key="k", default_headers=headers, max_retries=0
        )
    async with sdk:
        return await CLIENTS[client](sdk, stream, tools)


UPSTREAMS = ("openai", "azure", "anthropic", "gemini")


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("client", sorted(CLIENTS))
async def test_text_arrives_whole(
    gateway: Callable[[str], str], client: str, upstream: str, stream: bool
) -> None:
    """The mock's exact text and usage reach every client through every upstream type."""
    result = await ask(gateway, client, upstream, stream, False)
    assert result.text == expected_text(CANONICAL)
    assert result.call is None
    assert (result.prompt_tokens, result.completion_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("client", sorted(CLIENTS))
async def test_tool_call_arrives_whole(
    gateway: Callable[[str], str], client: str, upstream: str, stream: bool
) -> None:
    """A tool call (name and JSON arguments, streamed in pieces) survives every translation."""
    result = await ask(gateway, client, upstream, stream, True)
    assert result.call == expected_call()
    assert result.text == ""


@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("client", sorted(CLIENTS))
async def test_cached_tokens_reported(
    gateway: Callable[[str], str], shared_mock: Proc, client: str, upstream: str
) -> None:
    """Cached prompt tokens reported by each provider reach each client's own usage field."""
    await set_behaviour(shared_mock, {"defaults": {"cached_tokens": 5}})
    result = await ask(gateway, client, upstream, True, False)
    assert result.cached_tokens == 5
    assert result.prompt_tokens == PROMPT_TOKENS


async def failure_seen(gateway: Callable[[str], str], client: str, upstream: str) -> str:
    """Stream the question and return the message of the error the client's SDK reports."""
    url = gateway(upstream)
    headers = {"X-Upstream-Type": upstream}
    if client == "messages":
        async with anthropic.AsyncAnthropic(
            base_url=url, api_key="k", default_headers=headers, max_retries=0
        ) as claude:
            with pytest.raises(anthropic.APIStatusError) as failed:
                async with claude.messages.stream(
                    model=MODEL, max_tokens=100, messages=[{"role": "user", "content": QUESTION}]
                ) as events:
                    async for _ in events:
                        pass
            return failed.value.message
    async with openai.AsyncOpenAI(
        base_url=url + "/v1", api_key="k", default_headers=headers, max_retries=0
    ) as sdk:
        if client == "chat":
            with pytest.raises(openai.APIError) as broken:
                stream = await sdk.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": QUESTION}], stream=True
                )
                async for _ in stream:
                    pass
            return broken.value.message
        seen = [
            e async for e in await sdk.responses.create(model=MODEL, input=QUESTION, stream=True)
        ]
        assert [e.type for e in seen[-2:]] == ["error", "response.failed"]
        assert not any(e.type == "response.completed" for e in seen)
        return str(getattr(seen[-2], "message", ""))


@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("client", sorted(CLIENTS))
async def test_mid_stream_failure_is_the_clients_error_event(
    gateway: Callable[[str], str], shared_mock: Proc, client: str, upstream: str
) -> None:
    """A provider's own mid-stream error event reaches each client as its dialect's error.

    After 8 of the mock's events, so that text has reached the client through every provider
    (the real gateway answers an error before the first event with an HTTP status instead).
    """
    await set_behaviour(shared_mock, {"defaults": {"error_after": 8}})
    assert "mid-stream" in await failure_seen(gateway, client, upstream)
