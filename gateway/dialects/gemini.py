"""Google Gemini as an upstream type: ``generateContent`` and ``streamGenerateContent?alt=sse``.

Messages become ``contents`` (``user`` and ``model`` turns), system prompts ``systemInstruction``,
tools ``functionDeclarations`` (their JSON Schema as ``parametersJsonSchema``), tool results
``functionResponse`` parts named after the call they answer. Gemini streams whole function calls
(arguments as an object), so each arrives as one tool-call delta with all of its arguments. A
Gemini stream has no end marker but the ``finishReason`` of its last event, where the usage is too.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any, ClassVar
from urllib.parse import quote

import orjson

from gateway.dialects.base import (
    ChunkWriter,
    JSONObject,
    ProviderError,
    UpstreamRequest,
    UpstreamSettings,
    bad_request,
    bad_upstream,
    json_arguments,
    text_of,
)
from gateway.dialects.base import usage as canonical_usage
from gateway.errors import UpstreamProtocolError
from gateway.sse import SSEEvent

FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length"}  # every other reason is a filter
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
RETRYABLE_KINDS = frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED"})
_MAPPED = frozenset(
    {
        "model", "messages", "stream", "stream_options", "temperature", "top_p", "n", "seed",
        "presence_penalty", "frequency_penalty", "max_tokens", "max_completion_tokens", "stop",
        "response_format", "tools", "tool_choice",
    }
)  # fmt: skip
_ids = itertools.count(1)
log = logging.getLogger(__name__)


# -- request ---------------------------------------------------------------------------------------


@bad_request("The request could not be translated for this upstream")
def to_gemini(canonical: JSONObject) -> JSONObject:
    """A canonical chat request as a ``generateContent`` body."""
    names: dict[str, str] = {}  # tool call id -> function name, for the results that answer it
    system: list[str] = []
    contents: list[JSONObject] = []
    for message in canonical.get("messages") or ():
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(text_of(message.get("content")))
            continue
        if role == "tool":
            name = names.get(str(message.get("tool_call_id")), "tool")
            answer = json_arguments(text_of(message.get("content")))
            response = answer if isinstance(answer, dict) else {"result": answer}
            _append(contents, "user", [{"functionResponse": {"name": name, "response": response}}])
            continue
        parts = _parts(message.get("content"))
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            names[str(call.get("id"))] = str(function.get("name"))
            args = json_arguments(function.get("arguments"))
            parts.append({"functionCall": {"name": function.get("name"), "args": args}})
        _append(contents, "model" if role == "assistant" else "user", parts)
    out: JSONObject = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    config = _generation_config(canonical)
    if config:
        out["generationConfig"] = config
    declarations = [_declaration(t) for t in canonical.get("tools") or () if t.get("function")]
    if declarations:
        out["tools"] = [{"functionDeclarations": declarations}]
    choice = _tool_config(canonical.get("tool_choice"))
    if choice is not None:
        out["toolConfig"] = {"functionCallingConfig": choice}
    dropped = sorted(canonical.keys() - _MAPPED)
    if dropped:
        log.debug("gemini: dropped fields generateContent has no equivalent for: %s", dropped)
    return out


def _append(contents: list[JSONObject], role: str, parts: list[JSONObject]) -> None:
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    elif parts:
        contents.append({"role": role, "parts": parts})


def _parts(content: Any) -> list[JSONObject]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[JSONObject] = []
    for part in content or ():
        if part.get("type") == "text":
            parts.append({"text": part.get("text", "")})
        elif part.get("type") == "image_url":
            parts.append(image_part(str((part.get("image_url") or {}).get("url", ""))))
    return parts


def image_part(url: str) -> JSONObject:
    """An ``inlineData`` part for a base64 ``data:`` URL, else a ``fileData`` part."""
    if url.startswith("data:") and ";base64," in url:
        mime, data = url[5:].split(";base64,", 1)
        return {"inlineData": {"mimeType": mime, "data": data}}
    suffix = url.rsplit(".", 1)[-1].lower()
    mime = {"png": "image/png", "gif": "image/gif", "webp": "image/webp"}.get(suffix, "image/jpeg")
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def _generation_config(canonical: JSONObject) -> JSONObject:
    config: JSONObject = {}
    pairs = (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("n", "candidateCount"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    )
    for key, name in pairs:
        if canonical.get(key) is not None:
            config[name] = canonical[key]
    limit = canonical.get("max_completion_tokens") or canonical.get("max_tokens")
    if limit:
        config["maxOutputTokens"] = limit
    stop = canonical.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    fmt = canonical.get("response_format") or {}
    if fmt.get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = (fmt.get("json_schema") or {}).get("schema")
        if schema:
            config["responseJsonSchema"] = schema
    return config


def _declaration(tool: JSONObject) -> JSONObject:
    function = tool["function"]
    out: JSONObject = {"name": function.get("name")}
    if function.get("description"):
        out["description"] = function["description"]
    if function.get("parameters"):
        out["parametersJsonSchema"] = function["parameters"]
    return out


def _tool_config(choice: Any) -> JSONObject | None:
    if choice is None:
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return {"mode": "ANY", "allowedFunctionNames": [name]}
    return {"mode": {"required": "ANY", "none": "NONE"}.get(choice, "AUTO")}


# -- answers ---------------------------------------------------------------------------------------


def usage_counts(metadata: JSONObject) -> tuple[int, int, int]:
    """(prompt, completion, cached) from ``usageMetadata``; thoughts count as completion."""
    completion = int(metadata.get("candidatesTokenCount") or 0)
    completion += int(metadata.get("thoughtsTokenCount") or 0)
    return (
        int(metadata.get("promptTokenCount") or 0),
        completion,
        int(metadata.get("cachedContentTokenCount") or 0),
    )


def provider_error(data: Any) -> ProviderError:
    """A Gemini error object (``{"error": {"code", "message", "status"}}``) as a ProviderError."""
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return ProviderError("The upstream reported an unreadable error.")
    status = str(error.get("status", "UNKNOWN"))
    message = str(error.get("message", status))
    return ProviderError(message, kind=status, retryable=status in RETRYABLE_KINDS)


def finish_reason(reason: str, called: bool) -> str:
    """A Gemini finishReason as a canonical one."""
    if reason == "STOP" and called:
        return "tool_calls"
    return FINISH_REASONS.get(reason, "content_filter")


class GeminiDecoder:
    """A Gemini SSE stream (each event a ``GenerateContentResponse``) -> canonical chunks."""

    __slots__ = ("_called", "_calls", "_open", "_writer", "finished")

    def __init__(self) -> None:
        self.finished = False
        self._writer: ChunkWriter | None = None
        self._open: set[int] = set()  # candidates not finished yet
        self._calls: dict[int, int] = {}  # candidate -> tool calls so far
        self._called: set[int] = set()

    @bad_upstream("The upstream sent an event the gateway could not read")
    def feed(self, event: SSEEvent) -> list[bytes]:
        data = orjson.loads(event.data)
        if not isinstance(data, dict) or "error" in data:
            raise provider_error(data)
        out: list[bytes] = []
        writer = self._writer
        if writer is None:
            writer = self._writer = ChunkWriter(
                id=str(data.get("responseId") or f"gemini-{next(_ids)}"),
                model=str(data.get("modelVersion", "")),
            )
        for candidate in data.get("candidates") or ():
            index = int(candidate.get("index") or 0)
            if index not in self._calls:
                self._calls[index] = 0
                self._open.add(index)
                out.append(writer.delta({"role": "assistant", "content": ""}, index=index))
            out.extend(self._parts(writer, index, candidate))
            reason = candidate.get("finishReason")
            if reason:
                self._open.discard(index)
                finish = finish_reason(reason, index in self._called)
                out.append(writer.delta({}, index=index, finish=finish))
        if self._calls and not self._open:
            self.finished = True
            out.append(writer.usage(*usage_counts(data.get("usageMetadata") or {})))
        return out

    def _parts(self, writer: ChunkWriter, index: int, candidate: JSONObject) -> list[bytes]:
        out: list[bytes] = []
        for part in (candidate.get("content") or {}).get("parts") or ():
            if part.get("thought"):
                continue
            if part.get("text"):
                out.append(writer.text(part["text"], index=index))
            call = part.get("functionCall")
            if isinstance(call, dict):
                position = self._calls[index]
                self._calls[index] += 1
                self._called.add(index)
                call_id = str(call.get("id") or f"call_{writer.id}_{index}_{position}")
                out.append(writer.tool_start(position, call_id, str(call.get("name")), index=index))
                arguments = orjson.dumps(call.get("args") or {}).decode()
                out.append(writer.tool_arguments(position, arguments, index=index))
        return out

    def at_eof(self) -> list[bytes]:
        if not self.finished:
            raise UpstreamProtocolError("The Gemini stream ended before a finishReason.")
        return []


@bad_upstream("The upstream sent an answer the gateway could not read")
def completion_from_response(body: bytes) -> JSONObject:
    """A ``GenerateContentResponse`` as a canonical chat completion."""
    data = orjson.loads(body)
    if not isinstance(data, dict) or "error" in data:
        raise provider_error(data)
    choices = []
    for candidate in data.get("candidates") or ():
        index = int(candidate.get("index") or 0)
        texts: list[str] = []
        calls: list[JSONObject] = []
        for part in (candidate.get("content") or {}).get("parts") or ():
            if part.get("text") and not part.get("thought"):
                texts.append(part["text"])
            call = part.get("functionCall")
            if isinstance(call, dict):
                arguments = orjson.dumps(call.get("args") or {}).decode()
                calls.append(
                    {
                        "id": str(call.get("id") or f"call_{index}_{len(calls)}"),
                        "type": "function",
                        "function": {"name": call.get("name"), "arguments": arguments},
                    }
                )
        message: JSONObject = {"role": "assistant", "content": "".join(texts) or None}
        if calls:
            message["tool_calls"] = calls
        finish = finish_reason(str(candidate.get("finishReason") or "STOP"), bool(calls))
        choices.append(
            {"index": index, "message": message, "logprobs": None, "finish_reason": finish}
        )
    return {
        "id": str(data.get("responseId") or f"gemini-{next(_ids)}"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(data.get("modelVersion", "")),
        "choices": choices,
        "usage": canonical_usage(*usage_counts(data.get("usageMetadata") or {})),
    }


class GeminiUpstream:
    """``type: gemini`` deployments (base URL ``https://generativelanguage.googleapis.com/v1beta``)."""

    name: ClassVar[str] = "gemini"

    def build_request(
        self, canonical: JSONObject, upstream_model: str, settings: UpstreamSettings
    ) -> UpstreamRequest:
        headers = dict(settings.headers)
        if settings.api_key:
            headers["x-goog-api-key"] = settings.api_key
        model = quote(upstream_model.removeprefix("models/"), safe="")
        if canonical.get("stream"):
            path = f"/models/{model}:streamGenerateContent?alt=sse"
        else:
            path = f"/models/{model}:generateContent"
        return UpstreamRequest(path, headers, orjson.dumps(to_gemini(canonical)))

    def decoder(self) -> GeminiDecoder:
        return GeminiDecoder()

    def completion_from_upstream(self, body: bytes) -> bytes:
        return orjson.dumps(completion_from_response(body))

    def retryable(self, status: int, body: bytes) -> bool:
        if status in RETRYABLE_STATUSES:
            return True
        try:
            return provider_error(orjson.loads(body)).retryable
        except orjson.JSONDecodeError:
            return False
