"""The thin client's waiting calls: near-duplicate checks, filter_duplicates, the cache, cache_key."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from websockets.sync.server import Server, ServerConnection, serve

import tracklog
from tests.client.conftest import Daemon, free_port, stored_events
from tracklog.protocol import errors


@pytest.fixture
def tl(daemon: Daemon, make_tracker: Callable[..., tracklog.Tracker]) -> tracklog.Tracker:
    return make_tracker(daemon.url)


def test_check_hash_records_first_and_finds_the_duplicate_second(tl: tracklog.Tracker) -> None:
    run = tl.start_run("dedup")
    first = run.check_hash("some text", namespace="pipe", item="a")
    second = run.check_hash("some text", namespace="pipe", item="b")
    assert not first.duplicate and first.match is None and first.recorded is not None
    assert second.duplicate and second.match is not None
    assert (second.match.item, second.match.run, second.match.distance) == ("a", run.id, 0)


def test_check_hash_takes_values_whatever_their_key_order(tl: tracklog.Tracker) -> None:
    run = tl.start_run()
    run.check_hash({"host": "h", "port": 1}, namespace="cfg")
    assert run.check_hash({"port": 1, "host": "h"}, namespace="cfg").duplicate
    assert not run.check_hash({"port": 2, "host": "h"}, namespace="cfg").duplicate


def test_namespaces_keep_entries_apart_and_last_across_runs(tl: tracklog.Tracker) -> None:
    one = tl.start_run()
    one.check_simhash("the quick brown fox jumps", namespace="a")
    two = tl.start_run()
    assert two.check_simhash("The quick  brown fox JUMPS", namespace="a").duplicate
    assert not two.check_simhash("The quick brown fox jumps", namespace="b").duplicate


def test_check_embedding_accepts_numpy_vectors_and_names_a_wrong_dimension(tl: tracklog.Tracker) -> None:
    np = pytest.importorskip("numpy")
    run = tl.start_run()
    assert not run.check_embedding(np.array([0.0, 1.0, 0.0]), space="tiny", namespace="e").duplicate
    near = run.check_embedding([0.0, 1.0, 0.02], space="tiny", namespace="e", record=False)
    assert near.duplicate and near.match is not None and near.match.distance < 0.05
    with pytest.raises(errors.BadMessage, match=r"^check\.vector: expected 3 dimensions"):
        run.check_embedding([1.0, 0.0], space="tiny", namespace="e")


def test_check_many_answers_each_input_in_order(tl: tracklog.Tracker) -> None:
    run = tl.start_run()
    results = run.check_many(["x", "y", "x"], kind="hash", namespace="m", items=["1", "2", "3"])
    assert [r.duplicate for r in results] == [False, False, True]
    assert results[2].match is not None and results[2].match.item == "1"


def test_filter_duplicates_yields_new_records_and_logs_each_dropped_one_as_a_duplicate_item(
    tl: tracklog.Tracker, daemon: Daemon
) -> None:
    run = tl.start_run()
    records = [{"id": i, "text": t} for i, t in enumerate(["a b c", "d e f", "A  B C", "g h i", "d e f"])]
    kept = list(run.filter_duplicates(records, namespace="f", kind="simhash", key=lambda r: r["text"],
                                      item=lambda r: str(r["id"]), stage="clean", batch_size=2))
    assert [r["id"] for r in kept] == [0, 1, 3]
    assert tl.flush(30)
    items = [e for e in stored_events(daemon.url, run=run.id, types=["item"])]
    assert [(e["data"]["item"], e["data"]["status"], e["data"]["stage"]) for e in items] == [
        ("2", "duplicate", "clean"), ("4", "duplicate", "clean")]
    assert items[0]["data"]["data"]["match"]["item"] == "0"


def test_the_cache_sets_gets_invalidates_and_clears(tl: tracklog.Tracker) -> None:
    tl.cache.set("schema:db1", {"tables": ["a"]}, ttl=3600)
    tl.cache.set("card:m", "text")
    assert tl.cache.get("schema:db1") == {"tables": ["a"]}
    assert tl.cache.get("absent", default="d") == "d"
    tl.cache.invalidate("schema:db1")
    assert tl.cache.get("schema:db1") is None
    assert tl.cache.get("card:m") == "text"
    tl.cache.clear()
    assert tl.cache.get("card:m") is None


def test_get_or_set_computes_once_and_then_reads_the_cache(tl: tracklog.Tracker) -> None:
    calls: list[int] = []

    def compute() -> dict[str, int]:
        calls.append(1)
        return {"n": len(calls)}

    assert tl.cache.get_or_set("k", compute, ttl=60) == {"n": 1}
    assert tl.cache.get_or_set("k", compute, ttl=60) == {"n": 1}
    assert len(calls) == 1


def test_cache_keys_ignore_order_and_secrets_but_not_other_details() -> None:
    a = tracklog.cache_key("db_schema", host="db1", port=5432, password="s3cret", API_KEY="k")
    b = tracklog.cache_key("db_schema", port=5432, host="db1", password="other")
    assert a == b
    assert a != tracklog.cache_key("db_schema", host="db2", port=5432)
    assert a != tracklog.cache_key("model_card", host="db1", port=5432)
    assert tracklog.cache_key("x", opts={"auth_token": "t", "tokenizer": "bert"}) == tracklog.cache_key(
        "x", opts={"tokenizer": "bert"})
    assert tracklog.cache_key("x", opts={"tokenizer": "bert"}) != tracklog.cache_key(
        "x", opts={"tokenizer": "t5"}
    )
    assert tracklog.cache_key("x", dsn="postgresql://u:pw1@h:5/db") == tracklog.cache_key(
        "x", dsn="postgresql://u:pw2@h:5/db")
    assert "s3cret" not in a


def test_checks_raise_daemon_unavailable_when_no_daemon_listens(
    make_tracker: Callable[..., tracklog.Tracker],
) -> None:
    tl = make_tracker(f"ws://127.0.0.1:{free_port()}/ws")
    run = tl.start_run()
    with pytest.raises(tracklog.DaemonUnavailable, match="cannot reach"):
        run.check_hash("x", namespace="n", timeout=5)
    assert isinstance(tracklog.DaemonUnavailable("x"), errors.TracklogError)
    records = ["a", "a"]
    assert list(run.filter_duplicates(records, namespace="n", on_unavailable="keep", timeout=5)) == records
    assert tl.cache.get_or_set("k", lambda: 7) == 7


@pytest.fixture
def silent_daemon() -> Iterator[str]:
    """A server that says welcome and then never answers: for the timeout."""
    answered = threading.Event()

    def handler(ws: ServerConnection) -> None:
        ws.recv()
        ws.send(b"\x84\xa2op\xa7welcome\xa8protocol\x01\xa6server\xa4fake\xa4head\x00")
        answered.set()
        for _ in ws:
            pass

    server: Server = serve(handler, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/ws"
    finally:
        server.shutdown()
        thread.join(30)


def test_a_check_that_gets_no_answer_raises_a_timeout_that_is_a_daemon_unavailable(
    silent_daemon: str, make_tracker: Callable[..., tracklog.Tracker]
) -> None:
    tl = make_tracker(silent_daemon)
    run = tl.run("r")
    with pytest.raises(tracklog.RequestTimeout):
        run.check_hash("x", namespace="n", timeout=0.2)
