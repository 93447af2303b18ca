"""The spool file: records in order, acks survive a reopen, a torn tail is cut, one owner at a time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tracklog.spool import HEADER_SIZE, Spool, SpoolFile


def test_records_come_back_in_the_order_they_were_written(tmp_path: Path) -> None:
    spool = SpoolFile.create(tmp_path)
    ends = [spool.append(f"batch {i}".encode(), i + 1) for i in range(3)]
    got = [spool.read_next() for _ in range(3)]
    assert [g[0] for g in got if g] == [b"batch 0", b"batch 1", b"batch 2"]
    assert [g[2] for g in got if g] == ends
    assert spool.read_next() is None
    spool.close(delete=True)


def test_a_rewind_resends_everything_after_the_last_ack(tmp_path: Path) -> None:
    spool = SpoolFile.create(tmp_path)
    first = spool.append(b"a", 1)
    spool.append(b"b", 1)
    spool.read_next()
    spool.read_next()
    spool.ack(first, 1)
    spool.rewind()
    record = spool.read_next()
    assert record is not None and record[0] == b"b"
    spool.close(delete=True)


def test_a_spool_held_by_a_tracker_cannot_be_adopted(tmp_path: Path) -> None:
    owner = SpoolFile.create(tmp_path)
    owner.append(b"x", 1)
    assert SpoolFile.adopt(owner.path) is None
    owner.close(delete=False)
    adopted = SpoolFile.adopt(owner.path)
    assert adopted is not None and adopted.unacked_events == 1
    adopted.close(delete=True)


def test_an_adopted_spool_starts_after_what_its_owner_saw_acked(tmp_path: Path) -> None:
    owner = SpoolFile.create(tmp_path)
    first = owner.append(b"acked", 5)
    owner.append(b"not yet", 7)
    owner.read_next()
    owner.ack(first, 5)
    owner.close(delete=False)
    adopted = SpoolFile.adopt(owner.path)
    assert adopted is not None
    assert adopted.unacked_events == 7
    record = adopted.read_next()
    assert record is not None and record[0] == b"not yet"
    adopted.close(delete=True)


def test_a_record_cut_short_by_a_crash_is_dropped_and_the_rest_kept(tmp_path: Path) -> None:
    owner = SpoolFile.create(tmp_path)
    owner.append(b"whole", 1)
    end = owner.append(b"torn record", 1)
    owner.close(delete=False)
    os.truncate(owner.path, end - 3)
    adopted = SpoolFile.adopt(owner.path)
    assert adopted is not None and adopted.unacked_events == 1
    record = adopted.read_next()
    assert record is not None and record[0] == b"whole"
    assert adopted.read_next() is None
    adopted.close(delete=True)


def test_a_fully_acked_spool_is_deleted_when_adopted(tmp_path: Path) -> None:
    owner = SpoolFile.create(tmp_path)
    end = owner.append(b"done", 1)
    owner.read_next()
    owner.ack(end, 1)
    owner.close(delete=False)
    assert SpoolFile.adopt(owner.path) is None
    assert not owner.path.exists()


def test_a_spool_whose_process_died_is_adopted_by_the_next_one(tmp_path: Path) -> None:
    script = (
        "import os, sys; from pathlib import Path; from tracklog.spool import SpoolFile\n"
        "s = SpoolFile.create(Path(sys.argv[1])); s.append(b'left behind', 3); os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=60)
    spool = Spool(tmp_path)
    assert spool.adopt_orphans() == 3
    assert Spool(tmp_path).adopt_orphans() == 0  # the first one holds it
    spool.close()


def test_an_emptied_spool_is_deleted_on_close_and_a_full_one_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    own = spool.own_file()
    end = own.append(b"x", 1)
    own.read_next()
    own.ack(end, 1)
    spool.collect()
    assert own.size == HEADER_SIZE
    spool.close()
    assert list(tmp_path.iterdir()) == []
    spool = Spool(tmp_path)
    spool.own_file().append(b"y", 1)
    spool.close()
    assert len(list(tmp_path.glob("*.spool"))) == 1
