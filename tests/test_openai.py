"""Request normalisation: valid bodies pass through untouched, bad ones name the field."""

from __future__ import annotations

import orjson
import pytest

from gateway.errors import InvalidJSON, InvalidRequest
from gateway.openai import (
    Endpoint,
    Usage,
    estimate_answer_tokens,
    parse_request,
    usage_in_body,
    usage_in_event,
)


def test_chat_request_fields_and_passthrough() -> None:
    """Known fields are pulled out; unknown ones stay in the body for the upstream."""
    raw = orjson.dumps(
        {
            "model": "m",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "hi"}],
            "some_new_param": {"x": 1},
        }
    )
    parsed = parse_request(raw, Endpoint.CHAT)
    assert parsed.model == "m" and parsed.stream and parsed.client_wants_usage
    upstream = orjson.loads(parsed.upstream_body("upstream-m"))
    assert upstream["model"] == "upstream-m"
    assert upstream["some_new_param"] == {"x": 1}
    assert orjson.loads(parsed.upstream_body("m")) == orjson.loads(raw)


@pytest.mark.parametrize(
    ("body", "endpoint", "param"),
    [
        ({"model": "m"}, Endpoint.COMPLETIONS, "prompt"),
        ({"model": "m", "prompt": 3}, Endpoint.COMPLETIONS, "prompt"),
        ({"model": "m"}, Endpoint.EMBEDDINGS, "input"),
        ({"model": "m", "input": []}, Endpoint.EMBEDDINGS, "input"),
        ({"model": "m", "input": "x", "stream": True}, Endpoint.EMBEDDINGS, "stream"),
        (
            {"model": "m", "messages": [{"role": "user", "content": 3}]},
            Endpoint.CHAT,
            "messages[0].content",
        ),
        (
            {"model": "m", "messages": [{"role": "user"}], "max_tokens": 0},
            Endpoint.CHAT,
            "max_tokens",
        ),
        ({"model": "m", "messages": [{"role": "user"}], "stop": [1]}, Endpoint.CHAT, "stop"),
        (
            {"model": "m", "messages": [{"role": "user"}], "stream_options": {"include_usage": 1}},
            Endpoint.CHAT,
            "stream_options.include_usage",
        ),
        (
            {"model": "m", "messages": [{"role": "user"}], "temperature": True},
            Endpoint.CHAT,
            "temperature",
        ),
    ],
)
def test_invalid_fields_are_named(body: dict[str, object], endpoint: Endpoint, param: str) -> None:
    """A missing or mistyped field raises InvalidRequest with that field as param."""
    with pytest.raises(InvalidRequest) as caught:
        parse_request(orjson.dumps(body), endpoint)
    assert caught.value.param == param
    assert caught.value.to_dict()["error"]["param"] == param


def test_invalid_json_has_its_own_code() -> None:
    """Bytes that are not JSON raise InvalidJSON with code invalid_json."""
    with pytest.raises(InvalidJSON) as caught:
        parse_request(b"{", Endpoint.CHAT)
    assert caught.value.code == "invalid_json" and caught.value.status == 400


def test_nesting_deeper_than_the_limit_is_invalid_json() -> None:
    """A body nested past MAX_JSON_DEPTH is refused at parse time; one at the limit is taken."""
    import pytest

    from gateway.errors import InvalidJSON
    from gateway.openai import MAX_JSON_DEPTH, Endpoint, parse_request

    def body(depth: int) -> bytes:
        nested = "[" * depth + "]" * depth
        return f'{{"model":"m","prompt":"p","x":{nested}}}'.encode()

    parse_request(body(MAX_JSON_DEPTH - 1), Endpoint.COMPLETIONS)
    with pytest.raises(InvalidJSON, match=f"deeper than {MAX_JSON_DEPTH}"):
        parse_request(body(MAX_JSON_DEPTH), Endpoint.COMPLETIONS)


def test_streamed_and_json_usage_carry_cached_prompt_tokens() -> None:
    """prompt_tokens_details.cached_tokens is read from a usage chunk and from a JSON answer."""
    usage = {"prompt_tokens": 12, "completion_tokens": 3,
             "prompt_tokens_details": {"cached_tokens": 8}}  # fmt: skip
    chunk = orjson.dumps({"choices": [], "usage": usage})
    assert usage_in_event(chunk) == (Usage(12, 3, exact=True, cached_tokens=8), True)
    answer = orjson.dumps({"choices": [], "usage": {**usage, "prompt_tokens_details": None}})
    assert usage_in_body(answer) == Usage(12, 3, exact=True, cached_tokens=0)


def test_a_json_answer_without_usage_is_estimated_from_its_text() -> None:
    """About four characters a token of the content, tool arguments and completion text."""
    answer = {"choices": [
        {"message": {"content": "x" * 40}},
        {"message": {"content": None, "tool_calls": [{"function": {"arguments": "y" * 8}}]}},
        {"text": "z" * 3},
    ]}  # fmt: skip
    assert estimate_answer_tokens(orjson.dumps(answer)) == (40 + 8 + 3 + 3) // 4
    assert estimate_answer_tokens(b"not json") == 0
    assert estimate_answer_tokens(b'{"error": {"message": "no"}}') == 0
