"""The Responses stream encoder: canonical chunks -> typed Responses events, one item at a time.

The whole output is kept (text and arguments so far), because ``output_item.done`` and
``response.completed`` repeat it; that is the answer's size, once, not a copy per event.
"""

from __future__ import annotations

import time

import orjson

from gateway.dialects import canonical as c
from gateway.dialects.base import JSONObject, bad_upstream
from gateway.dialects.responses import (
    _finish,
    call_item,
    encode,
    message_item,
    response_object,
)
from gateway.errors import GatewayError

_TEXT_DELTA = (
    b"event: response.output_text.delta\n"
    b'data: {"type":"response.output_text.delta","sequence_number":'
)


class ResponsesEncoder:
    """One client stream of ``POST /v1/responses``."""

    __slots__ = (
        "_created",
        "_finish",
        "_id",
        "_items",
        "_model",
        "_open",
        "_parts",
        "_seq",
        "_started",
        "_usage",
    )

    def __init__(self, *, model: str) -> None:
        self._model = model
        self._id = ""
        self._created = int(time.time())
        self._seq = 0
        self._started = False
        self._items: list[JSONObject] = []  # finished output items
        self._open: JSONObject | None = None  # the item being streamed
        self._parts: list[str] = []  # its text or arguments so far
        self._finish = "stop"
        self._usage = c.Usage(0, 0, 0)

    def _event(self, name: str, data: JSONObject) -> bytes:
        data = {"type": name, "sequence_number": self._seq, **data}
        self._seq += 1
        return encode(name, data)

    def _response(self, status: str) -> JSONObject:
        return response_object(
            self._id, self._model, self._created, status=status, output=list(self._items)
        )

    def _start(self, chunk: bytes) -> bytes:
        self._started = True
        head = orjson.loads(chunk)
        self._id = "resp_" + str(head.get("id", "gateway") if isinstance(head, dict) else "gateway")
        response = self._response("in_progress")
        return self._event("response.created", {"response": response}) + self._event(
            "response.in_progress", {"response": response}
        )

    @bad_upstream("The upstream sent a chunk the gateway could not read")
    def feed(self, chunk: bytes) -> bytes:
        out = [] if self._started else [self._start(chunk)]
        for happening in c.read_chunk(chunk):
            if isinstance(happening, c.Failure):
                out.append(self._failure(happening.message, happening.kind))
            elif getattr(happening, "choice", 0) != 0:
                continue
            elif isinstance(happening, c.Text):
                if self._open is None or self._open["type"] != "message":
                    out.append(self._open_message())
                out.append(self._delta("response.output_text.delta", happening.text))
            elif isinstance(happening, c.ToolStart):
                out.append(self._open_call(happening))
            elif isinstance(happening, c.ToolArguments):
                out.append(
                    self._delta("response.function_call_arguments.delta", happening.fragment)
                )
            elif isinstance(happening, c.Finish):
                self._finish = happening.reason
            elif isinstance(happening, c.Usage):
                self._usage = happening
        return b"".join(out)

    def _where(self) -> JSONObject:
        assert self._open is not None
        return {"item_id": self._open["id"], "output_index": len(self._items)}

    def _open_message(self) -> bytes:
        closing = self._close()
        self._open = message_item(f"msg_{self._id[5:]}_{len(self._items)}", "", "in_progress")
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        where = self._where()
        added = {"output_index": where["output_index"], "item": self._open}
        return (
            closing
            + self._event("response.output_item.added", added)
            + self._event(
                "response.content_part.added", {**where, "content_index": 0, "part": part}
            )
        )

    def _open_call(self, start: c.ToolStart) -> bytes:
        closing = self._close()
        item_id = f"fc_{self._id[5:]}_{len(self._items)}"
        self._open = call_item(item_id, start.call_id, start.name, "", "in_progress")
        added = {"output_index": len(self._items), "item": self._open}
        return closing + self._event("response.output_item.added", added)

    def _delta(self, name: str, fragment: str) -> bytes:
        if self._open is None:
            return b""  # arguments with no call started: nothing to attach them to
        self._parts.append(fragment)
        if self._open["type"] == "message":  # most events: written without building a dict
            self._seq += 1
            framed: bytes = (
                _TEXT_DELTA
                + str(self._seq - 1).encode()
                + b',"item_id":'
                + orjson.dumps(self._open["id"])
                + b',"output_index":'
                + str(len(self._items)).encode()
                + b',"content_index":0,"logprobs":[],"delta":'
                + orjson.dumps(fragment)
                + b"}\n\n"
            )
            return framed
        return self._event(name, {**self._where(), "delta": fragment})

    def _close(self) -> bytes:
        item = self._open
        if item is None:
            return b""
        joined = "".join(self._parts)
        where = self._where()
        if item["type"] == "message":
            done = message_item(item["id"], joined)
            part = done["content"][0]
            head = self._event(
                "response.output_text.done",
                {**where, "content_index": 0, "text": joined, "logprobs": []},
            ) + self._event(
                "response.content_part.done", {**where, "content_index": 0, "part": part}
            )
        else:
            done = {**item, "arguments": joined, "status": "completed"}
            head = self._event(
                "response.function_call_arguments.done",
                {**where, "name": item["name"], "arguments": joined},
            )
        tail = self._event(
            "response.output_item.done", {"output_index": where["output_index"], "item": done}
        )
        self._items.append(done)
        self._open = None
        self._parts = []
        return head + tail

    def done(self) -> bytes:
        head = b"" if self._started else self._start(b"{}")
        closing = self._close()
        response = _finish(self._response("completed"), self._finish, self._usage)
        name = "response.completed" if response["status"] == "completed" else "response.incomplete"
        return head + closing + self._event(name, {"response": response})

    def error(self, err: GatewayError) -> bytes:
        return self._failure(err.message, err.code or err.error_type)

    def _failure(self, message: str, code: str | None) -> bytes:
        head = b"" if self._started else self._start(b"{}")
        error = {"code": code, "message": message, "param": None}
        response = self._response("failed")
        response["error"] = {"code": code, "message": message}
        return (
            head
            + self._event("error", error)
            + self._event("response.failed", {"response": response})
        )
