"""Near-duplicate indexes (daemon/dedup.py) and checks through the log store."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracklog.daemon import dedup as dd
from tracklog.daemon import dedup_persist as dp
from tracklog.daemon.storage.eventlog import CheckResult
from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog
from tracklog.protocol import errors
from tracklog.protocol.events import DedupCleared, DedupClearedData
from tracklog.protocol.messages import Check, CheckInput


def _bench_common() -> Any:
    """bench/_common.py, loaded by its path: bench/dedup.py draws its hashes and vectors with
    the same helpers."""
    path = Path(__file__).parents[2] / "bench" / "_common.py"
    spec = importlib.util.spec_from_file_location("bench_common", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_bench = _bench_common()
flip_bits = _bench.flip_bits
random_simhashes = _bench.random_simhashes
unit_vectors = _bench.unit_vectors

# -- keys -------------------------------------------------------------------------------


def test_simhash_ignores_case_width_and_runs_of_white_space() -> None:
    assert dd.simhash("The  quick\tbrown\nFOX") == dd.simhash("the quick brown fox")
    assert dd.simhash("\uff46\uff55\uff4c\uff4c width") == dd.simhash(
        "full width"
    )  # NFKC: full-width letters


def test_simhash_of_an_empty_text_is_zero() -> None:
    assert dd.simhash("") == 0
    assert dd.simhash("   \n") == 0


def test_simhash_is_stable_across_processes() -> None:
    # blake2b token hashes, not Python's salted hash(): a fixed value for a fixed text.
    assert dd.simhash("hello big world") == 8887824329927820467  # version 2 (was 943157930321360379)


# Paraphrase-like pairs (the same text up to case, punctuation, width, or one word of a
# 35-word text) and pairs that are not duplicates; bench/dedup.py prints their distances.
_LONG = (
    "Near-duplicate detection keeps a pipeline from translating, embedding or labelling the same "
    "document twice; it compares a short fingerprint of each new text with the fingerprints already "
    "recorded and reports the closest one when it is within the threshold."
)
NEAR_PAIRS = [
    ("The quick brown fox jumps over the lazy dog", "The quick brown fox jumps over the lazy dog!"),
    ("Hello, World! How are you today?", "hello world how are you today"),
    (
        "Machine learning models need large amounts of training data to generalise well.",
        "Machine-learning models need large amounts of training data to generalise well",
    ),
    (
        "\uff34\uff28\uff25 \uff51\uff55\uff49\uff43\uff4b \uff42\uff52\uff4f\uff57\uff4e \uff46\uff4f\uff58 "
        "\uff4a\uff55\uff4d\uff50\uff53 \uff4f\uff56\uff45\uff52 \uff54\uff48\uff45 \uff4c\uff41\uff5a\uff59 "
        "\uff44\uff4f\uff47",
        "the quick brown fox jumps over the lazy dog",
    ),
    (
        "CAF\u00c9 AU LAIT, S'IL VOUS PLA\u00ceT \u2014 merci beaucoup, madame.",
        "Caf\u00e9 au lait s'il vous pla\u00eet... Merci beaucoup madame",
    ),
    (_LONG, _LONG.replace("labelling", "tagging")),
    (_LONG, _LONG.replace("within the threshold", "under the threshold")),
    (_LONG, _LONG.replace(";", ",").replace("document", "Document") + " "),
]
FAR_PAIRS = [
    ("The quick brown fox jumps over the lazy dog", "A slow red turtle crawls under the busy cat"),
    ("The invoice for order 1234 was paid on Monday", "The invoice for order 5678 was cancelled on Friday"),
    (
        "Machine learning models need large amounts of training data to generalise well.",
        "Deep learning systems require huge datasets before they perform reliably.",
    ),
    (
        _LONG,
        "A cache of query results keeps a dashboard fast; it stores each answer with the seq it reflects "
        "and drops it when the log moves past that seq or its time to live runs out.",
    ),
    ("Hello, World! How are you today?", "Goodbye, world! Where were you yesterday?"),
    ("the cat sat on the mat", "the dog sat on the log"),
]


@pytest.mark.parametrize(("a", "b"), NEAR_PAIRS[:5])
def test_simhash_ignores_case_punctuation_and_width(a: str, b: str) -> None:
    # Version 1 put "...lazy dog" and "...lazy dog!" 6 bits apart: not duplicates at threshold 3.
    assert dd.hamming(dd.simhash(a), dd.simhash(b)) <= dd.DEFAULT_SIMHASH_THRESHOLD


def test_simhash_keeps_one_word_edits_near_and_other_texts_far() -> None:
    near = [dd.hamming(dd.simhash(a), dd.simhash(b)) for a, b in NEAR_PAIRS]
    far = [dd.hamming(dd.simhash(a), dd.simhash(b)) for a, b in FAR_PAIRS]
    assert max(near) <= 6, near
    assert min(far) >= 12, far


def test_simhash_features_are_words_and_pairs_of_adjacent_words() -> None:
    assert dd.simhash_features("Machine-learning, models!") == [
        "machine",
        "learning",
        "models",
        "machine learning",
        "learning models",
    ]
    assert dd.simhash("?!... ---") == 0


def test_simhash_of_texts_differing_in_one_word_is_near() -> None:
    words = [f"word{i}" for i in range(60)]
    a = " ".join(words)
    b = " ".join([*words[:-1], "other"])
    assert dd.hamming(dd.simhash(a), dd.simhash(b)) <= 8
    assert dd.hamming(dd.simhash(a), dd.simhash("an entirely unrelated sentence about cats")) > 8


def test_sha256_key_takes_values_in_canonical_form() -> None:
    assert dd.sha256_key(value={"b": 1, "a": [1, 2]}, has_value=True) == dd.sha256_key(
        value={"a": [1, 2], "b": 1}, has_value=True
    )
    assert dd.canonical_json({"b": 1, "a": 2}) == b'{"a":2,"b":1}'
    assert dd.sha256_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_band_blocks_cover_all_64_bits_once() -> None:
    for blocks in (dd.BLOCKS, 5, 17):
        covered = 0
        for shift, mask in dd.band_blocks(blocks):
            assert covered & (mask << shift) == 0
            covered |= mask << shift
        assert covered == (1 << 64) - 1


# -- SimHash index against brute force ---------------------------------------------------

hashes = st.integers(min_value=0, max_value=(1 << 64) - 1)


@settings(max_examples=150, deadline=None)
@given(
    base=hashes,
    others=st.lists(st.tuples(hashes, st.lists(st.integers(0, 63), max_size=20)), min_size=0, max_size=60),
    query_flips=st.lists(st.integers(0, 63), max_size=20),
    threshold=st.integers(0, dd.MAX_SIMHASH_THRESHOLD),
)
def test_indexed_simhash_search_equals_brute_force(
    base: int, others: list[tuple[int, list[int]]], query_flips: list[int], threshold: int
) -> None:
    index = dd.SimHashIndex()
    # Half the entries are near `base`, so the query (also near it) has neighbours at
    # every distance, not only far random ones.
    for i, (other, flips) in enumerate(others):
        index.add(flip_bits(base, flips) if i % 2 else other, (i + 1, None, None))
    query = flip_bits(base, query_flips)
    assert index.search(query, threshold) == index.brute_force(query, threshold)


@settings(max_examples=40, deadline=None)
@given(values=st.lists(hashes, min_size=1, max_size=80), threshold=st.integers(0, dd.MAX_SIMHASH_THRESHOLD))
def test_bulk_loaded_simhash_index_answers_like_one_built_entry_by_entry(
    values: list[int], threshold: int
) -> None:
    one_by_one = dd.SimHashIndex()
    for i, v in enumerate(values):
        one_by_one.add(v, (i, None, None))
    bulk = dd.SimHashIndex()
    bulk.add_many(np.array(values, dtype=np.uint64), [(i, None, None) for i in range(len(values))])
    for v in values:
        q = v ^ 0b101
        assert bulk.search(q, threshold) == one_by_one.search(q, threshold) == bulk.brute_force(q, threshold)


def test_simhash_index_undo_removes_the_newest_entry_from_every_band() -> None:
    index = dd.SimHashIndex()
    index.add(0xFFFF, (1, None, None))
    assert index.search(0xFFFF, 3) == (0, 0)
    undo = index.add(0xFFFF0000, (2, None, None))
    undo()
    assert len(index) == 1
    assert index.search(0xFFFF0000, 3) is None
    assert set(index.candidates(0xFFFF0000, 3)) == {0}  # only the old entry, through its zero blocks


def test_probes_visit_every_16_bit_key_within_the_radius_and_no_other() -> None:
    assert [len(dd._PROBES[r]) for r in range(5)] == [1, 17, 137, 697, 2517]


@pytest.mark.parametrize("threshold", [3, 8, 16])
def test_both_search_plans_give_the_answer_of_a_scan(threshold: int) -> None:
    rng = np.random.default_rng(threshold)
    values = random_simhashes(rng, 5_000)
    index = dd.SimHashIndex()
    index.add_many(values, [(i + 1, None, None) for i in range(len(values))])
    for k in range(200):
        q = int(values[k * 7]) ^ (1 << (k % 64)) if k % 2 else int(rng.integers(0, 2**63))
        assert (
            index.search_index(q, threshold) == index.brute_force(q, threshold) == index.search(q, threshold)
        )


def test_the_plan_is_the_band_index_at_low_thresholds_and_a_scan_at_high_ones_at_a_million() -> None:
    index = dd.SimHashIndex()
    index.entries = [(0, None, None)] * 1_000_000  # only the size matters to the plan
    assert [index.plan(t) for t in (3, 7, 12, 16)] == ["index", "index", "scan", "scan"]


def test_a_threshold_above_16_is_refused() -> None:
    with pytest.raises(dd.InvalidCheck, match="threshold"):
        dd.probe_radius(17)


# -- embeddings ----------------------------------------------------------------------


def test_embedding_index_finds_a_near_vector_and_grows_past_its_capacity() -> None:
    rng = np.random.default_rng(7)
    index = dd.EmbeddingIndex(8, capacity=4)
    vectors = rng.normal(size=(20, 8)).astype(np.float32)
    for i, v in enumerate(vectors):
        index.add(v, (i + 1, "r", f"i{i}"))
    assert index.index.get_max_elements() >= 20
    label, distance = index.search(vectors[13] * 3.0)  # type: ignore[misc]
    assert label == 13
    assert distance < 1e-5


def test_a_vector_of_the_wrong_dimension_is_refused_by_name() -> None:
    index = dd.EmbeddingIndex(3)
    index.add(np.array([1, 0, 0], dtype=np.float32), (1, None, None))
    with pytest.raises(dd.InvalidCheck, match=r"^vector: expected 3 dimensions"):
        index.search(np.array([1, 0], dtype=np.float32))


@pytest.mark.parametrize(
    ("vector", "problem"),
    [([], "non-empty"), ([0.0, 0.0], "zero vector"), ([1.0, float("nan")], "NaN"), ([[1.0]], "non-empty")],
)
def test_unusable_vectors_are_refused_with_the_field_named(vector: list[float], problem: str) -> None:
    with pytest.raises(dd.InvalidCheck, match=f"^vector: .*{problem}"):
        dd.as_unit_vector(vector)


def test_an_undone_embedding_is_never_a_match() -> None:
    index = dd.EmbeddingIndex(2)
    undo = index.add(np.array([1, 0], dtype=np.float32), (1, None, None))
    undo()
    assert index.search(np.array([1, 0], dtype=np.float32)) is None


def test_rollback_of_the_registry_restores_cleared_namespaces_and_drops_new_entries() -> None:
    reg = dd.DedupIndexes()
    reg.record("ns", "hash", "k1", None, (1, None, None))
    reg.commit()
    reg.record("ns", "hash", "k2", None, (2, None, None))
    reg.clear("ns", None)
    reg.record("ns", "simhash", 5, None, (3, None, None))
    reg.rollback()
    assert reg.find("ns", "hash", "k1") is not None
    assert reg.find("ns", "hash", "k2") is None
    assert "ns" not in reg.simhash


# -- checks through the store ------------------------------------------------------------


def _check(kind: str = "simhash", ref: int | None = None, **kw: object) -> Check:
    return Check(namespace=kw.pop("namespace", "ns"), kind=kind, ref=ref, **kw)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> SqliteEventLog:
    s = SqliteEventLog(tmp_path / "t.db")
    s.catch_up()
    yield s  # type: ignore[misc]
    s.close()


def _checked(result: object) -> CheckResult:
    assert isinstance(result, CheckResult), result
    return result


def test_of_two_checks_of_one_text_in_one_group_only_the_first_records(store: SqliteEventLog) -> None:
    a, b = store.append_group([_check(text="the same text", ref=1), _check(text="the  same TEXT", ref=2)])
    first, second = _checked(a).checked, _checked(b).checked
    assert (first.duplicate, first.recorded) == (False, 1)
    assert second.duplicate
    assert second.match is not None and second.match.seq == 1 and second.match.distance == 0
    assert store.head == 1


def test_a_later_input_of_a_batch_sees_what_an_earlier_one_recorded(store: SqliteEventLog) -> None:
    inputs = [
        CheckInput(text="a b c d", item="x"),
        CheckInput(text="e f g h", item="y"),
        CheckInput(text="A B C D", item="z"),
    ]
    checked = _checked(store.append_group([_check(inputs=inputs)])[0]).checked
    assert checked.results is not None
    assert [r.duplicate for r in checked.results] == [False, False, True]
    assert checked.results[2].match is not None and checked.results[2].match.item == "x"
    assert checked.duplicate and checked.match is None


def test_a_check_without_record_appends_nothing(store: SqliteEventLog) -> None:
    checked = _checked(store.append_group([_check("hash", text="t", record=False)])[0]).checked
    assert not checked.duplicate and checked.recorded is None
    assert store.head == 0
    again = _checked(store.append_group([_check("hash", text="t")])[0]).checked
    assert not again.duplicate


def test_a_failed_group_leaves_no_entry_in_the_index(
    store: SqliteEventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail() -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(store.tables, "flush", fail)
    results = store.append_group([_check("hash", text="t", ref=1)])
    assert isinstance(results[0], errors.InternalError)
    monkeypatch.undo()
    assert store.dedup.find("ns", "hash", dd.sha256_key("t")) is None
    checked = _checked(store.append_group([_check("hash", text="t")])[0]).checked
    assert not checked.duplicate and checked.recorded == 1


def test_a_wrong_dimension_in_a_batch_is_refused_with_its_index_and_records_nothing(
    store: SqliteEventLog,
) -> None:
    inputs = [CheckInput(vector=[1.0, 0.0]), CheckInput(vector=[1.0, 0.0, 0.0])]
    result = store.append_group([_check("embedding", space="s", inputs=inputs, ref=9)])[0]
    assert isinstance(result, errors.BadMessage)
    assert result.message.startswith("check.inputs[1].vector: expected 2 dimensions")
    assert store.head == 0


def test_embedding_checks_in_a_tiny_space_find_near_vectors_below_the_threshold(
    store: SqliteEventLog,
) -> None:
    store.append_group([_check("embedding", space="s", vector=[1.0, 0.0, 0.0], item="a")])
    near = _checked(store.append_group([_check("embedding", space="s", vector=[1.0, 0.05, 0.0])])[0]).checked
    far = _checked(store.append_group([_check("embedding", space="s", vector=[0.0, 1.0, 0.0])])[0]).checked
    other_space = _checked(store.append_group([_check("embedding", space="t", vector=[1.0, 0.0])])[0]).checked
    assert near.duplicate and near.match is not None and near.match.item == "a"
    assert near.match.distance < 0.05
    assert not far.duplicate
    assert not other_space.duplicate


def test_dedup_cleared_forgets_only_its_kind_when_given_one(store: SqliteEventLog) -> None:
    store.append_group([_check("hash", text="t"), _check("simhash", text="t")])
    store.append_events([DedupCleared(data=DedupClearedData(namespace="ns", kind="hash"))])
    hashed = _checked(store.append_group([_check("hash", text="t", record=False)])[0]).checked
    simmed = _checked(store.append_group([_check("simhash", text="t", record=False)])[0]).checked
    assert not hashed.duplicate
    assert simmed.duplicate


def test_indexes_loaded_from_the_table_answer_like_the_live_ones(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    live = SqliteEventLog(path)
    live.catch_up()
    live.append_group(
        [
            _check("simhash", text="one two three", item="a"),
            _check("hash", value={"k": 1}, item="b"),
            _check("embedding", space="s", vector=[0.0, 1.0], item="c"),
        ]
    )
    live.append_events([DedupCleared(data=DedupClearedData(namespace="gone"))])
    live.close()
    again = SqliteEventLog(path)
    try:
        again.catch_up()
        assert again.load_dedup() == 3
        results = again.append_group(
            [
                _check("simhash", text="ONE two three", record=False),
                _check("hash", value={"k": 1}, record=False),
                _check("embedding", space="s", vector=[0.0, 2.0], record=False),
            ]
        )
        items = [_checked(r).checked.match.item for r in results]  # type: ignore[union-attr]
        assert items == ["a", "b", "c"]
        again.rebuild()
        assert again.load_dedup() == 3
    finally:
        again.close()


# -- saved embedding indexes (dedup_persist) ----------------------------------------------


def _record_vectors(
    store: SqliteEventLog, vectors: np.ndarray, namespace: str = "emb", space: str = "s"
) -> None:
    inputs = [CheckInput(vector=v.tolist(), item=f"i{k}") for k, v in enumerate(vectors)]
    result = store.append_group([_check("embedding", namespace=namespace, space=space, inputs=inputs)])[0]
    assert not _checked(result).checked.duplicate


def _save(store: SqliteEventLog, namespace: str = "emb") -> dp.Header | None:
    spaces = dp.snapshot(store.dedup, namespace)
    try:
        return dp.save_namespace(dp.files_dir(store.path), namespace, store.head, spaces)
    finally:
        dp.release(spaces)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A database with 40 vectors in namespace 'emb' (a saved copy of the first 30) and a hash."""
    path = tmp_path / "t.db"
    vectors = unit_vectors(np.random.default_rng(7), 40, 16)
    store = SqliteEventLog(path)
    store.catch_up()
    store.append_group([_check("hash", text="x")])
    _record_vectors(store, vectors[:30])
    assert _save(store) is not None
    _record_vectors(store, vectors[30:])
    store.close()
    return path, vectors


def _load(path: Path, namespace: str = "emb") -> tuple[dict[str, dd.EmbeddingIndex], str, int]:
    store = SqliteEventLog(path)
    try:
        return dp.load_embeddings(store.dedup_entries, dp.files_dir(path), namespace, store.head)
    finally:
        store.close()


def _all_found(built: dict[str, dd.EmbeddingIndex], vectors: np.ndarray) -> bool:
    return all(built["s"].search(v) is not None and built["s"].search(v)[1] < 1e-4 for v in vectors)  # type: ignore[index]


def test_a_saved_index_is_loaded_and_caught_up_with_what_the_log_recorded_after_it(
    saved: tuple[Path, np.ndarray],
) -> None:
    path, vectors = saved
    built, how, added = _load(path)
    assert (how, added) == ("saved", 10)
    assert len(built["s"]) == 40 and _all_found(built, vectors)
    # Found entries name the right item: label k is the k-th recorded vector.
    label, _ = built["s"].search(vectors[35])  # type: ignore[misc]
    assert built["s"].entries[label][2] == "i5"


def _header_path(path: Path) -> Path:
    return dp.files_dir(path) / f"{dp.stem('emb')}.json"


def _edit_header(path: Path, **changes: object) -> None:
    header = msgspec.json.decode(_header_path(path).read_bytes(), type=dp.Header)
    _header_path(path).write_bytes(msgspec.json.encode(msgspec.structs.replace(header, **changes)))


def _hnsw_file(path: Path) -> Path:
    header = msgspec.json.decode(_header_path(path).read_bytes(), type=dp.Header)
    return dp.files_dir(path) / header.spaces[0].file


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _flip_a_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) * 2 // 3] ^= 0xFF
    file.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda p: _edit_header(p, seq=5), id="seq lower than its entries"),
        pytest.param(lambda p: _edit_header(p, seq=35), id="seq higher than its entries"),
        pytest.param(lambda p: _edit_header(p, seq=10_000), id="seq past the log's head"),
        pytest.param(lambda p: _truncate(_hnsw_file(p)), id="truncated hnsw file"),
        pytest.param(lambda p: _flip_a_byte(_hnsw_file(p)), id="corrupt hnsw file"),
        pytest.param(
            lambda p: _truncate(dp.files_dir(p) / _hnsw_file(p).name.replace(".0.hnsw", ".entries")),
            id="truncated entries file",
        ),
        pytest.param(lambda p: _header_path(p).write_bytes(b'{"format": 1, "nam'), id="truncated header"),
        pytest.param(lambda p: _hnsw_file(p).unlink(), id="missing hnsw file"),
    ],
)
def test_a_saved_index_that_does_not_match_the_log_is_rebuilt(
    saved: tuple[Path, np.ndarray], spoil: Any
) -> None:
    path, vectors = saved
    spoil(path)
    built, how, added = _load(path)
    assert (how, added) == ("rebuilt", 40)
    assert len(built["s"]) == 40 and _all_found(built, vectors)


def test_a_saved_index_of_another_dimension_or_other_vectors_is_rebuilt(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for other_dims in (8, 4):  # the same seqs, another dimension; then the same dimension, other vectors
        a, b = tmp_path / f"a{other_dims}.db", tmp_path / f"b{other_dims}.db"
        other = SqliteEventLog(a)
        other.catch_up()
        _record_vectors(other, unit_vectors(rng, 5, other_dims))
        _save(other)
        other.close()
        mine = SqliteEventLog(b)
        mine.catch_up()
        vectors = unit_vectors(rng, 5, 4)
        _record_vectors(mine, vectors)
        mine.close()
        shutil.copytree(dp.files_dir(a), dp.files_dir(b))
        built, how, _ = _load(b)
        assert how == "rebuilt"
        assert built["s"].dim == 4 and _all_found(built, vectors)


def test_a_namespace_cleared_after_its_save_loads_without_the_cleared_vectors(
    saved: tuple[Path, np.ndarray],
) -> None:
    path, vectors = saved
    store = SqliteEventLog(path)
    store.append_events([DedupCleared(data=DedupClearedData(namespace="emb"))])
    _record_vectors(store, vectors[:2])
    store.close()
    built, how, _ = _load(path)
    assert how == "rebuilt" and len(built["s"]) == 2


def test_a_rolled_back_vector_stays_deleted_in_the_saved_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "t.db"
    vectors = unit_vectors(np.random.default_rng(5), 3, 8)
    store = SqliteEventLog(path)
    store.catch_up()
    _record_vectors(store, vectors[:2])
    # The group fails before its COMMIT (as a full disk would): the vector is rolled back.
    monkeypatch.setattr(store.tables, "flush", lambda: (_ for _ in ()).throw(RuntimeError("disk full")))
    assert isinstance(
        store.append_group([_check("embedding", namespace="emb", space="s", vector=vectors[2].tolist())])[0],
        errors.InternalError,
    )
    monkeypatch.undo()
    _save(store)
    store.close()
    built, how, added = _load(path)
    assert (how, added) == ("saved", 0)
    assert len(built["s"]) == 2 and built["s"].search(vectors[2])[1] > 0.01  # type: ignore[index]


def test_load_dedup_uses_the_saved_copy_and_answers_like_the_live_index(
    saved: tuple[Path, np.ndarray],
) -> None:
    path, vectors = saved
    store = SqliteEventLog(path)
    try:
        store.catch_up()
        assert store.load_dedup() == 41
        result = store.append_group(
            [_check("embedding", namespace="emb", space="s", vector=vectors[33].tolist(), record=False)]
        )[0]
        assert _checked(result).checked.match.item == "i3"  # type: ignore[union-attr]
    finally:
        store.close()
