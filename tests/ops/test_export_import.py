"""`tracklog log export` / `log import`: JSON Lines that read back to the very events the
log holds (floats, big ints, unicode, NaN, bytes), streamed, and imports that are idempotent
and refuse a file that disagrees with the log, naming the seq."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tracklog.daemon import ops_commands
from tracklog.daemon.logfile import BadLine, decode_line, encode_line
from tracklog.daemon.logops import Conflict, import_log
from tracklog.daemon.storage.memory import MemoryEventLog
from tracklog.protocol.messages import StoredEvent

from .helpers import blobs, export_bytes, fill, sqlite_log


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "source.db"
    log = sqlite_log(path)
    fill(log)
    log.close()
    return path


def test_an_export_imported_into_an_empty_database_gives_the_same_log_byte_for_byte(
    source: Path, tmp_path: Path
) -> None:
    log = sqlite_log(source)
    exported = export_bytes(log)
    head = log.head
    log.close()
    lines = exported.splitlines()
    assert len(lines) == head and [json.loads(line)["seq"] for line in lines] == list(range(1, head + 1))
    first = json.loads(lines[0])
    assert list(first) == ["seq", "id", "type", "run", "ts", "recorded", "data"]
    assert first["data"]["config"]["big"] == 2**63 - 1 and "🚀" in first["data"]["name"]
    # NaN and bytes have no JSON: those lines carry the data's MessagePack instead.
    assert any(b'"data_msgpack"' in line for line in lines)
    target = tmp_path / "target.db"
    imported = sqlite_log(target)
    done = import_log(imported, io.BytesIO(exported))
    assert (done.appended, done.matched, done.head) == (head, 0, head)
    assert export_bytes(imported) == exported
    assert imported.verify(io.StringIO()) == 0
    imported.close()
    assert blobs(target) == blobs(source)  # the stored MessagePack too, not only its meaning


def test_floats_round_trip_to_the_same_bits() -> None:
    for value in [0.1, 1 / 3, 5e-324, 2.2250738585072014e-308, 1e23, -0.0, 123456789.123456789, 2.0**53 + 2]:
        event = StoredEvent(1, "metrics", {"values": {"x": value}}, 1.5, 0.1 + 0.2, "i", "r")
        back = decode_line(encode_line(event), 1)
        assert back == event and repr(back.data["values"]["x"]) == repr(value)


def test_importing_the_same_file_again_changes_nothing(source: Path, tmp_path: Path) -> None:
    log = sqlite_log(source)
    exported = export_bytes(log)
    again = import_log(log, io.BytesIO(exported))
    assert again.appended == 0 and again.matched == log.head
    log.close()
    before = blobs(source)
    assert ops_commands.log_import(source, io.BytesIO(exported), err=io.StringIO()) == 0
    assert blobs(source) == before


def test_an_import_continues_a_log_from_its_head(source: Path, tmp_path: Path) -> None:
    log = sqlite_log(source)
    exported = export_bytes(log)
    head = log.head
    log.close()
    target = sqlite_log(tmp_path / "target.db")
    part = b"".join(exported.splitlines(keepends=True)[: head // 2])
    assert import_log(target, io.BytesIO(part)).head == head // 2
    done = import_log(target, io.BytesIO(exported))
    assert (done.matched, done.appended, done.head) == (head // 2, head - head // 2, head)
    target.close()


def test_a_file_that_disagrees_with_the_log_is_refused_naming_the_first_seq(source: Path) -> None:
    log = sqlite_log(source)
    lines = export_bytes(log).splitlines(keepends=True)
    head = log.head
    changed = json.loads(lines[4])
    changed["ts"] += 1
    lines[4] = json.dumps(changed).encode() + b"\n"
    extra = json.loads(lines[-1]) | {"seq": head + 1, "id": "new"}
    lines.append(json.dumps(extra).encode() + b"\n")
    with pytest.raises(Conflict, match=r"seq 5: .*ts differ"):
        import_log(log, io.BytesIO(b"".join(lines)))
    assert log.head == head  # nothing after the conflict was appended
    err = io.StringIO()
    log.close()
    assert ops_commands.log_import(source, io.BytesIO(b"".join(lines)), err=err) == 1
    assert "refused: seq 5:" in err.getvalue()


def test_a_file_whose_seqs_do_not_rise_or_whose_lines_are_not_events_is_refused(tmp_path: Path) -> None:
    event = StoredEvent(2, "run.deleted", {}, 1.0, 1.0, None, "r")
    log = MemoryEventLog()
    with pytest.raises(BadLine, match="line 2: seq 2 does not follow seq 2"):
        import_log(log, [encode_line(event), encode_line(event)])
    with pytest.raises(BadLine, match="line 1: not a stored event"):
        import_log(log, [b'{"seq": "x"}'])
    assert log.head == 0


def test_an_id_the_log_holds_at_another_seq_is_refused(tmp_path: Path) -> None:
    log = MemoryEventLog()
    log.append_stored([StoredEvent(1, "run.deleted", {}, 1.0, 1.0, "same", "r")])
    with pytest.raises(Exception, match="seq 2: id 'same' is in the log already, at seq 1"):
        import_log(log, [encode_line(StoredEvent(2, "run.restored", {}, 1.0, 1.0, "same", "r"))])


def test_an_export_takes_a_range_or_one_run(source: Path) -> None:
    log = sqlite_log(source)
    seqs = [json.loads(line)["seq"] for line in export_bytes(log, from_seq=10, to_seq=20).splitlines()]
    assert seqs == list(range(11, 21))
    runs = {json.loads(line)["run"] for line in export_bytes(log, run="run-1").splitlines()}
    assert runs == {"run-1"}
    # One run's events imported into an empty log: a log of that run, seqs kept.
    part = export_bytes(log, run="run-1")
    log.close()
    memory = MemoryEventLog()
    import_log(memory, io.BytesIO(part))
    assert export_bytes(memory) == part


def test_an_export_reads_a_snapshot_up_to_the_head_it_began_at(source: Path) -> None:
    """While it streams, later appends (a daemon writing) are not in it."""
    reader = sqlite_log(source)
    head = reader.head
    writer = sqlite_log(source)
    out = io.BytesIO()
    stream = reader.stream(to_seq=head, batch=10)
    first = next(stream)
    writer.append_stored([StoredEvent(head + 1, "run.deleted", {}, 1.0, 1.0, None, "run-0")])
    rest = list(stream)
    assert [first.seq] + [e.seq for e in rest] == list(range(1, head + 1))
    assert ops_commands.log_export(source, out, err=io.StringIO()) == 0
    assert len(out.getvalue().splitlines()) == head + 1
    reader.close()
    writer.close()
