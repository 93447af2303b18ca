"""The ReadModel behaviours on the in-memory backend (`MemoryReadModel` over a
`MemoryEventLog`), and what only it does: `sql` and `schema` are not available."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tracklog.daemon.storage.eventlog import AppendResult
from tracklog.daemon.storage.memory import MemoryEventLog
from tracklog.daemon.storage.memory_readmodel import MemoryReadModel
from tracklog.daemon.storage.readmodel import ReadModel
from tracklog.protocol import errors
from tracklog.protocol.messages import Append, Codec, Query

from .readmodel_suite import EVENTS, RECORDED, ReadModelSuite

CODEC = Codec()


def fill_memory(events: list[dict[str, Any]]) -> MemoryEventLog:
    """A memory log holding events, appended one per group as the daemon's writer does."""
    log = MemoryEventLog(clock=lambda: RECORDED)
    for event in events:
        msg = CODEC.decode(json.dumps({"op": "append", "events": [event]}))
        assert isinstance(msg, Append) and not msg.rejected, msg
        for result in log.append_group([msg]):
            assert isinstance(result, AppendResult), result
    return log


class TestMemoryReadModel(ReadModelSuite):
    def build(self, events: list[dict[str, Any]]) -> ReadModel:
        return MemoryReadModel(fill_memory(events))


@pytest.mark.parametrize("question", ["sql", "schema"])
def test_sql_and_schema_are_not_available(question: str) -> None:
    model = MemoryReadModel(fill_memory(EVENTS))
    with pytest.raises(errors.BadQuery, match="not available on the memory backend"):
        getattr(model, question)(Query(q=question, text="SELECT 1"))


def test_the_model_follows_events_appended_after_it_was_made() -> None:
    log = fill_memory(EVENTS[:1])
    model = MemoryReadModel(log)
    before = model.applied_seq()
    msg = CODEC.decode(json.dumps({"op": "append", "events": [EVENTS[1]]}))
    assert isinstance(msg, Append)
    log.append_group([msg])
    assert model.applied_seq() == before + 1


def test_a_snapshot_sees_one_state_while_the_log_goes_on() -> None:
    """Questions inside one snapshot (an export's reads) do not see events appended meanwhile."""
    log = fill_memory(EVENTS[:1])
    model = MemoryReadModel(log)
    msg = CODEC.decode(json.dumps({"op": "append", "events": [EVENTS[1]]}))
    assert isinstance(msg, Append)
    with model.snapshot("export"):
        before = model.applied_seq()
        runs_before = model.runs(Query(q="runs"))
        log.append_group([msg])
        assert model.applied_seq() == before
        assert model.runs(Query(q="runs")) == runs_before
    assert model.applied_seq() == before + 1
