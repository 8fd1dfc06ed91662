"""The built-in mock upstream: for demos, tests and benchmarks.

Content is deterministic (the same request gives the same answer), so tests can compare what a
client received with :func:`gateway.mock.answer.expected_text`. It is built to be fast, because
benchmarks measure the gateway against it: the constant JSON around each piece is encoded once per
stream, and unpaced events are batched into ~16 KiB writes unless ``unbatched`` asks for one write
per event, as real upstreams do (what ``make bench`` measures).

    behaviour.py  MockBehaviour: size, pacing, failures; per-request overrides (X-Mock-*, "mock")
    answer.py     what the mock answers (text, JSON, a tool call, n choices, max_tokens), decided
                  before any byte is written
    openai.py     that answer in the OpenAI API: paced SSE streams, JSON bodies, embeddings
    dialect.py    that answer as an Anthropic or Gemini deployment (the gateway's own encoders)
    control.py    the record of what the mock saw and the /_mock control routes
    server.py     the HTTP server (``llm-gateway mock-upstream``)
    inprocess.py  the embedded ``demo`` model: the same generators behind the upstream interface
"""
