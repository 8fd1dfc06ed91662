"""OpenAI Responses as a client dialect: ``POST /v1/responses``, stateless, before any upstream.

Stateless use is what is served: ``input`` as a string or a list of items (messages, function
calls and their outputs), ``instructions`` as the system prompt, function tools. Anything that
needs stored state (``previous_response_id``, ``conversation``, ``background``) is refused with a
400 naming the parameter. The stream is the typed event sequence the OpenAI SDK accumulates:
``response.created``, ``response.in_progress``, per output item ``output_item.added`` ...
``output_item.done`` with text or function-call argument deltas in between, and
``response.completed`` (or ``response.incomplete``) carrying the whole response and its usage.
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

import orjson

from gateway.dialects import canonical as c
from gateway.dialects.base import JSONObject, bad_request, expect, load_object, require, text_of
from gateway.errors import GatewayError, InvalidRequest

_STATEFUL = ("previous_response_id", "conversation", "background", "prompt")
_PASSED = ("temperature", "top_p", "parallel_tool_calls", "user", "metadata", "seed")
_MAPPED = frozenset(
    {
        *_STATEFUL, *_PASSED, "model", "input", "instructions", "stream", "max_output_tokens",
        "tools", "tool_choice", "text", "reasoning", "store", "stream_options",
    }
)  # fmt: skip
log = logging.getLogger(__name__)


# -- request ---------------------------------------------------------------------------------------


@bad_request("The request could not be read")
def to_canonical(body: JSONObject) -> JSONObject:
    """A validated Responses request as a canonical chat request."""
    model = require(body, "model", str, "a string")
    for key in _STATEFUL:
        if body.get(key):
            raise InvalidRequest(
                f"'{key}' is not supported: the gateway serves the Responses API statelessly; "
                "send the whole conversation in 'input'.",
                param=key,
            )
    messages: list[JSONObject] = []
    if body.get("instructions"):
        instructions = expect(body["instructions"], str, "instructions", "a string")
        messages.append({"role": "system", "content": instructions})
    source = require(body, "input", (str, list), "a string or an array of input items")
    if isinstance(source, str):
        messages.append({"role": "user", "content": source})
    else:
        for index, item in enumerate(source):
            _item(item, f"input[{index}]", messages)
    out: JSONObject = {"model": model, "messages": messages}
    for key in _PASSED:
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("max_output_tokens") is not None:
        limit = expect(body["max_output_tokens"], int, "max_output_tokens", "an integer")
        out["max_completion_tokens"] = limit
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    if body.get("tools"):
        tools = expect(body["tools"], list, "tools", "an array")
        out["tools"] = [_tool(t, f"tools[{i}]") for i, t in enumerate(tools)]
    if body.get("tool_choice") is not None:
        out["tool_choice"] = _tool_choice(body["tool_choice"])
    text = body.get("text")
    if isinstance(text, dict) and isinstance(text.get("format"), dict):
        out["response_format"] = _format(text["format"])
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort"):
        out["reasoning_effort"] = reasoning["effort"]
    dropped = sorted(body.keys() - _MAPPED)
    if dropped:
        log.debug("responses: dropped fields with no chat equivalent: %s", dropped)
    return out


def _item(item: Any, param: str, messages: list[JSONObject]) -> None:
    expect(item, dict, param, "an object")
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise InvalidRequest(
                f"'{param}.role' must be user, assistant, system or developer.",
                param=f"{param}.role",
            )
        messages.append({"role": role, "content": _content(item.get("content"), param)})
    elif kind == "function_call":
        call = {
            "id": item.get("call_id"),
            "type": "function",
            "function": {"name": item.get("name"), "arguments": item.get("arguments") or "{}"},
        }
        last = messages[-1] if messages else None
        if last and last["role"] == "assistant" and last.get("tool_calls"):
            last["tool_calls"].append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        text = output if isinstance(output, str) else text_of(output)
        messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
    elif kind == "reasoning":
        return
    else:
        raise InvalidRequest(f"'{param}.type' {kind!r} is not supported.", param=f"{param}.type")


def _content(content: Any, param: str) -> Any:
    if isinstance(content, str):
        return content
    expect(content, list, f"{param}.content", "a string or an array of content parts")
    parts: list[JSONObject] = []
    for index, part in enumerate(content):
        where = f"{param}.content[{index}]"
        expect(part, dict, where, "an object")
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": part.get("text", "")})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise InvalidRequest(f"'{where}.image_url' must be a URL.", param=where)
            image: JSONObject = {"url": url}
            if part.get("detail"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "refusal":
            parts.append({"type": "text", "text": part.get("refusal", "")})
        else:
            raise InvalidRequest(f"'{where}.type' {kind!r} is not supported.", param=where)
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _tool(tool: Any, param: str) -> JSONObject:
    expect(tool, dict, param, "an object")
    if tool.get("type") != "function":
        raise InvalidRequest(
            f"'{param}.type' {tool.get('type')!r} is not supported: only function tools are.",
            param=f"{param}.type",
        )
    function: JSONObject = {"name": expect(tool.get("name"), str, f"{param}.name", "a string")}
    for key in ("description", "parameters", "strict"):
        if tool.get(key) is not None:
            function[key] = tool[key]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    raise InvalidRequest(
        "'tool_choice' must be auto, none, required or a function.", param="tool_choice"
    )


def _format(spec: JSONObject) -> JSONObject:
    kind = spec.get("type")
    if kind == "json_schema":
        schema = {k: spec[k] for k in ("name", "schema", "strict", "description") if k in spec}
        return {"type": "json_schema", "json_schema": schema}
    if kind in ("json_object", "text"):
        return {"type": kind}
    raise InvalidRequest(
        "'text.format.type' must be text, json_object or json_schema.", param="text"
    )


# -- answers ---------------------------------------------------------------------------------------


def response_object(
    id: str, model: str, created: int, *, status: str, output: list[JSONObject]
) -> JSONObject:
    """A Responses ``response`` object (usage is filled in when known)."""
    return {
        "id": id,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": None,
    }


def usage_object(usage: c.Usage) -> JSONObject:
    """Canonical usage counts as a Responses ``usage``."""
    return {
        "input_tokens": usage.prompt,
        "input_tokens_details": {"cached_tokens": usage.cached},
        "output_tokens": usage.completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt + usage.completion,
    }


def _finish(response: JSONObject, finish: str, usage: c.Usage) -> JSONObject:
    response["usage"] = usage_object(usage)
    if finish == "length":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    elif finish == "content_filter":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "content_filter"}
    else:
        response["status"] = "completed"
    return response


def message_item(id: str, text: str, status: str = "completed") -> JSONObject:
    """An assistant message output item."""
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    content = [part] if status == "completed" else []
    return {"id": id, "type": "message", "status": status, "role": "assistant", "content": content}


def call_item(id: str, call_id: str, name: str, arguments: str, status: str) -> JSONObject:
    """A function call output item."""
    return {
        "id": id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def response_from_completion(canonical: bytes) -> JSONObject:
    """A canonical chat completion as a Responses ``response`` object."""
    answer = c.read_completion(canonical)
    output: list[JSONObject] = []
    if answer.text:
        output.append(message_item(f"msg_{answer.id}", answer.text))
    for position, call in enumerate(answer.tool_calls):
        function = call.get("function") or {}
        output.append(
            call_item(
                f"fc_{answer.id}_{position}",
                str(call.get("id")),
                str(function.get("name")),
                str(function.get("arguments") or ""),
                "completed",
            )
        )
    created = answer.created or int(time.time())
    response = response_object(
        f"resp_{answer.id}", answer.model, created, status="completed", output=output
    )
    return _finish(response, answer.finish, answer.usage)


class ResponsesDialect:
    """``POST /v1/responses``."""

    name: ClassVar[str] = "responses"

    def parse_request(self, raw: bytes) -> JSONObject:
        return to_canonical(load_object(raw))

    def encoder(self, *, model: str) -> Any:
        from gateway.dialects.responses_stream import ResponsesEncoder

        return ResponsesEncoder(model=model)

    def completion_to_client(self, canonical: bytes) -> bytes:
        return orjson.dumps(response_from_completion(canonical))

    def error_body(self, err: GatewayError) -> bytes:
        return err.to_json()


def encode(name: str, data: JSONObject) -> bytes:
    """One Responses SSE event: ``event:`` is the type, as OpenAI sends it."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
