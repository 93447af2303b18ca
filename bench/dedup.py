"""Near-duplicate checks: latency and checks/s of the indexes at size, against brute force.

    python bench/dedup.py [--simhash 1000000] [--vectors 200000] [--dims 384] [--queries 2000]
                          [--e2e-texts 20000] [--e2e-vectors 5000]

1. SimHash: `--simhash` random 64-bit hashes in one namespace's band index (built in
   process through daemon/dedup.py, as the daemon builds it at start). Each query is a
   recorded hash with 0 to 3 bits flipped (a near-duplicate) or a fresh random hash (new);
   every answer is compared with a numpy scan of all entries.
2. Embeddings: `--vectors` random unit vectors of `--dims` dimensions in an hnswlib index
   with the daemon's parameters. Queries are recorded vectors plus small noise (near
   duplicates) and fresh random unit vectors (new; their nearest neighbour is the hard
   case for recall). Recall@1 is measured against an exact scan (numpy matrix product).
3. End to end through a daemon on loopback: checks that record, one at a time (round
   trip latency) and in batches of 500 (checks/s).
4. Start-up (`--startup-vectors 200000`, `--startup-simhash 1000000`): a database holding
   that many recorded embeddings (384 dims, one namespace) and SimHashes (another
   namespace), written through SqliteEventLog. Then, each timed from the daemon's launch to
   "listening" and to the first check answered in each namespace: the first start (no
   saved copy: the hnswlib index is rebuilt from the table, then saved); a restart after a
   clean stop (loads the saved copy); and a restart after `--startup-unsaved` more vectors
   were recorded through the daemon and it was killed with SIGKILL (the saved copy is
   older and is caught up from the log).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import numpy as np
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).parent))
from _common import flip_bits, percentile, random_simhashes, time_calls, unit_vectors
from _daemon import BenchDaemon, machine

from tracklog.daemon import dedup as dd


def describe(name: str, seconds: list[float]) -> str:
    us = [s * 1e6 for s in seconds]
    return (
        f"{name}: p50 {percentile(us, 0.5):8.1f} us  p99 {percentile(us, 0.99):8.1f} us"
        f"  mean {statistics.fmean(us):8.1f} us"
        f"  -> {len(us) / sum(seconds):10,.0f} checks/s"
    )


def bench_simhash(n: int, queries: int, rng: np.random.Generator) -> None:
    print(f"\n== SimHash, {n:,} recorded entries, {queries:,} queries (half near-duplicates)")
    values = random_simhashes(rng, n)
    index = dd.SimHashIndex()
    started = time.perf_counter()
    index.add_many(values, [(i + 1, None, None) for i in range(n)])
    print(f"build (bulk load into 4 bands of 16 bits): {time.perf_counter() - started:.1f} s")
    qs: list[int] = []
    for i in range(queries):
        if i % 2 == 0:
            q = int(values[rng.integers(n)])
            q = flip_bits(q, rng.choice(64, size=int(rng.integers(0, 4)), replace=False).tolist())
        else:
            q = int(random_simhashes(rng, 1)[0])
        qs.append(q)
    text = " ".join(f"token{int(t)}" for t in rng.integers(0, 50_000, size=120))
    t_text = time_calls(lambda: dd.simhash(text), 500)
    print(describe("simhash() of a 120-token text", t_text))
    for threshold in (3, 8, 16):
        radius = dd.probe_radius(threshold)
        count = queries if threshold == 3 else max(200, queries // 10)
        timed: dict[str, list[float]] = {"band index": [], "numpy scan": [], "chosen plan": []}
        answers: dict[str, list[object]] = {name: [] for name in timed}
        for name, fn in (
            ("band index", index.search_index),
            ("numpy scan", index.brute_force),
            ("chosen plan", index.search),
        ):
            for q in qs[:count]:
                t0 = time.perf_counter()
                answers[name].append(fn(q, threshold))
                timed[name].append(time.perf_counter() - t0)
        mismatches = sum(a != b for a, b in zip(answers["band index"], answers["numpy scan"], strict=True))
        dups = sum(a is not None for a in answers["numpy scan"])
        print(
            f"-- threshold {threshold} (probing {len(dd._PROBES[radius])} keys per block), {count} queries, "
            f"{dups} duplicates found, {mismatches} answers differ between the plans; "
            f"the plan chosen: {index.plan(threshold)}"
        )
        for name, seconds in timed.items():
            print("   " + describe(f"{name:11s}", seconds))


def bench_pairs() -> None:
    """Hamming distances of SimHash (version 2) on the pairs tests/daemon/test_dedup.py checks."""
    print(f"\n== SimHash version {dd.SIMHASH_VERSION}: distances of near and far pairs")
    for label, pairs in (("near (case, punctuation, width, one word of 35)", NEAR_PAIRS), ("far", FAR_PAIRS)):
        print(f"{label}: {[dd.hamming(dd.simhash(a), dd.simhash(b)) for a, b in pairs]}")


_LONG = (
    "Near-duplicate detection keeps a pipeline from translating, embedding or labelling the same "
    "document twice; it compares a short fingerprint of each new text with the fingerprints already "
    "recorded and reports the closest one when it is within the threshold."
)
#: The same pairs as tests/daemon/test_dedup.py.
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


def bench_embeddings(
    n: int, dims: int, queries: int, rng: np.random.Generator, efs: list[int], m: int
) -> None:
    print(
        f"\n== Embeddings, {n:,} vectors of {dims} dims, hnswlib M={m} "
        f"ef_construction={dd.HNSW_EF_CONSTRUCTION} ef={dd.HNSW_EF}"
    )
    data = unit_vectors(rng, n, dims)
    index = dd.EmbeddingIndex(dims, m=m)
    started = time.perf_counter()
    index.add_many(data, [(i + 1, None, None) for i in range(n)])
    print(f"build: {time.perf_counter() - started:.1f} s")
    half = queries // 2
    picks = rng.integers(0, n, size=half)
    near = data[picks] + rng.normal(scale=0.01, size=(half, dims)).astype(np.float32)
    fresh = unit_vectors(rng, queries - half, dims)
    # Noise that puts queries around the threshold (cosine distance about 0.03 to 0.07),
    # where a wrong nearest neighbour would change the decision.
    scale = rng.uniform(0.012, 0.02, size=(half, 1)).astype(np.float32)
    boundary = data[rng.integers(0, n, size=half)] + scale * rng.normal(size=(half, dims)).astype(np.float32)
    sets = (("near-duplicates", near), ("at the threshold", boundary), ("fresh random", fresh))
    truth: dict[str, tuple[list[int], list[float], list[float]]] = {}
    for name, qs in sets:
        best_of: list[int] = []
        dist_of: list[float] = []
        brute: list[float] = []
        for q in qs:
            t0 = time.perf_counter()
            sims = data @ (q / np.linalg.norm(q))
            best = int(np.argmax(sims))
            brute.append(time.perf_counter() - t0)
            best_of.append(best)
            dist_of.append(1.0 - float(sims[best]))
        truth[name] = (best_of, dist_of, brute)
    for ef in efs:
        index.index.set_ef(ef)
        print(f"-- ef={ef}{' (the daemon default)' if ef == dd.HNSW_EF else ''}")
        for name, qs in sets:
            best_of, dist_of, brute = truth[name]
            lat: list[float] = []
            got = []
            for q in qs:
                t0 = time.perf_counter()
                got.append(index.search(q))
                lat.append(time.perf_counter() - t0)
            hits = sum(g is not None and g[0] == b for g, b in zip(got, best_of, strict=True))
            same = sum(
                (g is not None and g[1] < dd.DEFAULT_EMBEDDING_THRESHOLD)
                == (d < dd.DEFAULT_EMBEDDING_THRESHOLD)
                for g, d in zip(got, dist_of, strict=True)
            )
            dups = sum(d < dd.DEFAULT_EMBEDDING_THRESHOLD for d in dist_of)
            print(
                f"   {name}: recall@1 {hits / len(qs):.4f}, same duplicate decision as brute force "
                f"{same / len(qs):.4f} ({len(qs)} queries, {dups} true duplicates)"
            )
            print("      " + describe("hnswlib    ", lat))
            if ef == efs[0]:
                print("      " + describe("brute force", brute))


async def bench_end_to_end(texts: int, vectors: int, dims: int, rng: np.random.Generator) -> None:
    print(f"\n== End to end through the daemon (loopback, MessagePack): {texts:,} texts, {vectors:,} vectors")
    enc = msgspec.msgpack.encode
    dec = msgspec.msgpack.decode
    with tempfile.TemporaryDirectory() as tmp, BenchDaemon(Path(tmp) / "bench.db") as daemon:
        async with connect(daemon.url, max_size=None) as ws:
            await ws.send(enc({"op": "hello", "protocol": 1, "client": "bench"}))
            await ws.recv()
            words = [f"w{i}" for i in range(5000)]
            docs = [" ".join(words[j] for j in rng.integers(0, 5000, size=40)) for _ in range(texts)]
            started = time.perf_counter()
            for start in range(0, texts, 500):
                inputs = [
                    {"text": d, "item": str(start + k)} for k, d in enumerate(docs[start : start + 500])
                ]
                await ws.send(
                    enc(
                        {
                            "op": "check",
                            "ref": start,
                            "namespace": "bench",
                            "kind": "simhash",
                            "inputs": inputs,
                        }
                    )
                )
                reply = dec(await ws.recv())
                assert reply["op"] == "checked", reply
            elapsed = time.perf_counter() - started
            print(f"simhash, batches of 500, recording: {texts / elapsed:,.0f} checks/s")
            single: list[float] = []
            for i in range(1000):
                t0 = time.perf_counter()
                await ws.send(
                    enc(
                        {
                            "op": "check",
                            "ref": i,
                            "namespace": "bench",
                            "kind": "simhash",
                            "text": docs[i] if i % 2 else f"new text {i}",
                        }
                    )
                )
                reply = dec(await ws.recv())
                single.append(time.perf_counter() - t0)
                assert reply["op"] == "checked"
            print(describe(f"simhash, one check per round trip, {texts:,} recorded", single))
            vecs = unit_vectors(rng, vectors, dims)
            started = time.perf_counter()
            for start in range(0, vectors, 500):
                inputs = [{"vector": v.tolist()} for v in vecs[start : start + 500]]
                await ws.send(
                    enc(
                        {
                            "op": "check",
                            "ref": start,
                            "namespace": "bench",
                            "kind": "embedding",
                            "space": "e",
                            "inputs": inputs,
                        }
                    )
                )
                reply = dec(await ws.recv())
                assert reply["op"] == "checked", reply
            elapsed = time.perf_counter() - started
            print(f"embedding, batches of 500, recording: {vectors / elapsed:,.0f} checks/s")
            single = []
            for i in range(500):
                v = vecs[i] + rng.normal(scale=0.01, size=dims).astype(np.float32)
                t0 = time.perf_counter()
                await ws.send(
                    enc(
                        {
                            "op": "check",
                            "ref": i,
                            "namespace": "bench",
                            "kind": "embedding",
                            "space": "e",
                            "vector": v.tolist(),
                            "record": False,
                        }
                    )
                )
                reply = dec(await ws.recv())
                single.append(time.perf_counter() - t0)
                assert reply["op"] == "checked" and reply["duplicate"], reply
            print(describe(f"embedding, one check per round trip, {vectors:,} recorded", single))


def _record_directly(db: Path, vectors: int, dims: int, simhashes: int, rng: np.random.Generator) -> None:
    """Write `dedup.recorded` events through SqliteEventLog (the projections fill dedup_entries)."""
    from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog
    from tracklog.protocol.events import DedupRecorded, DedupRecordedData

    store = SqliteEventLog(db)
    store.catch_up()
    started = time.perf_counter()
    for start in range(0, vectors, 5_000):
        block = unit_vectors(rng, min(5_000, vectors - start), dims)
        store.append_events(
            [
                DedupRecorded(
                    data=DedupRecordedData(
                        namespace="emb", kind="embedding", value=v, space="minilm", item=f"v{start + k}"
                    )
                )
                for k, v in enumerate(block.tolist())
            ]
        )
    values = random_simhashes(rng, simhashes).tolist()
    for start in range(0, simhashes, 20_000):
        store.append_events(
            [
                DedupRecorded(
                    data=DedupRecordedData(namespace="sim", kind="simhash", value=v, item=f"s{start + k}")
                )
                for k, v in enumerate(values[start : start + 20_000])
            ]
        )
    store.close()
    print(f"wrote {vectors:,} vectors and {simhashes:,} SimHashes in {time.perf_counter() - started:.0f} s")


async def _time_start(
    db: Path,
    probe: list[float],
    label: str,
    then_record: int = 0,
    dims: int = 384,
    kill: bool = False,
    rng: np.random.Generator | None = None,
) -> None:
    """Launch a daemon; time 'listening', the first simhash check and the first embedding check."""
    enc, dec = msgspec.msgpack.encode, msgspec.msgpack.decode
    launched = time.perf_counter()
    with BenchDaemon(db) as daemon:
        listening = time.perf_counter() - launched
        async with connect(daemon.url, max_size=None) as ws:
            await ws.send(enc({"op": "hello", "protocol": 1, "client": "bench"}))
            await ws.recv()
            await ws.send(
                enc(
                    {
                        "op": "check",
                        "ref": 1,
                        "namespace": "sim",
                        "kind": "simhash",
                        "text": "x y z",
                        "record": False,
                    }
                )
            )
            await ws.send(
                enc(
                    {
                        "op": "check",
                        "ref": 2,
                        "namespace": "emb",
                        "kind": "embedding",
                        "space": "minilm",
                        "vector": probe,
                        "record": False,
                    }
                )
            )
            answered: dict[int, float] = {}
            replies = {}
            while len(answered) < 2:
                reply = dec(await ws.recv())
                answered[reply["ref"]] = time.perf_counter() - launched
                replies[reply["ref"]] = reply
            assert replies[2]["duplicate"], replies[2]
            print(
                f"{label}: listening after {listening:.2f} s; first SimHash check answered after "
                f"{answered[1]:.2f} s; first embedding check answered after {answered[2]:.2f} s"
            )
            if then_record:
                assert rng is not None
                more = unit_vectors(rng, then_record, dims)
                started = time.perf_counter()
                for start in range(0, then_record, 500):
                    inputs = [{"vector": v} for v in more[start : start + 500].tolist()]
                    await ws.send(
                        enc(
                            {
                                "op": "check",
                                "ref": 3,
                                "namespace": "emb",
                                "kind": "embedding",
                                "space": "minilm",
                                "inputs": inputs,
                            }
                        )
                    )
                    reply = dec(await ws.recv())
                    assert reply["op"] == "checked", reply
                print(
                    f"   then recorded {then_record:,} more vectors through the daemon "
                    f"({then_record / (time.perf_counter() - started):,.0f}/s)"
                )
        if kill:
            assert daemon.proc is not None
            daemon.proc.kill()
            daemon.proc.wait()
            print("   and killed it with SIGKILL")
        else:
            stopping = time.perf_counter()
            assert daemon.proc is not None
            daemon.proc.send_signal(signal.SIGTERM)
            daemon.proc.wait(600)
            print(f"   clean stop (saving the index) took {time.perf_counter() - stopping:.2f} s")


async def bench_startup(
    vectors: int, simhashes: int, unsaved: int, dims: int, rng: np.random.Generator
) -> None:
    print(f"\n== Start-up with {vectors:,} recorded vectors of {dims} dims and {simhashes:,} SimHashes")
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        _record_directly(db, vectors, dims, simhashes, np.random.default_rng(11))
        from tracklog.daemon.storage.sqlite.eventlog import SqliteEventLog

        store = SqliteEventLog(db)
        probe = msgspec.msgpack.decode(
            store.conn.execute(
                "SELECT value FROM dedup_entries WHERE kind = 'embedding' ORDER BY seq DESC LIMIT 1"
            ).fetchone()[0]
        )
        store.close()
        await _time_start(db, probe, "first start, no saved copy (rebuilt from the table, then saved)")
        size = sum(f.stat().st_size for f in (Path(tmp) / "bench.db.dedup").iterdir())
        print(f"   saved copy: {size / 2**20:,.0f} MiB")
        await _time_start(
            db,
            probe,
            "restart after a clean stop (saved copy)",
            then_record=unsaved,
            dims=dims,
            rng=rng,
            kill=True,
        )
        await _time_start(db, probe, f"restart after SIGKILL ({unsaved:,} vectors newer than the saved copy)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--simhash", type=int, default=1_000_000)
    parser.add_argument("--vectors", type=int, default=200_000)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--e2e-texts", type=int, default=20_000)
    parser.add_argument("--e2e-vectors", type=int, default=5_000)
    parser.add_argument("--m", type=int, default=dd.HNSW_M, help="hnswlib M (links per node)")
    parser.add_argument("--ef", type=int, action="append", help="hnswlib ef at query time (repeatable)")
    parser.add_argument("--startup-vectors", type=int, default=200_000)
    parser.add_argument("--startup-simhash", type=int, default=1_000_000)
    parser.add_argument(
        "--startup-unsaved",
        type=int,
        default=5_000,
        help="vectors recorded after the last save, before the SIGKILL",
    )
    parser.add_argument(
        "--skip", choices=["simhash", "embeddings", "e2e", "startup"], action="append", default=[]
    )
    args = parser.parse_args()
    print(machine())
    rng = np.random.default_rng(2026)
    if "simhash" not in args.skip:
        bench_pairs()
        bench_simhash(args.simhash, args.queries, rng)
    if "embeddings" not in args.skip:
        bench_embeddings(args.vectors, args.dims, args.queries, rng, args.ef or [dd.HNSW_EF], args.m)
    if "e2e" not in args.skip:
        asyncio.run(bench_end_to_end(args.e2e_texts, args.e2e_vectors, args.dims, rng))
    if "startup" not in args.skip:
        asyncio.run(
            bench_startup(args.startup_vectors, args.startup_simhash, args.startup_unsaved, args.dims, rng)
        )


if __name__ == "__main__":
    main()
