"""Gemini as a client-facing dialect: how the mock answers as a Gemini deployment.

The reverse of :mod:`gateway.dialects.gemini`: a ``generateContent`` body becomes a canonical chat
request, and canonical chunks become ``GenerateContentResponse`` events (``data:`` only, as Gemini
sends them). Text goes out as it comes; a function call is sent whole once its arguments are
complete, with the finish reason and ``usageMetadata`` in the last event, as Gemini does.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import orjson

from gateway.dialects import canonical as c
from gateway.dialects.base import (
    JSONObject,
    bad_request,
    bad_upstream,
    expect,
    json_arguments,
    load_object,
)
from gateway.errors import GatewayError, InvalidRequest

FINISH_REASONS = {"stop": "STOP", "tool_calls": "STOP", "length": "MAX_TOKENS"}
_CONFIG = (
    ("temperature", "temperature"),
    ("topP", "top_p"),
    ("candidateCount", "n"),
    ("seed", "seed"),
    ("maxOutputTokens", "max_tokens"),
    ("presencePenalty", "presence_penalty"),
    ("frequencyPenalty", "frequency_penalty"),
)


def field(obj: JSONObject, name: str) -> Any:
    """``obj[name]`` in camelCase or snake_case: Google's JSON APIs accept both, and the
    google-genai SDK sends some fields in each."""
    if name in obj:
        return obj[name]
    return obj.get(re.sub(r"[A-Z]", lambda m: "_" + m.group().lower(), name))


@bad_request("The request could not be read")
def to_canonical(body: JSONObject, model: str, *, stream: bool) -> JSONObject:
    """A ``generateContent`` body as a canonical chat request."""
    messages: list[JSONObject] = []
    system = field(body, "systemInstruction")
    if isinstance(system, dict):
        text = "".join(p.get("text", "") for p in system.get("parts") or ())
        messages.append({"role": "system", "content": text})
    pending: list[tuple[str, str]] = []  # (call id, name) of calls not answered yet
    contents = expect(body.get("contents"), list, "contents", "an array")
    for index, content in enumerate(contents):
        expect(content, dict, f"contents[{index}]", "an object")
        role = "assistant" if content.get("role") == "model" else "user"
        texts: list[str] = []
        calls: list[JSONObject] = []
        for part in content.get("parts") or ():
            if "text" in part:
                texts.append(part["text"])
            elif field(part, "functionCall") is not None:
                call = field(part, "functionCall")
                call_id = str(call.get("id") or f"call_{index}_{len(calls)}")
                pending.append((call_id, str(call.get("name"))))
                arguments = orjson.dumps(call.get("args") or {}).decode()
                function = {"name": call.get("name"), "arguments": arguments}
                calls.append({"id": call_id, "type": "function", "function": function})
            elif field(part, "functionResponse") is not None:
                answer = field(part, "functionResponse")
                call_id = _answered(pending, str(answer.get("name")))
                result = orjson.dumps(answer.get("response") or {}).decode()
                messages.append({"role": "tool", "tool_call_id": call_id, "content": result})
        if texts or calls:
            message: JSONObject = {"role": role, "content": "".join(texts) if texts else None}
            if calls:
                message["tool_calls"] = calls
            messages.append(message)
    out: JSONObject = {"model": model, "messages": messages}
    config = field(body, "generationConfig") or {}
    for name, key in _CONFIG:
        if field(config, name) is not None:
            out[key] = field(config, name)
    if field(config, "stopSequences"):
        out["stop"] = field(config, "stopSequences")
    if field(config, "responseMimeType") == "application/json":
        schema = field(config, "responseJsonSchema") or field(config, "responseSchema")
        out["response_format"] = (
            {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
            if schema
            else {"type": "json_object"}
        )
    tools = [
        _tool(d) for t in body.get("tools") or () for d in field(t, "functionDeclarations") or ()
    ]
    if tools:
        out["tools"] = tools
    mode = (field(field(body, "toolConfig") or {}, "functionCallingConfig") or {}).get("mode")
    if mode in ("ANY", "NONE"):
        out["tool_choice"] = "required" if mode == "ANY" else "none"
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _answered(pending: list[tuple[str, str]], name: str) -> str:
    for position, (call_id, called) in enumerate(pending):
        if called == name:
            del pending[position]
            return call_id
    return f"call_{name}"


def _tool(declaration: JSONObject) -> JSONObject:
    function: JSONObject = {"name": declaration.get("name")}
    if declaration.get("description"):
        function["description"] = declaration["description"]
    parameters = field(declaration, "parametersJsonSchema") or declaration.get("parameters")
    if parameters:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


def usage_metadata(usage: c.Usage) -> JSONObject:
    """Canonical usage counts as Gemini ``usageMetadata``."""
    metadata: JSONObject = {
        "promptTokenCount": usage.prompt,
        "candidatesTokenCount": usage.completion,
        "totalTokenCount": usage.prompt + usage.completion,
    }
    if usage.cached:
        metadata["cachedContentTokenCount"] = usage.cached
    return metadata


class GeminiEncoder:
    """Canonical chunks -> Gemini stream events."""

    __slots__ = ("_calls", "_finish", "_id", "_model", "_usage")

    def __init__(self, *, model: str) -> None:
        self._model = model
        self._id = ""
        self._calls: dict[int, dict[int, list[str]]] = {}  # choice -> position -> [name, args...]
        self._finish: dict[int, str] = {}
        self._usage = c.Usage(0, 0, 0)

    def _event(self, candidates: list[JSONObject], **extra: Any) -> bytes:
        data = {"candidates": candidates, "modelVersion": self._model, "responseId": self._id}
        return b"data: " + orjson.dumps({**data, **extra}) + b"\n\n"

    @bad_upstream("The upstream sent a chunk the gateway could not read")
    def feed(self, chunk: bytes) -> bytes:
        if not self._id:
            head = orjson.loads(chunk)
            self._id = str(head.get("id", "gemini")) if isinstance(head, dict) else "gemini"
        out: list[bytes] = []
        for happening in c.read_chunk(chunk):
            if isinstance(happening, c.Text):
                content = {"parts": [{"text": happening.text}], "role": "model"}
                out.append(self._event([{"content": content, "index": happening.choice}]))
            elif isinstance(happening, c.ToolStart):
                calls = self._calls.setdefault(happening.choice, {})
                calls[happening.position] = [happening.name]
            elif isinstance(happening, c.ToolArguments):
                self._calls[happening.choice][happening.position].append(happening.fragment)
            elif isinstance(happening, c.Finish):
                self._finish[happening.choice] = FINISH_REASONS.get(happening.reason, "SAFETY")
            elif isinstance(happening, c.Usage):
                self._usage = happening
            elif isinstance(happening, c.Failure):
                out.append(self._error_event(happening.message))
        return b"".join(out)

    def done(self) -> bytes:
        candidates = []
        for choice in sorted(set(self._finish) | set(self._calls)):
            parts: list[JSONObject] = [
                {"functionCall": {"name": call[0], "args": json_arguments("".join(call[1:]))}}
                for _, call in sorted(self._calls.get(choice, {}).items())
            ]
            candidate: JSONObject = {
                "content": {"parts": parts or [{"text": ""}], "role": "model"},
                "finishReason": self._finish.get(choice, "STOP"),
                "index": choice,
            }
            candidates.append(candidate)
        return self._event(candidates, usageMetadata=usage_metadata(self._usage))

    def error(self, err: GatewayError) -> bytes:
        return self._error_event(err.message)

    def _error_event(self, message: str) -> bytes:
        error = {"code": 500, "message": message, "status": "INTERNAL"}
        return b"data: " + orjson.dumps({"error": error}) + b"\n\n"


def response_from_completion(canonical: bytes) -> JSONObject:
    """A canonical chat completion as a ``GenerateContentResponse``."""
    completion = orjson.loads(canonical)
    candidates = []
    for choice in completion.get("choices") or ():
        message = choice.get("message") or {}
        parts: list[JSONObject] = []
        if message.get("content"):
            parts.append({"text": message["content"]})
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            args = json_arguments(function.get("arguments"))
            parts.append({"functionCall": {"name": function.get("name"), "args": args}})
        candidates.append(
            {
                "content": {"parts": parts, "role": "model"},
                "finishReason": FINISH_REASONS.get(choice.get("finish_reason"), "SAFETY"),
                "index": choice.get("index", 0),
            }
        )
    return {
        "candidates": candidates,
        "usageMetadata": usage_metadata(c.read_usage(completion.get("usage") or {})),
        "modelVersion": completion.get("model"),
        "responseId": completion.get("id"),
    }


class GeminiDialect:
    """Gemini's ``generateContent``, spoken to clients (the mock's Gemini routes)."""

    name: ClassVar[str] = "gemini"

    def parse_request(self, raw: bytes, *, model: str = "", stream: bool = False) -> JSONObject:
        body = load_object(raw)
        if not isinstance(body.get("contents"), list) or not body["contents"]:
            raise InvalidRequest("'contents' must be a non-empty array.", param="contents")
        return to_canonical(body, model, stream=stream)

    def encoder(self, *, model: str) -> GeminiEncoder:
        return GeminiEncoder(model=model)

    def completion_to_client(self, canonical: bytes) -> bytes:
        return orjson.dumps(response_from_completion(canonical))

    def error_body(self, err: GatewayError) -> bytes:
        status = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED"}
        error = {
            "code": err.http_status,
            "message": err.message,
            "status": status.get(err.http_status, "INTERNAL"),
        }
        return orjson.dumps({"error": error})
