"""Every event type of the protocol, as tagged `msgspec.Struct`s, and their validation.

An event arrives in client form (`id`, `type`, `run`, `ts`, `data`). Decoding checks
types; `check_event` then checks what a type cannot say (a run-scoped event needs a
run, a finite `ts`) and turns the JSON spellings of NaN and the infinities into floats.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable
from typing import Annotated, Any, Final, Literal, get_args

import msgspec
from msgspec import Meta, Struct, field

from .limits import MAX_DEPTH, MAX_ID_CHARS, MAX_NAME_CHARS, MAX_RUN_CHARS

#: Metric, tag and key names: 1 to 250 characters, no control characters. The length is
#: checked while decoding; control characters by `check_event`, through a cache of names
#: already seen (a regex in the decoder would halve its speed, and names repeat).
Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_CHARS)]
EventId = Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS)]
RunId = Annotated[str, Meta(min_length=1, max_length=MAX_RUN_CHARS)]
#: Integers that SQLite and the metric chunks store as int64 (the lowest value is the
#: chunk's mark for "no epoch", so it is kept out).
Int64 = Annotated[int, Meta(ge=-(2**63) + 1, le=2**63 - 1)]
#: Finite floats only where NaN would mean nonsense (a duration, a time to live).
Finite = Annotated[float, Meta(ge=-1e300, le=1e300)]
#: JSON cannot carry NaN or the infinities as numbers: they come as these strings.
NonFinite = Literal["NaN", "Infinity", "-Infinity"]
Number = float | NonFinite
RunStatus = Literal["running", "completed", "failed", "killed", "lost"]
FinishStatus = Literal["completed", "failed", "killed", "lost"]
ItemStatus = Literal["ok", "failed", "skipped", "duplicate"]

_NON_FINITE: Final = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class Data(Struct, forbid_unknown_fields=False, omit_defaults=True):
    """Base of every event's `data`.

    forbid_unknown_fields=False: unknown fields are ignored (PROTOCOL.md, Transport), so
    newer clients can send fields an older daemon does not know.
    omit_defaults=True: the stored form keeps only what was said, which keeps the log
    small and replay byte-identical.
    """


class RunStartedData(Data):
    name: str | None = None
    pipeline: str | None = None
    config: dict[Name, Any] | None = None
    tags: list[Name] | None = None
    notes: str | None = None
    parent: RunId | None = None
    user: str | None = None
    host: str | None = None
    session: str | None = None
    #: The experiment the run belongs to (an `experiment` event's id); none: no experiment.
    experiment: Name | None = None
    #: Tags with a value (MLflow's key-value tags). Each is also a tag: `tags` names it.
    tag_values: dict[Name, str] | None = None


class RunUpdatedData(Data):
    name: str | None = None
    notes: str | None = None
    add_tags: list[Name] | None = None
    remove_tags: list[Name] | None = None
    config: dict[Name, Any] | None = None
    #: Tags to set with a value (added, or their value replaced); `remove_tags` removes them.
    tag_values: dict[Name, str] | None = None
    #: Written by the daemon when a writer comes back to a run marked `lost`.
    status: Literal["running"] | None = None


class RunFinishedData(Data):
    status: FinishStatus
    error: str | None = None


class EmptyData(Data):
    pass


ExperimentLifecycle = Literal["active", "deleted"]


class ExperimentData(Data):
    """Creates an experiment, or changes the one with this id: only the fields given change.

    An experiment groups runs (a run names it in `run.started`'s `experiment`). The first
    event of an id creates it (`name` defaults to the id, `lifecycle` to active).
    """

    experiment: Name
    name: Annotated[str, Meta(min_length=1, max_length=MAX_NAME_CHARS)] | None = None
    lifecycle: ExperimentLifecycle | None = None
    artifact_location: str | None = None
    #: Tags to set (added, or their value replaced), then tags to remove.
    tags: dict[Name, str] | None = None
    remove_tags: list[Name] | None = None


class MetricsData(Data):
    values: Annotated[dict[Name, Number], Meta(min_length=1)]
    step: Int64 | None = None
    epoch: Int64 | None = None


class ItemData(Data):
    item: str | None = None
    kind: str | None = None
    stage: str | None = None
    iteration: Int64 | None = None
    status: ItemStatus = "ok"
    data: Any = None
    path: str | None = None
    model: str | None = None
    backend: str | None = None
    duration: Finite | None = None
    error: str | None = None


class ArtifactData(Data):
    kind: Name
    path: Annotated[str, Meta(min_length=1)]
    size: Int64 | None = None
    digest: str | None = None
    metadata: dict[str, Any] | None = None
    #: `sha256:<hex>` of the bytes in the daemon's artifact store (written by the daemon
    #: when it stored an upload; verify and backup check the blob).
    blob: str | None = None


class CachePutData(Data):
    key: Name
    value: Any
    ttl: Annotated[float, Meta(ge=0, le=1e300)] | None = None


class CacheInvalidatedData(Data):
    key: Name | None = None


class DedupRecordedData(Data):
    namespace: Name
    kind: Literal["hash", "simhash", "embedding"]
    value: Any
    item: str | None = None
    space: str | None = None


class DedupClearedData(Data):
    namespace: Name
    kind: Literal["hash", "simhash", "embedding"] | None = None


class Event(Struct, tag_field="type", forbid_unknown_fields=False, omit_defaults=True, kw_only=True):
    """An event in client form. Subclasses fix `type` (the tag) and the `data` shape."""

    id: EventId | None = None
    run: RunId | None = None
    ts: float | None = None


class RunStarted(Event, tag="run.started"):
    data: RunStartedData = field(default_factory=RunStartedData)


class RunUpdated(Event, tag="run.updated"):
    data: RunUpdatedData = field(default_factory=RunUpdatedData)


class RunFinished(Event, tag="run.finished"):
    data: RunFinishedData


class RunDeleted(Event, tag="run.deleted"):
    data: EmptyData = field(default_factory=EmptyData)


class RunRestored(Event, tag="run.restored"):
    data: EmptyData = field(default_factory=EmptyData)


class Experiment(Event, tag="experiment"):
    data: ExperimentData


class Metrics(Event, tag="metrics"):
    data: MetricsData


class Item(Event, tag="item"):
    data: ItemData = field(default_factory=ItemData)


class Artifact(Event, tag="artifact"):
    data: ArtifactData


class CachePut(Event, tag="cache.put"):
    data: CachePutData


class CacheInvalidated(Event, tag="cache.invalidated"):
    data: CacheInvalidatedData = field(default_factory=CacheInvalidatedData)


class DedupRecorded(Event, tag="dedup.recorded"):
    data: DedupRecordedData


class DedupCleared(Event, tag="dedup.cleared"):
    data: DedupClearedData


AnyEvent = (
    RunStarted
    | RunUpdated
    | RunFinished
    | RunDeleted
    | RunRestored
    | Metrics
    | Item
    | Artifact
    | CachePut
    | CacheInvalidated
    | DedupRecorded
    | DedupCleared
    | Experiment
)

EVENT_CLASSES: Final[dict[str, type[Event]]] = {cls.__struct_config__.tag: cls for cls in get_args(AnyEvent)}
EVENT_TYPES: Final = frozenset(EVENT_CLASSES)
DATA_CLASSES: Final[dict[str, type[Data]]] = {
    "run.started": RunStartedData,
    "run.updated": RunUpdatedData,
    "run.finished": RunFinishedData,
    "run.deleted": EmptyData,
    "run.restored": EmptyData,
    "metrics": MetricsData,
    "item": ItemData,
    "artifact": ArtifactData,
    "cache.put": CachePutData,
    "cache.invalidated": CacheInvalidatedData,
    "dedup.recorded": DedupRecordedData,
    "dedup.cleared": DedupClearedData,
    "experiment": ExperimentData,
}
#: Types that belong to no run.
GLOBAL_TYPES: Final = frozenset({"cache.put", "cache.invalidated", "dedup.cleared", "experiment"})
#: Types only the daemon writes; a client that sends one is refused.
DAEMON_TYPES: Final = frozenset({"dedup.recorded"})


class InvalidEvent(ValueError):
    """One event is not valid; the message names the field."""


_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_GOOD_NAMES: set[str] = set()
_GOOD_NAMES_MAX: Final = 100_000


def _check_name(name: str, field: str) -> None:
    if name in _GOOD_NAMES:
        return
    if _CONTROL.search(name):
        raise InvalidEvent(f"{field}: {name[:40]!r} contains a control character")
    if len(_GOOD_NAMES) >= _GOOD_NAMES_MAX:
        _GOOD_NAMES.clear()
    _GOOD_NAMES.add(name)


def _check_names(names: Any, field: str) -> None:
    if names:
        for name in names:
            _check_name(name, field)


def check_event(event: Event) -> Event:
    """Check what decoding cannot, and turn NaN spellings into floats, in place.

    Raises InvalidEvent with a message that starts with the field's name (without the
    event type, which the caller adds: `values.loss: ...`).
    """
    if event.ts is not None and not math.isfinite(event.ts):
        raise InvalidEvent("ts: expected a finite number")
    cls = event.__class__
    if cls is Metrics:  # the hot path: keep it short
        run = event.run
        if run is None:
            raise InvalidEvent("run: required for metrics events")
        if run not in _GOOD_NAMES:
            _check_name(run, "run")
        values = event.data.values  # type: ignore[attr-defined]
        for name, value in values.items():
            if name not in _GOOD_NAMES:
                _check_name(name, "values")
            if value.__class__ is str:
                values[name] = _NON_FINITE[value]
        return event
    tag = event.__struct_config__.tag
    if tag in GLOBAL_TYPES:
        event.run = None
    elif event.run is None:
        raise InvalidEvent(f"run: required for {tag} events")
    else:
        _check_name(event.run, "run")
    data = event.data  # type: ignore[attr-defined]
    if cls is RunStarted:
        if data.parent is not None:
            _check_name(data.parent, "parent")
        if data.experiment is not None:
            _check_name(data.experiment, "experiment")
        _check_names(data.tags, "tags")
        _check_names(data.config, "config")
        _check_names(data.tag_values, "tag_values")
    elif cls is RunUpdated:
        _check_names(data.add_tags, "add_tags")
        _check_names(data.remove_tags, "remove_tags")
        _check_names(data.config, "config")
        _check_names(data.tag_values, "tag_values")
    elif cls is Experiment:
        _check_name(data.experiment, "experiment")
        _check_names(data.tags, "tags")
        _check_names(data.remove_tags, "remove_tags")
    elif cls is CachePut or (cls is CacheInvalidated and data.key is not None):
        _check_name(data.key, "key")
    elif cls is Artifact:
        _check_name(data.kind, "kind")
    elif cls is DedupCleared:
        _check_name(data.namespace, "namespace")
    return event


#: The range of integers every reader takes (SQLite, MessagePack, most JSON parsers).
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
#: The free-form fields (any JSON value) of each data class, checked by `json_value_problem`.
FREE_FORM_FIELDS: Final[dict[type[Data], tuple[str, ...]]] = {
    RunStartedData: ("config",),
    RunUpdatedData: ("config",),
    ItemData: ("data",),
    ArtifactData: ("metadata",),
    CachePutData: ("value",),
    DedupRecordedData: ("value",),
}


def json_value_problem(value: Any, field: str, max_depth: int = MAX_DEPTH) -> str | None:
    """Why a free-form value could not be given back to every reader, or None when it can.

    Only JSON values are kept: null, booleans, integers within 64 bits, floats (NaN and
    the infinities too: JSON readers get them as the protocol's strings), strings, lists,
    and maps whose keys are strings, nested at most `max_depth` levels. MessagePack can
    carry more (integer or array keys, bytes, extensions, timestamps); stored, those
    would break every JSON reader that reaches them, so they are refused at the door.
    The message starts with the path of the offending value: `item.data.1: map keys
    must be strings`, `cache.put.value.rows[2]: expected a JSON value ..., got bytes`.
    """
    cls = value.__class__
    if cls is dict or cls is list:
        found = _container_problem(value, 1, max_depth)
        if found is None:
            return None
        parts, what = found
        if not parts:  # too deep: named at the field, as the limit is the field's
            return f"{field}: {what}"
        return field + "".join(reversed(parts)) + ": " + what
    problem = _scalar_problem(value)
    return None if problem is None else f"{field}: {problem}"


def _scalar_problem(value: Any) -> str | None:
    cls = value.__class__
    if cls is str or cls is float or cls is bool or value is None:
        return None
    if cls is int:
        return None if INT64_MIN <= value <= INT64_MAX else "integer beyond 64 bits"
    return f"expected a JSON value (null, boolean, number, string, list or map), got {_kind_of(value)}"


def _container_problem(node: Any, depth: int, max_depth: int) -> tuple[list[str], str] | None:
    """The first problem inside a map or list: the path to it (innermost part first; empty
    when the value nests too deep) and what is wrong. Recursion is bounded by `max_depth`."""
    if depth > max_depth:
        return [], f"nested deeper than {max_depth} levels"
    is_map = node.__class__ is dict
    for key, child in node.items() if is_map else enumerate(node):
        if is_map and key.__class__ is not str:
            return [f".{_key_text(key)}"], "map keys must be strings"
        cls = child.__class__
        if cls is str or cls is float or cls is bool or child is None:
            continue  # the common leaves first
        if cls is dict or cls is list:
            found = _container_problem(child, depth + 1, max_depth)
            if found is None:
                continue
            if found[0]:
                found[0].append(f".{key}" if is_map else f"[{key}]")
            return found
        what = _scalar_problem(child)
        if what is not None:
            return [f".{key}" if is_map else f"[{key}]"], what
    return None


def _key_text(key: Any) -> str:
    text = str(key) if key.__class__ in (int, float, bool) or key is None else repr(key)
    return text[:40]


def _kind_of(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes"
    if isinstance(value, msgspec.msgpack.Ext):
        return f"a MessagePack extension (type {value.code})"
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return "a timestamp"
    return f"a {type(value).__name__}"


def event_type(event: Event) -> str:
    return event.__struct_config__.tag  # type: ignore[return-value]


def finite_floats_as_strings(obj: Any) -> Any:
    """A copy of obj where NaN and the infinities are the strings JSON carries them as."""
    cls = obj.__class__
    if cls is float:
        if obj != obj:
            return "NaN"
        if obj == math.inf:
            return "Infinity"
        if obj == -math.inf:
            return "-Infinity"
        return obj
    if cls is dict:
        return {k: finite_floats_as_strings(v) for k, v in obj.items()}
    if cls is list or cls is tuple:
        return [finite_floats_as_strings(v) for v in obj]
    return obj


def has_non_finite(obj: Any) -> bool:
    """Whether obj holds a float that JSON cannot carry as a number."""
    cls = obj.__class__
    if cls is float:
        return not math.isfinite(obj)
    if cls is dict:
        return any(has_non_finite(v) for v in obj.values())
    if cls is list or cls is tuple:
        return any(has_non_finite(v) for v in obj)
    return False


def explain_validation_error(err: msgspec.ValidationError, raw: Any, prefix: str) -> str:
    """Turn msgspec's message into `field.path: what was expected`.

    `raw` is the event as plain data, used to name the dict key msgspec shows as `[...]`.
    """
    text = str(err)
    message, _, where = text.partition(" - at `")
    where = where.rstrip("`")
    key_in = None
    if where.startswith("key` in `"):
        key_in = where[len("key` in `") :]
        where = key_in
    path = where[2:] if where.startswith("$.") else where.lstrip("$")
    if "[...]" in path:
        out_of_range = message.startswith("Number out of range")
        path = _name_dict_keys(path, raw, _is_out_of_range if out_of_range else _is_not_a_number)
    if path.startswith("data."):
        path = path[5:]
    elif path == "data":
        path = ""
    if message.startswith("Invalid enum value") and path.startswith("values."):
        msg = "expected a number, or one of 'NaN', 'Infinity', '-Infinity'"
    else:
        msg = _friendly(message)
    if key_in is not None:
        msg = "key " + msg
    field_path = ".".join(p for p in (prefix, path) if p)
    return f"{field_path}: {msg}"


def _is_not_a_number(value: Any) -> bool:
    if isinstance(value, str):
        return value not in _NON_FINITE
    return value is None or isinstance(value, bool) or not isinstance(value, (int, float))


def _is_out_of_range(value: Any) -> bool:
    """A number JSON wrote beyond a float's range (1e400), which the explaining decoder
    read as an infinity (JSON has no other way to make one)."""
    return isinstance(value, float) and math.isinf(value)


def _name_dict_keys(path: str, raw: Any, misfit: Callable[[Any], bool] = _is_not_a_number) -> str:
    """Replace `[...]` in a msgspec path by the first key whose value does not fit."""
    head, _, tail = path.partition("[...]")
    node = raw
    for part in head.split("."):
        if not part:
            continue
        if isinstance(node, dict):
            node = node.get(part)
        else:
            return path.replace("[...]", ".?")
    if isinstance(node, dict):
        for key, value in node.items():
            if misfit(value):
                return f"{head}.{key}{tail}"
        first = next(iter(node), "?")
        return f"{head}.{first}{tail}"
    return path.replace("[...]", ".?")


def _friendly(message: str) -> str:
    if message.startswith("Expected `") and "` of length " in message:
        kind, _, rest = message[len("Expected `") :].partition("` of length ")
        return f"expected {_friendly_type(kind)} of length {rest}"
    if message.startswith("Expected `") and "`, got `" not in message:
        kind, _, rest = message[len("Expected `") :].partition("`")
        return f"expected {_friendly_type(kind)}{rest}"
    if message.startswith("Expected `"):
        expected, _, got = message[len("Expected `") :].partition("`, got `")
        got = got.rstrip("`")
        return f"expected {_friendly_type(expected)}, got {_friendly_type(got)}"
    if message.startswith("Object missing required field `"):
        name = message[len("Object missing required field `") :].rstrip("`")
        return f"missing required field '{name}'"
    if message.startswith("Invalid enum value"):
        return "invalid value" + message[len("Invalid enum value") :]
    return message[0].lower() + message[1:] if message else message


_TYPE_WORDS: Final = {
    "float | str": "a number",
    "int | float": "a number",
    "float": "a number",
    "int | null": "an integer",
    "int": "an integer",
    "float | null": "a number",
    "str": "a string",
    "str | null": "a string",
    "object": "an object",
    "object | null": "an object",
    "array": "an array",
    "array | null": "an array",
    "bool": "a boolean",
    "null": "null",
}


def _friendly_type(name: str) -> str:
    return _TYPE_WORDS.get(name, name)
