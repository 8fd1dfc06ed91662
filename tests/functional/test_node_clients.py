"""openai-node and the Vercel AI SDK (Responses mode, its default, and chat mode) against the real
gateway: the JavaScript clients people put in front of it, run by Node."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import openai
import pytest

from tests.conftest import Proc

NODE_DIR = Path(__file__).resolve().parent.parent / "node"


@pytest.fixture(scope="session")
def node_clients() -> Path:
    """tests/node with its packages installed from the npm registry (once)."""
    assert shutil.which("node") and shutil.which("npm"), "bin/ensure-test-tools installs Node"
    if not (NODE_DIR / "node_modules" / "@ai-sdk" / "openai").is_dir():
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR, check=True, timeout=300,
        )  # fmt: skip
    return NODE_DIR / "clients.mjs"


async def test_node_clients_read_the_same_answer(gateway_on_mock: Proc, node_clients: Path) -> None:
    """Chat (JSON and stream), Responses stream, base64 embeddings and both Vercel AI SDK modes
    all get the text the Python SDK gets."""
    result = subprocess.run(
        ["node", str(node_clients), gateway_on_mock.url, "mock-gpt"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    client = openai.AsyncOpenAI(base_url=gateway_on_mock.url + "/v1", api_key="unused")
    chat = await client.chat.completions.create(
        model="mock-gpt", messages=[{"role": "user", "content": "tell me something"}]
    )
    vector = (await client.embeddings.create(model="mock-gpt", input="hello")).data[0].embedding
    await client.close()
    text = chat.choices[0].message.content
    assert text
    for name in ("chat", "chatStream", "responsesStream", "vercelResponses", "vercelChat"):
        assert seen[name] == text, name
    assert seen["vercelResponsesUsage"] and seen["vercelResponsesUsage"] > 0
    assert seen["embedding"] == pytest.approx(vector[:4])  # base64 decoded to the same floats
