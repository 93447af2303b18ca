"""Near-duplicate detection: exact hashes, SimHash with a band index, and hnswlib for embeddings.

The indexes live in memory on the writer's thread. They are a projection like the tables:
every entry comes from a `dedup.recorded` event, and `dedup.cleared` empties a namespace.
They are built from the `dedup_entries` table (itself rebuilt from the log), so they never
disagree with it; in the daemon that happens after it listens, one (namespace, kind) at a
time, and the embedding indexes come from saved copies checked against the table
(dedup_persist.py).

Inside a group commit, a check that records updates the index at once (so a later check
in the same transaction sees it) and leaves an undo step in a journal; `commit` forgets
the journal, `rollback` replays it backwards, so the indexes always match what was
committed.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import threading
import unicodedata
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import msgspec
import numpy as np

if TYPE_CHECKING:
    from .storage.eventlog import DedupEntries

DedupKind = Literal["hash", "simhash", "embedding"]
#: Thresholds when a check gives none (PROTOCOL.md, "check").
DEFAULT_SIMHASH_THRESHOLD: Final = 3
DEFAULT_EMBEDDING_THRESHOLD: Final = 0.05
MAX_SIMHASH_THRESHOLD: Final = 16
#: The SimHash band index cuts the 64 bits into 4 blocks of 16 bits (multi-index hashing,
#: after Norouzi et al.). A hash within t bits of the query differs in at most t bits
#: spread over 4 blocks, so in some block it is within floor(t / 4) bits of the query's
#: block: probing every key that close to each query block finds every neighbour, exact
#: for any t. For t <= 3 that is the plain pigeonhole case (4 exact lookups); at 1M
#: entries a 16-bit bucket holds about 15 entries, so candidate lists stay short.
BLOCKS: Final = 4
BLOCK_BITS: Final = 16
#: hnswlib parameters, chosen with bench/dedup.py on 200,000 random 384-dimension unit
#: vectors (the hardest case: no structure for the graph to follow). With M=16 a quarter
#: of near-duplicate queries missed their vector; M=32 and ef=128 find them. The nearest
#: neighbour of a query that has no near-duplicate is often missed at any practical ef,
#: which changes no decision: every vector is then far beyond the threshold.
HNSW_M: Final = 32
HNSW_EF_CONSTRUCTION: Final = 200
HNSW_EF: Final = 128
HNSW_INITIAL_CAPACITY: Final = 1024
MAX_VECTOR_DIMS: Final = 65_536

_MASK64: Final = (1 << 64) - 1
_canonical_json = msgspec.json.Encoder(order="sorted").encode
_msgpack_decode = msgspec.msgpack.Decoder().decode

#: Where a recorded entry came from, for `match`: (seq, run, item).
Entry = tuple[int, str | None, str | None]


class InvalidCheck(ValueError):
    """A check's input cannot be used; the message starts with the field's name."""


# -- keys ---------------------------------------------------------------------------------


def canonical_json(value: Any) -> bytes:
    """A JSON value in canonical form: keys sorted, no spaces (so key order does not matter)."""
    return _canonical_json(value)


def sha256_key(text: str | None = None, value: Any = None, *, has_value: bool = False) -> str:
    """The `hash` key: SHA-256 (hex) of the text's UTF-8 bytes, or of the value's canonical JSON."""
    data = canonical_json(value) if has_value else (text or "").encode()
    return hashlib.sha256(data).hexdigest()


#: The SimHash function's version. 1 (before): whitespace tokens of the NFKC, lower-cased
#: text, so "lazy dog" and "lazy dog!" were 6 bits apart. 2: words without punctuation,
#: plus 2-word shingles (chosen by measurement: bench/dedup.py, tests/daemon/test_dedup.py).
#: Recorded hashes are values in the log and stay as they were made; see docs/protocol-check.md.
SIMHASH_VERSION: Final = 2
#: Runs of anything but letters and digits (punctuation, symbols, white space, "_").
_NON_WORD: Final = re.compile(r"[\W_]+")


def normalize_text(text: str) -> str:
    """NFKC, case-folded, every run of non-letters and non-digits made one space, trimmed."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def simhash_features(text: str) -> list[str]:
    """What a SimHash counts: the normalised text's words, then each pair of adjacent words."""
    words = normalize_text(text).split()
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


def token_hash(token: str) -> int:
    """A stable 64-bit hash of a token (Python's `hash` changes between processes)."""
    return int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")


#: Token hashes already computed (vocabularies repeat); cleared when it grows too large.
_TOKEN_HASHES: dict[str, int] = {}
_MAX_CACHED_TOKENS: Final = 1_000_000


def simhash(text: str) -> int:
    """64-bit SimHash (version 2) of the text's features (`simhash_features`, each counted as
    often as it occurs). Bit i is set when more features have bit i set than not. A text with
    no letters or digits hashes to 0. The daemon is the only place it is computed: clients
    send the text."""
    features = simhash_features(text)
    if not features:
        return 0
    cache = _TOKEN_HASHES
    hashes = []
    for feature in features:
        h = cache.get(feature)
        if h is None:
            h = token_hash(feature)
            if len(cache) >= _MAX_CACHED_TOKENS:
                cache.clear()
            cache[feature] = h
        hashes.append(h)
    as_bytes = np.array(hashes, dtype="<u8").view(np.uint8)
    ones = np.unpackbits(as_bytes, bitorder="little").reshape(-1, 64).sum(axis=0, dtype=np.int64)
    majority = np.packbits(2 * ones > len(features), bitorder="little")
    return int.from_bytes(majority.tobytes(), "little")


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def as_unit_vector(vector: Sequence[float] | np.ndarray, field: str = "vector") -> np.ndarray:
    """The vector as float32, checked: not empty, finite, not zero (cosine needs a direction)."""
    arr = np.asarray(vector, dtype=np.float32)
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidCheck(f"{field}: expected a non-empty list of numbers")
    if arr.size > MAX_VECTOR_DIMS:
        raise InvalidCheck(f"{field}: {arr.size} dimensions, at most {MAX_VECTOR_DIMS}")
    if not np.isfinite(arr).all():
        raise InvalidCheck(f"{field}: NaN and infinities are not allowed")
    norm = float(np.linalg.norm(arr))
    if norm == 0.0 or not math.isfinite(norm):
        raise InvalidCheck(f"{field}: a zero vector has no direction")
    return arr


# -- indexes ------------------------------------------------------------------------------


def band_blocks(blocks: int = BLOCKS) -> list[tuple[int, int]]:
    """(shift, mask) of each block when 64 bits are cut into `blocks` contiguous blocks."""
    base, extra = divmod(64, blocks)
    out = []
    shift = 0
    for i in range(blocks):
        width = base + (1 if i < extra else 0)
        out.append((shift, (1 << width) - 1))
        shift += width
    return out


def _probe_masks(radius: int) -> list[int]:
    """Every 16-bit XOR mask of at most `radius` bits (the keys a probe visits around a block)."""
    masks = [m for m in range(1 << BLOCK_BITS) if m.bit_count() <= radius]
    masks.sort(key=int.bit_count)
    return masks


_PROBES: Final = [_probe_masks(r) for r in range(MAX_SIMHASH_THRESHOLD // BLOCKS + 1)]


def probe_radius(threshold: int) -> int:
    """How far from each query block a neighbour within threshold must be in at least one block."""
    if not 0 <= threshold <= MAX_SIMHASH_THRESHOLD:
        raise InvalidCheck(f"threshold: expected 0 to {MAX_SIMHASH_THRESHOLD} for simhash")
    return threshold // BLOCKS


#: The plan cost model's constants, in microseconds (fitted to bench/dedup.py at 1M entries,
#: 2 AMD EPYC cores): per probed band key, per candidate checked, per entry scanned.
_PROBE_US: Final = 0.3
_CANDIDATE_US: Final = 0.08
_SCAN_US: Final = 0.0008


class ExactIndex:
    """SHA-256 keys of one namespace."""

    def __init__(self) -> None:
        self.keys: dict[str, Entry] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def search(self, key: str) -> Entry | None:
        return self.keys.get(key)

    def add(self, key: str, entry: Entry) -> Callable[[], None] | None:
        if key in self.keys:
            return None  # the first recording stays the match
        self.keys[key] = entry

        def undo() -> None:
            del self.keys[key]

        return undo


class SimHashIndex:
    """SimHashes of one namespace, with band tables so a lookup never scans every entry.

    Entries are kept in arrays in the order they were recorded (so in seq order); each
    of the 4 band tables maps a 16-bit block's value to the positions that have it.
    """

    def __init__(self) -> None:
        self.hashes = np.zeros(1024, dtype=np.uint64)
        self.entries: list[Entry] = []
        self._bands: list[tuple[int, dict[int, list[int]]]] = [(shift, {}) for shift, _ in band_blocks()]

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, value: int, entry: Entry) -> Callable[[], None]:
        position = len(self.entries)
        if position == len(self.hashes):
            grown = np.zeros(2 * position, dtype=np.uint64)
            grown[:position] = self.hashes
            self.hashes = grown
        self.hashes[position] = value
        self.entries.append(entry)
        for shift, table in self._bands:
            table.setdefault((value >> shift) & 0xFFFF, []).append(position)
        return self._pop

    def add_many(self, values: np.ndarray, entries: list[Entry]) -> None:
        """Bulk load (start-up, benchmarks): the same result as `add` one by one, faster."""
        n0 = len(self.entries)
        need = n0 + len(values)
        if need > len(self.hashes):
            grown = np.zeros(max(need, 2 * len(self.hashes)), dtype=np.uint64)
            grown[:n0] = self.hashes[:n0]
            self.hashes = grown
        self.hashes[n0:need] = values
        self.entries.extend(entries)
        if len(values) == 0:
            return
        for shift, table in self._bands:
            keys = (values >> np.uint64(shift)) & np.uint64(0xFFFF)
            order = np.argsort(keys, kind="stable")
            sorted_keys = keys[order]
            starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
            bounds = [*starts.tolist(), len(values)]
            positions = (order + n0).tolist()
            for i, key in enumerate(sorted_keys[starts].tolist()):
                chunk = positions[bounds[i] : bounds[i + 1]]
                bucket = table.get(key)
                if bucket is None:
                    table[key] = chunk
                else:
                    bucket.extend(chunk)

    def _pop(self) -> None:
        """Undo the newest `add` (the journal undoes in reverse order, so it is the last)."""
        position = len(self.entries) - 1
        value = int(self.hashes[position])
        for shift, table in self._bands:
            key = (value >> shift) & 0xFFFF
            bucket = table[key]
            bucket.pop()
            if not bucket:
                del table[key]
        self.entries.pop()
        self.hashes[position] = 0

    def candidates(self, value: int, threshold: int) -> list[int]:
        """Positions within floor(threshold / 4) bits of the query in at least one block."""
        masks = _PROBES[probe_radius(threshold)]
        out: list[int] = []
        extend = out.extend
        for shift, table in self._bands:
            get = table.get
            block = (value >> shift) & 0xFFFF
            for mask in masks:
                bucket = get(block ^ mask)
                if bucket:
                    extend(bucket)
        return out

    def plan(self, threshold: int) -> Literal["index", "scan"]:
        """The cheaper way to answer at this threshold and size, by a cost model: probing
        costs a dict lookup per probed key plus a check per candidate (about n / 65,536 per
        key for well-spread hashes); a numpy XOR + popcount scan costs a little per entry.
        At 1M entries the bands win up to threshold 7, about tie at 8 to 11, and lose far
        above (threshold 16 probes 10,068 keys and checks about 150,000 candidates)."""
        n = len(self.entries)
        keys = BLOCKS * len(_PROBES[probe_radius(threshold)])
        by_index = keys * (_PROBE_US + _CANDIDATE_US * n / (1 << BLOCK_BITS))
        return "index" if by_index < _SCAN_US * n else "scan"

    def search(self, value: int, threshold: int) -> tuple[int, int] | None:
        """(position, distance) of the nearest entry within threshold; the earliest on a tie.
        Answered by the band index or by a scan, whichever `plan` says is cheaper (both exact)."""
        if self.plan(threshold) == "scan":
            return self.brute_force(value, threshold)
        return self.search_index(value, threshold)

    def search_index(self, value: int, threshold: int) -> tuple[int, int] | None:
        """`search` through the band tables."""
        found = self.candidates(value, threshold)
        if not found:
            return None
        positions = np.fromiter(found, dtype=np.int64, count=len(found))
        distances = np.bitwise_count(self.hashes[positions] ^ np.uint64(value))
        best = int(distances.min())
        if best > threshold:
            return None
        return int(positions[distances == best].min()), best

    def brute_force(self, value: int, threshold: int) -> tuple[int, int] | None:
        """The same answer as `search`, by scanning every entry (tests and benchmarks)."""
        n = len(self.entries)
        if n == 0:
            return None
        distances = np.bitwise_count(self.hashes[:n] ^ np.uint64(value))
        best = int(distances.min())
        if best > threshold:
            return None
        return int(np.flatnonzero(distances == best)[0]), best


class EmbeddingIndex:
    """Vectors of one (namespace, space) in an hnswlib index, cosine distance, grown by doubling."""

    def __init__(
        self,
        dim: int,
        capacity: int = HNSW_INITIAL_CAPACITY,
        m: int = HNSW_M,
        ef_construction: int = HNSW_EF_CONSTRUCTION,
        ef: int = HNSW_EF,
    ) -> None:
        import hnswlib  # the daemon's extra; imported here so the rest of dedup works without it

        self.dim = dim
        self.index = hnswlib.Index(space="cosine", dim=dim)
        self.index.init_index(max_elements=capacity, ef_construction=ef_construction, M=m, random_seed=100)
        self.index.set_ef(ef)
        self.entries: list[Entry] = []
        self.live = 0
        #: Labels whose add was rolled back (marked deleted in hnswlib; their entries stay in `entries`).
        self.deleted: set[int] = set()
        #: Held around every change to the hnswlib index, and by a save (dedup_persist), so
        #: a save never sees a half-made insert. Lookups read only and take no lock.
        self.lock = threading.Lock()

    @classmethod
    def wrap(cls, index: Any, dim: int, entries: list[Entry], deleted: set[int]) -> EmbeddingIndex:
        """An EmbeddingIndex around an hnswlib index loaded from a saved copy."""
        self = cls.__new__(cls)
        self.dim = dim
        self.index = index
        self.entries = entries
        self.deleted = deleted
        self.live = len(entries) - len(deleted)
        self.lock = threading.Lock()
        return self

    def __len__(self) -> int:
        return self.live

    def _reserve(self, extra: int) -> None:
        capacity = self.index.get_max_elements()
        need = len(self.entries) + extra
        if need > capacity:
            while capacity < need:
                capacity *= 2
            self.index.resize_index(capacity)

    def add(self, vector: np.ndarray, entry: Entry) -> Callable[[], None]:
        self._check_dim(vector)
        with self.lock:
            self._reserve(1)
            label = len(self.entries)
            self.index.add_items(vector.reshape(1, -1), [label], num_threads=1)
            self.entries.append(entry)
            self.live += 1

        def undo() -> None:
            with self.lock:
                self.index.mark_deleted(label)
                self.deleted.add(label)
                self.live -= 1

        return undo

    def add_many(self, vectors: np.ndarray, entries: list[Entry], num_threads: int = -1) -> None:
        """Bulk load (start-up, benchmarks), on all cores."""
        if len(entries) == 0:
            return
        with self.lock:
            self._reserve(len(entries))
            first = len(self.entries)
            self.index.add_items(vectors, np.arange(first, first + len(entries)), num_threads=num_threads)
            self.entries.extend(entries)
            self.live += len(entries)

    def _check_dim(self, vector: np.ndarray) -> None:
        if vector.shape[0] != self.dim:
            raise InvalidCheck(
                f"vector: expected {self.dim} dimensions for this space, got {vector.shape[0]}"
            )

    def search(self, vector: np.ndarray) -> tuple[int, float] | None:
        """(label, cosine distance) of the nearest live vector, or None when there is none."""
        self._check_dim(vector)
        if self.live == 0:
            return None
        labels, distances = self.index.knn_query(vector.reshape(1, -1), k=1, num_threads=1)
        return int(labels[0][0]), max(0.0, float(distances[0][0]))


# -- the registry the store uses ----------------------------------------------------------


class Found(msgspec.Struct, gc=False):
    """The nearest recorded entry of a check: where it came from and how far it is."""

    seq: int
    run: str | None
    item: str | None
    distance: float | int


#: A unit of loading at start: one namespace's entries of one kind (every space, for embeddings).
Unit = tuple[str, str]
#: What a unit loads into: an ExactIndex, a SimHashIndex, or the namespace's embedding spaces.
Built = Any


def read_exact(
    entries: DedupEntries,
    namespace: str,
    after: int = 0,
    upto: int | None = None,
    into: ExactIndex | None = None,
) -> ExactIndex:
    """A namespace's hash entries with after < seq <= upto, added to `into` (or a new index)."""
    index = into if into is not None else ExactIndex()
    for seq, _, blob, run, item in entries.rows(namespace, "hash", after, upto):
        index.add(_msgpack_decode(blob), (seq, run, item))
    return index


def read_simhash(
    entries: DedupEntries,
    namespace: str,
    after: int = 0,
    upto: int | None = None,
    into: SimHashIndex | None = None,
) -> SimHashIndex:
    """A namespace's SimHash entries with after < seq <= upto, bulk-added to `into` (or a new index)."""
    index = into if into is not None else SimHashIndex()
    values: list[int] = []
    held: list[Entry] = []
    decode = _msgpack_decode
    for seq, _, blob, run, item in entries.rows(namespace, "simhash", after, upto):
        values.append(decode(blob))
        held.append((seq, run, item))
    index.add_many(np.array(values, dtype=np.uint64), held)
    return index


_MAX_SEQ: Final = (1 << 63) - 1


_Key = TypeVar("_Key")
_Value = TypeVar("_Value")


def _undo_insert(mapping: dict[_Key, _Value], key: _Key) -> Callable[[], None]:
    """A journal step that takes key back out of mapping (an index made during a batch)."""

    def undo() -> None:
        mapping.pop(key, None)

    return undo


def _undo_removal(mapping: dict[_Key, _Value], key: _Key, value: _Value) -> Callable[[], None]:
    """A journal step that puts value back at key in mapping (an index a clear dropped)."""

    def undo() -> None:
        mapping[key] = value

    return undo


class DedupIndexes:
    """Every namespace's indexes, with an undo journal for the open transaction.

    Units (namespace, kind) listed in `pending` are still loading (dedup_persist loads
    them after start-up, off the writer's thread); `install` puts each in place on the
    writer's thread, and a check of a pending unit waits for it (or, outside the
    server, `ensure` loads it there and then).
    """

    def __init__(self, files: Any = None) -> None:
        self.loaded = False
        self.exact: dict[str, ExactIndex] = {}
        self.simhash: dict[str, SimHashIndex] = {}
        self.embedding: dict[tuple[str, str], EmbeddingIndex] = {}
        self._journal: list[Callable[[], None]] = []
        #: Where saved embedding indexes live (a Path), or None for no saved copies.
        self.files = files
        self.pending: set[Unit] = set()
        #: Pending units that a `dedup.cleared` touched while they loaded: their loaded copy
        #: is stale, so `install` reads them again from the table.
        self.cleared: set[Unit] = set()
        #: Embedding vectors added per namespace since its last save (dedup_persist saves).
        self.unsaved: dict[str, int] = {}

    # -- transactions ---------------------------------------------------------------

    def commit(self) -> None:
        self._journal.clear()

    def rollback(self) -> None:
        while self._journal:
            self._journal.pop()()

    def reset(self) -> None:
        """Forget everything (before a rebuild); `load` brings it back."""
        self.exact.clear()
        self.simhash.clear()
        self.embedding.clear()
        self._journal.clear()
        self.pending.clear()
        self.cleared.clear()
        self.unsaved.clear()
        self.loaded = False

    # -- reading --------------------------------------------------------------------

    def find(
        self,
        namespace: str,
        kind: DedupKind,
        key: Any,
        threshold: float | None = None,
        space: str | None = None,
    ) -> Found | None:
        """The nearest recorded entry within threshold, or None. key: as `key_of` makes it."""
        if kind == "hash":
            exact = self.exact.get(namespace)
            hit = exact.search(key) if exact is not None else None
            return None if hit is None else Found(hit[0], hit[1], hit[2], 0)
        if kind == "simhash":
            index = self.simhash.get(namespace)
            bits = DEFAULT_SIMHASH_THRESHOLD if threshold is None else int(threshold)
            if index is None:
                return None
            found = index.search(key, bits)
            if found is None:
                return None
            seq, run, item = index.entries[found[0]]
            return Found(seq, run, item, found[1])
        emb = self.embedding.get((namespace, space or ""))
        if emb is None:
            return None
        near = emb.search(key)
        limit = DEFAULT_EMBEDDING_THRESHOLD if threshold is None else float(threshold)
        if near is None or not near[1] < limit:
            return None
        seq, run, item = emb.entries[near[0]]
        return Found(seq, run, item, near[1])

    def dimension(self, namespace: str, space: str) -> int | None:
        emb = self.embedding.get((namespace, space))
        return None if emb is None else emb.dim

    # -- writing --------------------------------------------------------------------

    def record(self, namespace: str, kind: str, value: Any, space: str | None, entry: Entry) -> None:
        """Add one recorded entry (a `dedup.recorded` event's data)."""
        undo: Callable[[], None] | None
        if kind == "hash":
            exact = self.exact.get(namespace)
            if exact is None:
                exact = self.exact[namespace] = ExactIndex()
                self._journal.append(_undo_insert(self.exact, namespace))
            undo = exact.add(value, entry)
        elif kind == "simhash":
            index = self.simhash.get(namespace)
            if index is None:
                index = self.simhash[namespace] = SimHashIndex()
                self._journal.append(_undo_insert(self.simhash, namespace))
            undo = index.add(int(value), entry)
        else:
            vector = as_unit_vector(value)
            key = (namespace, space or "")
            emb = self.embedding.get(key)
            if emb is None:
                emb = self.embedding[key] = EmbeddingIndex(vector.shape[0])
                self._journal.append(_undo_insert(self.embedding, key))
            undo = emb.add(vector, entry)
            self.unsaved[namespace] = self.unsaved.get(namespace, 0) + 1
        if undo is not None:
            self._journal.append(undo)

    def clear(self, namespace: str, kind: str | None) -> None:
        """Forget a namespace's entries (of one kind, or all kinds)."""
        for k in ("hash", "simhash", "embedding"):
            if kind in (None, k) and (namespace, k) in self.pending:
                self.cleared.add((namespace, k))  # not undone on rollback: a needless re-read at worst
        if kind in (None, "hash") and namespace in self.exact:
            old_exact = self.exact.pop(namespace)
            self._journal.append(_undo_removal(self.exact, namespace, old_exact))
        if kind in (None, "simhash") and namespace in self.simhash:
            old_sim = self.simhash.pop(namespace)
            self._journal.append(_undo_removal(self.simhash, namespace, old_sim))
        if kind in (None, "embedding"):
            for key in [k for k in self.embedding if k[0] == namespace]:
                old_emb = self.embedding.pop(key)
                self._journal.append(_undo_removal(self.embedding, key, old_emb))

    # -- loading --------------------------------------------------------------------

    def begin_loading(self, entries: DedupEntries) -> list[Unit]:
        """Mark every unit with entries as pending (fast); returns them. Checks of other
        namespaces can be answered from here on; `install` brings each pending one in."""
        self.reset()
        units = entries.units()
        self.pending = set(units)
        self.loaded = True
        return units

    def read_unit(
        self, entries: DedupEntries, unit: Unit, upto: int | None = None, use_files: bool = True
    ) -> Built:
        """Build one unit from the table (embeddings: from their saved copy when it checks out)."""
        namespace, kind = unit
        if kind == "hash":
            return read_exact(entries, namespace, upto=upto)
        if kind == "simhash":
            return read_simhash(entries, namespace, upto=upto)
        from . import dedup_persist  # imports hnswlib

        return dedup_persist.load_embeddings(entries, self.files if use_files else None, namespace, upto)[0]

    def install(self, entries: DedupEntries, unit: Unit, built: Built, upto: int | None) -> None:
        """On the writer's thread, between transactions: put a unit loaded up to seq `upto`
        in place, adding what was recorded after it. A unit cleared meanwhile, or one
        whose load failed (`built` None), is read again from the table here."""
        if unit not in self.pending:
            return  # `ensure` got there first
        namespace, kind = unit
        if built is None or unit in self.cleared:
            built = self.read_unit(entries, unit, use_files=False)
        elif upto is None:
            pass  # read up to now, on this thread: nothing to add
        elif kind == "hash":
            read_exact(entries, namespace, after=upto, into=built)
        elif kind == "simhash":
            read_simhash(entries, namespace, after=upto, into=built)
        else:
            from . import dedup_persist

            dedup_persist.add_rows(entries, built, namespace, after=upto, upto=None)
        if kind == "hash":
            if len(built):
                self.exact[namespace] = built
        elif kind == "simhash":
            if len(built):
                self.simhash[namespace] = built
        else:
            for space, emb in built.items():
                self.embedding[(namespace, space)] = emb
        self.pending.discard(unit)
        self.cleared.discard(unit)

    def ensure(self, entries: DedupEntries, namespace: str, kind: str) -> None:
        """Load a still-pending unit now, on this thread (a check that did not wait for it)."""
        unit = (namespace, kind)
        if unit in self.pending:
            self.install(entries, unit, self.read_unit(entries, unit), None)

    def load(self, entries: DedupEntries) -> int:
        """Build every index from the dedup projection now; returns how many entries are held."""
        for unit in self.begin_loading(entries):
            self.install(entries, unit, self.read_unit(entries, unit), None)
        self._journal.clear()
        return self.count()

    def count(self) -> int:
        """Entries held (an exact index counts each key once)."""
        return (
            sum(len(i) for i in self.exact.values())
            + sum(len(i) for i in self.simhash.values())
            + sum(len(i) for i in self.embedding.values())
        )
