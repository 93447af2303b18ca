"""Near-duplicate checks from the thin client: `run.check_hash`, `check_simhash`,
`check_embedding`, the batch `check_many`, and `filter_duplicates`.

These calls wait for the daemon (the answer decides what the pipeline does next), with a
timeout; when the daemon is away they raise `DaemonUnavailable`, which a pipeline may
catch to go on without deduplication.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import msgspec

from tracklog.protocol.messages import Check, Checked, CheckInput

from .requests import DaemonUnavailable

if TYPE_CHECKING:
    from .tracker import Run

Kind = Literal["hash", "simhash", "embedding"]
#: Inputs per batch `check` message that `check_many` and `filter_duplicates` send.
BATCH: Final = 500


@dataclass(frozen=True, slots=True)
class Match:
    """The recorded entry a duplicate matched: its item, run, distance and seq."""

    item: str | None
    run: str | None
    distance: float
    seq: int


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The answer to one check. `recorded`: the seq of the entry this check recorded, if it did."""

    duplicate: bool
    match: Match | None
    recorded: int | None = None


def _match(raw: Any) -> Match | None:
    return None if raw is None else Match(raw.item, raw.run, raw.distance, raw.seq)


def _vector(vector: Any) -> list[float]:
    tolist = getattr(vector, "tolist", None)  # numpy arrays, torch tensors
    values = tolist() if callable(tolist) else list(vector)
    return [float(x) for x in values]


def _input(kind: Kind, thing: Any, item: str | None) -> CheckInput:
    if kind == "embedding":
        return CheckInput(vector=_vector(thing), item=item)
    if isinstance(thing, str):
        return CheckInput(text=thing, item=item)
    if kind == "simhash":
        raise TypeError(f"check_simhash: expected a string, got {type(thing).__name__}")
    return CheckInput(value=thing, item=item)


def check(
    run: Run,
    kind: Kind,
    thing: Any,
    *,
    namespace: str,
    threshold: float | None,
    space: str | None,
    record: bool,
    item: str | None,
    timeout: float | None,
) -> CheckResult:
    one = _input(kind, thing, item)
    msg = msgspec.structs.replace(
        _message(run, kind, namespace, threshold, space, record),
        text=one.text,
        value=one.value,
        vector=one.vector,
        item=one.item,
    )
    reply = run._tracker._requests.request(msg, timeout)
    assert isinstance(reply, Checked), reply
    return CheckResult(reply.duplicate, _match(reply.match), reply.recorded)


def check_many(
    run: Run,
    kind: Kind,
    things: Sequence[Any],
    *,
    namespace: str,
    threshold: float | None,
    space: str | None,
    record: bool,
    items: Sequence[str | None] | None,
    timeout: float | None,
) -> list[CheckResult]:
    if items is not None and len(items) != len(things):
        raise ValueError(f"items: {len(items)} items for {len(things)} inputs")
    out: list[CheckResult] = []
    for start in range(0, len(things), BATCH):
        chunk = things[start : start + BATCH]
        ids = items[start : start + BATCH] if items is not None else [None] * len(chunk)
        msg = msgspec.structs.replace(
            _message(run, kind, namespace, threshold, space, record),
            inputs=[_input(kind, thing, item) for thing, item in zip(chunk, ids, strict=True)],
        )
        reply = run._tracker._requests.request(msg, timeout)
        assert isinstance(reply, Checked) and reply.results is not None, reply
        out.extend(CheckResult(r.duplicate, _match(r.match), r.recorded) for r in reply.results)
    return out


def _message(
    run: Run, kind: Kind, namespace: str, threshold: float | None, space: str | None, record: bool
) -> Check:
    """The `check` without its input (added by the caller)."""
    if not isinstance(namespace, str) or not namespace:
        raise TypeError("namespace: expected a non-empty string")
    if kind == "embedding" and not space:
        raise TypeError("space: required for embeddings (the name of the embedding model)")
    return Check(
        namespace=namespace,
        kind=kind,
        record=record,
        run=run.id,
        threshold=threshold,
        space=space if kind == "embedding" else None,
    )


def filter_duplicates(
    run: Run,
    records: Iterable[Any],
    *,
    namespace: str,
    key: Callable[[Any], Any] | None = None,
    kind: Kind = "hash",
    threshold: float | None = None,
    space: str | None = None,
    item: Callable[[Any], str | None] | None = None,
    stage: str | None = None,
    batch_size: int = 256,
    on_unavailable: Literal["raise", "keep"] = "raise",
    timeout: float | None = None,
) -> Iterator[Any]:
    """Yield the records that are new (recording them); log each duplicate as an item.

    Records are checked in batches of `batch_size` (so a record is yielded once its batch
    is answered). `key(record)` gives what is checked (the record itself by default),
    `item(record)` its item id. A dropped record is logged with `log_item(status=
    "duplicate")`, its match in `data`. When the daemon is away: `on_unavailable="raise"`
    raises DaemonUnavailable; `"keep"` yields the records unchecked.
    """
    if batch_size < 1:
        raise ValueError("batch_size: expected 1 or more")
    get_key = key or (lambda record: record)
    batch: list[Any] = []

    def flush() -> Iterator[Any]:
        ids = [item(r) for r in batch] if item is not None else None
        try:
            results = check_many(
                run,
                kind,
                [get_key(r) for r in batch],
                namespace=namespace,
                threshold=threshold,
                space=space,
                record=True,
                items=ids,
                timeout=timeout,
            )
        except DaemonUnavailable:
            if on_unavailable == "raise":
                raise
            yield from batch
            return
        for position, (record, result) in enumerate(zip(batch, results, strict=True)):
            if not result.duplicate:
                yield record
                continue
            m = result.match
            run.log_item(
                ids[position] if ids is not None else None,
                kind=kind,
                stage=stage,
                status="duplicate",
                data={
                    "namespace": namespace,
                    "match": None
                    if m is None
                    else {"item": m.item, "run": m.run, "distance": m.distance, "seq": m.seq},
                },
            )

    for record in records:
        batch.append(record)
        if len(batch) >= batch_size:
            yield from flush()
            batch = []
    if batch:
        yield from flush()
