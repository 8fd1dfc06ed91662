"""``llm-gateway mock-upstream``: the mock as a process of its own (the server is imported only
when the command runs, so the command line starts fast)."""

from __future__ import annotations

import click


@click.command("mock-upstream")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=9090, show_default=True, help="Port to listen on.")
@click.option(
    "--chunks",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Content chunks per completion.",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Words per chunk.",
)
@click.option(
    "--delay",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds between events.",
)
@click.option(
    "--first-byte-delay",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds before the response headers.",
)
@click.option(
    "--slow-first-ratio",
    type=click.FloatRange(min=0, max=1),
    default=0.0,
    show_default=True,
    help="Share of requests (every 1/ratio-th, evenly) that wait --slow-first-delay instead.",
)
@click.option(
    "--slow-first-delay",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds before the response headers of the slow share of requests.",
)
@click.option(
    "--fail-status",
    type=click.IntRange(min=400, max=599),
    default=None,
    help="Answer every request with this error status (a deployment that is down).",
)
def mock_upstream(
    host: str,
    port: int,
    chunks: int,
    chunk_size: int,
    delay: float,
    first_byte_delay: float,
    slow_first_ratio: float,
    slow_first_delay: float,
    fail_status: int | None,
) -> None:
    """Run the built-in OpenAI-compatible mock upstream (demos, tests, benchmarks).

    Every request may override the behaviour with a "mock" object in its body or X-Mock-* headers
    (fail_status, fail_before_first_byte, die_after, stall_after, error_after, ...);
    POST /_mock/behaviour changes the defaults at run time, globally or per upstream API key.
    """
    from gateway.mock.behaviour import MockBehaviour
    from gateway.mock.server import run_mock

    behaviour = MockBehaviour(
        chunks=chunks,
        chunk_size=chunk_size,
        delay=delay,
        first_byte_delay=first_byte_delay,
        slow_first_ratio=slow_first_ratio,
        slow_first_delay=slow_first_delay,
        fail_status=fail_status,
    )
    run_mock(host, port, behaviour)
