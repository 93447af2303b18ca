"""What the thin client puts on the wire, and the checks it makes at the call.

Metric events are the hot path: the caller queues a plain tuple and the sender turns a
batch of them into `MetricsEvent` structs, which msgspec encodes in one call. Every
other event is encoded at the call into `msgspec.Raw`, which snapshots its free-form
data (a dict the caller changes later does not change the event) and makes an
unencodable value a `TypeError` at the call, where the programming error is.

A batch travels as the MessagePack array of its events (bytes); the same bytes are a
spool record and, given to `ClientConnection.append_encoded` (the protocol's
`EncodedAppend`), the `events` of an append. Every message other than these batches is
the protocol's own struct, sent through `tracklog.protocol.connection.ClientConnection`.
"""

from __future__ import annotations

import math
from pathlib import PurePath
from typing import Any, Final

import msgspec
from msgspec import Raw, Struct

#: A queued metrics event: (id, run, ts, values, step, epoch) from `log_metrics`, or
#: (id, run, ts, name, value, step, epoch) from `log_metric`.
MetricsTuple = tuple[Any, ...]


class MetricsData(Struct, omit_defaults=True, gc=False):
    values: dict[str, Any]
    step: int | None = None
    epoch: int | None = None


class MetricsEvent(Struct, tag="metrics", tag_field="type", omit_defaults=True, gc=False):
    """A `metrics` event built positionally by the sender (cheaper than keywords).

    gc=False: these never take part in reference cycles, and keeping them out of the
    garbage collector's lists keeps collections short while batches are built.
    """

    id: str
    run: str
    ts: float
    data: MetricsData


def enc_hook(obj: Any) -> Any:
    """Encode the common non-JSON values pipelines log: numpy scalars and arrays, paths, sets."""
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    tolist = getattr(obj, "tolist", None)  # numpy scalars and arrays, torch tensors
    if callable(tolist):
        return tolist()
    raise TypeError(f"cannot log a value of type {type(obj).__name__}; use numbers, strings, lists and dicts")


encoder: Final = msgspec.msgpack.Encoder(enc_hook=enc_hook)
encode: Final = encoder.encode
decode_any: Final = msgspec.msgpack.Decoder().decode


def raw_event(event: Struct) -> Raw:
    """Encode an event at the call; raises TypeError for a value that cannot be logged."""
    return Raw(encode(event))


def non_string_key(value: Any, path: str) -> str | None:
    """Where value holds a map with a key that is not a string: `path.to.map: ...`, or None.

    MessagePack can carry such keys but the daemon stores JSON, which cannot, so it
    refuses the event; checked at the call (one pass over the containers, the scalars are
    only looked at) so the event is reported at once and never reaches the daemon.
    """
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path}: keys must be strings, got {type(key).__name__} {key!r:.40}"
            if isinstance(item, (dict, list, tuple)):
                found = non_string_key(item, f"{path}.{key}")
                if found is not None:
                    return found
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            if isinstance(item, (dict, list, tuple)):
                found = non_string_key(item, f"{path}[{index}]")
                if found is not None:
                    return found
    return None


def build_metrics(item: MetricsTuple) -> MetricsEvent:
    if len(item) == 7:
        return MetricsEvent(item[0], item[1], item[2], MetricsData({item[3]: item[4]}, item[5], item[6]))
    return MetricsEvent(item[0], item[1], item[2], MetricsData(item[3], item[4], item[5]))


def coerce_number(name: Any, value: Any) -> float | int:
    """The slow path of the metric value check: numpy and torch scalars, Decimal, Fraction.

    A bool is rejected although Python counts it as an int: `True` is almost always a
    mistake in a metric, and the protocol rejects booleans where a number belongs.
    """
    if isinstance(value, bool) or type(value).__name__ in ("bool_", "bool"):
        raise TypeError(f"metric {name!r}: expected a number, got a boolean ({value!r})")
    if isinstance(value, (str, bytes, bytearray)):
        raise TypeError(f"metric {name!r}: expected a number, got {type(value).__name__} {value!r:.40}")
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    cls = type(value)
    if hasattr(cls, "__index__"):
        return int(value.__index__())
    if hasattr(cls, "__float__"):
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"metric {name!r}: expected a number, got {cls.__name__}: {exc}") from exc
    raise TypeError(f"metric {name!r}: expected a number, got {cls.__name__}")


def coerce_int(field: str, value: Any) -> int:
    """`step`, `epoch`, `iteration`: an int (numpy ints accepted), never a bool or a float."""
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeError(f"{field}: expected an integer, got {type(value).__name__} {value!r:.40}")
    return int(value.__index__())


def check_name(what: str, name: Any) -> None:
    if name.__class__ is not str:
        raise TypeError(f"{what}: expected a string, got {type(name).__name__}")


def check_float(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if hasattr(type(value), "__float__") and not isinstance(value, (str, bytes)):
            return float(value)
        raise TypeError(f"{field}: expected a number, got {type(value).__name__}")
    return float(value)


def is_finite(x: float) -> bool:
    return math.isfinite(x)
