"""The usage spool: a dead worker's file, adoption, deletion once delivered, compaction."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from gateway import spool as spool_module
from gateway.spool import CRASH_TERMINATION, Spool, read_spool, recover_orphans
from gateway.store.base import StatsEvent


def event(n: int, **fields: object) -> StatsEvent:
    base: dict[str, object] = {
        "request_id": f"r{n}", "key_id": "key_a", "model": "m", "deployment": "d",
        "route": "/v1/chat/completions", "status": 200, "prompt_tokens": 3,
        "completion_tokens": 5, "tokens_exact": True, "cache_hit": False, "latency_ms": 1.0,
        "ttfb_ms": 0.5, "termination": "completed", "ts": 1795390000.0 + n,
    }  # fmt: skip
    return StatsEvent(**{**base, **fields})  # type: ignore[arg-type]


def test_a_dead_workers_file_yields_undelivered_events_and_crash_records(tmp_path: Path) -> None:
    """Ended-but-undelivered events come back as they were; requests begun and never ended
    become worker_crash events with their last progress, estimated; a torn line is ignored."""
    done, waiting = event(1), event(2)
    lines = [
        {"b": done.event_id, "rid": "r1", "ts": done.ts, "route": "/v1/chat/completions"},
        {"e": done}, {"d": [done.event_id]},
        {"b": waiting.event_id, "rid": "r2", "ts": waiting.ts, "route": "/v1/chat/completions"},
        {"e": waiting},
        {"b": "live", "rid": "r3", "ts": 1795390100.0, "route": "/v1/chat/completions"},
        {"p": "live", "key": "key_b", "model": "m2", "dep": "d", "prompt": 7, "completion": 11},
    ]  # fmt: skip
    path = tmp_path / "w.spool"
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines) + b'{"b": "torn')
    found = read_spool(path, now=1795390102.0)
    assert [e.event_id for e in found.ended] == [waiting.event_id]
    assert found.ended[0] == waiting
    [crash] = found.crashes
    assert (crash.event_id, crash.request_id) == ("live", "r3")
    assert (crash.key_id, crash.model) == ("key_b", "m2")
    assert (crash.prompt_tokens, crash.completion_tokens, crash.tokens_exact) == (7, 11, False)
    assert crash.termination == CRASH_TERMINATION and crash.latency_ms == pytest.approx(2000)


async def test_spool_round_trip_adoption_and_deletion(tmp_path: Path) -> None:
    """A file with undelivered events outlives its worker; the next worker adopts it, and the
    file goes once its events are delivered. A clean close with nothing pending leaves nothing."""
    first = Spool(tmp_path, fsync_interval=0.05)
    assert first.open() == []
    kept, sent = event(1), event(2)
    first.begin(kept.event_id, "r1", kept.ts, kept.route)
    first.begin(sent.event_id, "r2", sent.ts, sent.route)
    first.begin("in-flight", "r3", 1795390003.0, "/v1/chat/completions")
    first.ended(kept)
    first.ended(sent)
    first.delivered([sent.event_id])
    path = first.path
    assert path is not None
    # A live worker's file is locked: recovery leaves it alone.
    assert recover_orphans(tmp_path).events == []
    await first.close()  # like a crash as far as the file goes: it had work pending
    assert path.exists()
    recovered = recover_orphans(tmp_path)
    assert ([e.event_id for e in recovered.ended], [e.event_id for e in recovered.crashes]) == (
        [kept.event_id], ["in-flight"])  # fmt: skip
    second = Spool(tmp_path, fsync_interval=0.05)
    adopted = second.open()
    assert sorted(e.event_id for e in adopted) == sorted([kept.event_id, "in-flight"])
    second.delivered([e.event_id for e in adopted])
    assert not path.exists()
    await second.close()
    assert list(tmp_path.iterdir()) == []


async def test_compaction_keeps_only_what_is_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the size threshold the file is rewritten with live requests and undelivered events
    only, and still reads back the same."""
    monkeypatch.setattr(spool_module, "COMPACT_BYTES", 4096)
    spool = Spool(tmp_path, fsync_interval=0.05)
    spool.open()
    for n in range(100):
        e = event(n)
        spool.begin(e.event_id, e.request_id, e.ts, e.route)
        spool.ended(e)
        spool.delivered([e.event_id])
    pending = event(1000)
    spool.begin(pending.event_id, pending.request_id, pending.ts, pending.route)
    spool.ended(pending)
    spool.begin("live", "r", 1795390000.0, "/v1/completions")
    assert spool.path is not None
    before = spool.path.stat().st_size
    spool._maybe_compact()
    after = spool.path.stat().st_size
    assert after < before / 10
    found = read_spool(spool.path)
    assert [e.event_id for e in found.ended] == [pending.event_id]
    assert [e.event_id for e in found.crashes] == ["live"]
    spool.ended(event(2000))  # the new file takes appends
    assert len(read_spool(spool.path).ended) == 2
    await spool.close()
    assert os.listdir(tmp_path)  # undelivered events: the file stays for the next start


def test_costs_survive_the_spool_and_old_lines_still_load(tmp_path: Path) -> None:
    """An event's cost and hedge cost come back from a dead worker's spool as they were; a line
    written before costs existed loads with an unknown cost."""
    priced = event(1, cost_usd=0.0125, cost_exact=False, hedge_cost_usd=0.002)
    old = {k: v for k, v in orjson.loads(orjson.dumps(event(2))).items()
           if k not in {"cost_usd", "cost_exact", "hedge_cost_usd"}}  # fmt: skip
    path = tmp_path / "w.spool"
    path.write_bytes(orjson.dumps({"e": priced}) + b"\n" + orjson.dumps({"e": old}) + b"\n")
    found = {e.event_id: e for e in read_spool(path).ended}
    assert found[priced.event_id] == priced
    assert found[old["event_id"]].cost_usd is None
