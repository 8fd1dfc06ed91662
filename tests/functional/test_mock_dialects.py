"""The providers' own SDKs pointed straight at the real mock process: it speaks their dialects.

anthropic (Messages: create, stream, tool use, count_tokens, errors), google-genai (generate,
stream, function calls, errors) and openai with Azure settings (tools, n, max_tokens, JSON output,
base64 embeddings). These parsers were not written here, so they check the mock, and through it
the gateway's own Messages and Gemini encoders, which the mock answers with.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import httpx2
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from gateway.mock.answer import expected_text, plan
from gateway.mock.behaviour import DEFAULT_BEHAVIOUR
from gateway.mock.openai import embeddings
from tests.conftest import Proc

QUESTION = "name three rivers"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
CANONICAL = {"model": "mock-gpt", "messages": [{"role": "user", "content": QUESTION}]}
CHUNKS = DEFAULT_BEHAVIOUR.chunks


@pytest.fixture
async def claude(shared_mock: Proc) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=shared_mock.url, api_key="sk-ant", max_retries=0
    ) as client:
        yield client


@pytest.fixture
async def gemini(shared_mock: Proc) -> AsyncIterator[genai.Client]:
    # Its own httpx client: with aiohttp installed the SDK subclasses ClientSession, which
    # aiohttp deprecates (a DeprecationWarning, an error here).
    async with httpx2.AsyncClient() as transport:
        options = types.HttpOptions(
            base_url=shared_mock.url, api_version="v1beta", httpx_async_client=transport
        )
        yield genai.Client(api_key="gm-key", http_options=options)


@pytest.fixture
async def azure(shared_mock: Proc) -> AsyncIterator[openai.AsyncAzureOpenAI]:
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=shared_mock.url, api_version="2024-10-21", api_key="az-key", max_retries=0
    ) as client:
        yield client


async def last_request(proc: Proc) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(proc.url + "/_mock/requests") as r:
        records: list[dict[str, Any]] = await r.json()
    return records[-1]


def planned_call(tools_schema: dict[str, Any], model: str = "mock-gpt") -> Any:
    """The arguments the mock's tool call carries for QUESTION."""
    tool = {"type": "function", "function": {"name": "f", "parameters": tools_schema}}
    body = {**CANONICAL, "model": model, "tools": [tool]}
    choice = plan(body, CHUNKS, 1)[0]
    assert choice.tool is not None
    return json.loads(choice.tool.arguments)


# -- anthropic -------------------------------------------------------------------------------------


async def test_anthropic_create_and_stream(claude: anthropic.AsyncAnthropic) -> None:
    """messages.create and messages.stream get the mock's text, end_turn and token counts."""
    messages: Any = [{"role": "user", "content": QUESTION}]
    answer = await claude.messages.create(model="mock-gpt", max_tokens=100, messages=messages)
    assert answer.content[0].type == "text"
    assert answer.content[0].text == expected_text(CANONICAL)
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (3, CHUNKS)
    async with claude.messages.stream(model="mock-gpt", max_tokens=100, messages=messages) as s:
        pieces = [text async for text in s.text_stream]
        final = await s.get_final_message()
    assert len(pieces) == CHUNKS and "".join(pieces) == expected_text(CANONICAL)
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == CHUNKS


async def test_anthropic_max_tokens_and_tool_use(claude: anthropic.AsyncAnthropic) -> None:
    """max_tokens cuts the answer (stop_reason max_tokens); a tool is called with streamed input."""
    messages: Any = [{"role": "user", "content": QUESTION}]
    short = await claude.messages.create(model="mock-gpt", max_tokens=3, messages=messages)
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3
    tools: Any = [{"name": "lookup", "description": "look up", "input_schema": SCHEMA}]
    async with claude.messages.stream(
        model="mock-gpt", max_tokens=100, messages=messages, tools=tools
    ) as s:
        deltas = [e async for e in s if e.type == "input_json"]
        final = await s.get_final_message()
    assert final.stop_reason == "tool_use" and len(deltas) > 1
    use = final.content[0]
    assert use.type == "tool_use" and use.name == "lookup" and use.input == planned_call(SCHEMA)


async def test_anthropic_count_tokens(claude: anthropic.AsyncAnthropic) -> None:
    """count_tokens answers the mock's word count of system and messages."""
    counted = await claude.messages.count_tokens(
        model="mock-gpt", system="be brief", messages=[{"role": "user", "content": QUESTION}]
    )
    assert counted.input_tokens == 2 + 3


async def test_anthropic_errors(claude: anthropic.AsyncAnthropic) -> None:
    """529 is Anthropic's overloaded_error; error_after sends event: error; the SDK raises both."""
    messages: Any = [{"role": "user", "content": QUESTION}]
    with pytest.raises(anthropic.APIStatusError) as failed:
        await claude.messages.create(
            model="mock-gpt",
            max_tokens=100,
            messages=messages,
            extra_headers={"X-Mock-Fail-Status": "529"},
        )
    assert failed.value.status_code == 529
    assert failed.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    with pytest.raises(anthropic.APIStatusError, match="mid-stream"):
        async with claude.messages.stream(
            model="mock-gpt",
            max_tokens=100,
            messages=messages,
            extra_headers={"X-Mock-Error-After": "4"},
        ) as s:
            async for _ in s:
                pass


# -- gemini ----------------------------------------------------------------------------------------


async def test_gemini_generate_and_stream(gemini: genai.Client, shared_mock: Proc) -> None:
    """generate_content and its stream get the mock's text and usage metadata."""
    expected = expected_text({**CANONICAL, "model": "gemini-mock"})
    answer = await gemini.aio.models.generate_content(model="gemini-mock", contents=QUESTION)
    assert answer.text == expected
    assert answer.usage_metadata is not None
    assert answer.usage_metadata.prompt_token_count == 3
    assert answer.usage_metadata.candidates_token_count == CHUNKS
    assert (await last_request(shared_mock))["model"] == "gemini-mock"
    stream = await gemini.aio.models.generate_content_stream(model="gemini-mock", contents=QUESTION)
    texts = [chunk.text or "" async for chunk in stream]
    assert "".join(texts) == expected and len(texts) == CHUNKS + 1


async def test_gemini_function_call(gemini: genai.Client) -> None:
    """A function declaration is called with arguments built from its JSON Schema."""
    declaration = types.FunctionDeclaration(
        name="lookup", description="look up", parameters_json_schema=SCHEMA
    )
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[declaration])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    answer = await gemini.aio.models.generate_content(
        model="gemini-mock", contents=QUESTION, config=config
    )
    calls = answer.function_calls or []
    assert [c.name for c in calls] == ["lookup"]
    assert calls[0].args == planned_call(SCHEMA, "gemini-mock")


async def test_gemini_errors(gemini: genai.Client) -> None:
    """A 429 is RESOURCE_EXHAUSTED; a mid-stream failure is a Gemini error object."""
    config = types.GenerateContentConfig(
        http_options=types.HttpOptions(headers={"X-Mock-Fail-Status": "429"})
    )
    with pytest.raises(genai_errors.ClientError) as failed:
        await gemini.aio.models.generate_content(
            model="gemini-mock", contents=QUESTION, config=config
        )
    assert failed.value.code == 429 and failed.value.status == "RESOURCE_EXHAUSTED"
    config = types.GenerateContentConfig(
        http_options=types.HttpOptions(headers={"X-Mock-Error-After": "3"})
    )
    with pytest.raises(genai_errors.APIError, match="mid-stream"):
        stream = await gemini.aio.models.generate_content_stream(
            model="gemini-mock", contents=QUESTION, config=config
        )
        async for _ in stream:
            pass


# -- azure -----------------------------------------------------------------------------------------


async def test_azure_chat_stream_with_tools(azure: openai.AsyncAzureOpenAI) -> None:
    """The Azure deployment path streams a tool call whose arguments arrive in pieces."""
    function: Any = {"name": "lookup", "parameters": SCHEMA}
    stream = await azure.chat.completions.create(
        model="my-deployment",
        messages=[{"role": "user", "content": QUESTION}],
        tools=[{"type": "function", "function": function}],
        stream=True,
    )
    arguments, finish = [], None
    async for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or ():
                assert call.function is not None
                arguments.append(call.function.arguments or "")
    assert finish == "tool_calls" and len(arguments) > 2
    assert json.loads("".join(arguments)) == planned_call(SCHEMA, "my-deployment")


async def test_azure_n_max_tokens_and_json(azure: openai.AsyncAzureOpenAI) -> None:
    """n gives distinct choices, max_tokens finishes with length, json_schema answers JSON."""
    messages: Any = [{"role": "user", "content": QUESTION}]
    answer = await azure.chat.completions.create(
        model="my-deployment", messages=messages, n=3, max_tokens=4
    )
    texts = [c.message.content for c in answer.choices]
    assert len(set(texts)) == 3 and {c.finish_reason for c in answer.choices} == {"length"}
    assert answer.usage is not None and answer.usage.completion_tokens == 12
    schema: Any = {"name": "city", "schema": SCHEMA}
    document = await azure.chat.completions.create(
        model="my-deployment",
        messages=messages,
        response_format={"type": "json_schema", "json_schema": schema},
    )
    assert set(json.loads(document.choices[0].message.content or "")) == {"city"}


async def test_azure_embeddings_base64_and_missing_version(
    azure: openai.AsyncAzureOpenAI, shared_mock: Proc
) -> None:
    """The SDK's default base64 embeddings decode to the float ones; no api-version is a 404."""
    answer = await azure.embeddings.create(model="my-deployment", input="abc")
    expected = embeddings({"input": "abc"})["data"][0]["embedding"]
    assert answer.data[0].embedding == pytest.approx(expected, abs=1e-6)
    assert (await last_request(shared_mock))["body"]["encoding_format"] == "base64"
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            shared_mock.url + "/openai/deployments/d/chat/completions", json=CANONICAL
        ) as response,
    ):
        assert response.status == 404
