"""UUIDv7 ids: well-formed, unique, and in time order."""

from __future__ import annotations

import time
import uuid

from tracklog.ids import UUID7, uuid7


def test_an_id_is_a_version_7_rfc_9562_uuid() -> None:
    parsed = uuid.UUID(uuid7.new())
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122


def test_an_id_carries_the_millisecond_it_was_made_for() -> None:
    ts = 1_763_850_000.25
    assert int(uuid7(ts).replace("-", "")[:12], 16) == 1_763_850_000_250


def test_ids_are_unique_and_sort_in_the_order_they_were_made() -> None:
    ids = [uuid7(time.time()) for _ in range(50_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


def test_two_sources_never_make_the_same_id_in_the_same_millisecond() -> None:
    a, b = UUID7(), UUID7()
    ts = time.time()
    assert not {a(ts) for _ in range(1000)} & {b(ts) for _ in range(1000)}
