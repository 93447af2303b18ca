"""MLflow's search syntax, translated: run filters and orderings into tracklog's filter
grammar (daemon/filter_grammar.py), experiment filters and orderings evaluated on rows.

MLflow's grammar (mlflow/utils/search_utils.py): clauses joined by AND only, each
`identifier comparator value`, where the identifier is `metrics.K`, `params.K`, `tags.K`,
`attributes.K` (or a bare attribute), keys quoted with backticks or double quotes when
they hold other characters. The translation quotes every name and value, so no text
from the filter reaches tracklog's parser as anything but a name or a string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from . import model
from .errors import INVALID_PARAMETER_VALUE, MlflowError

_PREFIXES: Final = {
    "metric": "metric",
    "metrics": "metric",
    "parameter": "param",
    "parameters": "param",
    "param": "param",
    "params": "param",
    "tag": "tag",
    "tags": "tag",
    "attribute": "attribute",
    "attributes": "attribute",
    "attr": "attribute",
    "run": "attribute",
    "dataset": "dataset",
    "datasets": "dataset",
}
_NUMERIC_OPS: Final = frozenset({"=", "!=", "<", "<=", ">", ">="})
_STRING_OPS: Final = frozenset({"=", "!=", "LIKE", "ILIKE", "IS NULL", "IS NOT NULL"})
_ATTRIBUTE_STRING_OPS: Final = frozenset({"=", "!=", "LIKE", "ILIKE", "IN", "NOT IN"})
#: Run attributes MLflow searches, and tracklog's run field for each.
_RUN_ATTRIBUTES: Final = {
    "run_id": "id",
    "run_name": "name",
    "run name": "name",
    "status": "status",
    "user_id": "user",
    "start_time": "started",
    "created": "started",
    "end_time": "finished",
    "experiment_id": "experiment",
}
_TIME_ATTRIBUTES: Final = frozenset({"started", "finished"})
_TOKEN: Final = re.compile(
    r"""\s*(?:
      (?P<string>'(?:[^']|'')*'|"(?:[^"]|"")*")
    | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.]))
    | (?P<op>!=|<>|<=|>=|=|<|>)
    | (?P<paren>[(),])
    | (?P<word>[A-Za-z_][\w.\-/:]*(?:`(?:[^`]|``)*`|"(?:[^"]|"")*")?)
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Clause:
    """One comparison: kind (metric, param, tag, attribute, dataset), key, operator, value."""

    kind: str
    key: str
    op: str
    value: Any


def _bad(message: str) -> MlflowError:
    return MlflowError(INVALID_PARAMETER_VALUE, message)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    at = 0
    while at < len(text):
        if text[at:].isspace():
            break
        found = _TOKEN.match(text, at)
        if found is None or found.end() == at:
            raise _bad(f"Invalid filter '{text}': unexpected text at '{text[at : at + 20].strip()}'")
        kind = found.lastgroup or ""
        out.append((kind, found.group(kind)))
        at = found.end()
    return out


def _unquote(text: str) -> str:
    quote = text[0]
    return text[1:-1].replace(quote * 2, quote)


def _identifier(word: str, default_kind: str) -> tuple[str, str]:
    """(kind, key) of an identifier such as `metrics.loss`, ``tags.`a b` `` or `status`."""
    head, dot, rest = word.partition(".")
    kind = _PREFIXES.get(head.lower()) if dot else None
    if kind is None:
        return default_kind, _unquote(word) if word[:1] in '`"' else word
    if not rest:
        raise _bad(f"Invalid identifier '{word}': expected a name after '{head}.'")
    return kind, _unquote(rest) if rest[0] in '`"' else rest


def parse_filter(text: str | None, default_kind: str = "attribute") -> list[Clause]:
    """The clauses of an MLflow filter (AND only, as MLflow takes it)."""
    if not text or not text.strip():
        return []
    tokens = _tokens(text)
    clauses: list[Clause] = []
    i = 0

    def word(at: int) -> str:
        return tokens[at][1].upper() if at < len(tokens) and tokens[at][0] == "word" else ""

    while True:
        if i >= len(tokens) or tokens[i][0] != "word":
            raise _bad(f"Invalid filter '{text}': expected an identifier")
        kind, key = _identifier(tokens[i][1], default_kind)
        i += 1
        if word(i) == "IS":
            negate = word(i + 1) == "NOT"
            j = i + 2 if negate else i + 1
            if word(j) != "NULL":
                raise _bad(f"Invalid filter '{text}': expected NULL after IS")
            clauses.append(Clause(kind, key, "IS NOT NULL" if negate else "IS NULL", None))
            i = j + 1
        elif word(i) in ("IN", "NOT"):
            negate = word(i) == "NOT"
            j = i + 1 if negate else i
            if word(j) != "IN" or j + 1 >= len(tokens) or tokens[j + 1][1] != "(":
                raise _bad(f"Invalid filter '{text}': expected IN (...)")
            j += 2
            values: list[Any] = []
            while j < len(tokens) and tokens[j][1] != ")":
                kind_, text_ = tokens[j]
                if kind_ == "string":
                    values.append(_unquote(text_))
                elif kind_ == "number":
                    values.append(text_)
                elif text_ != ",":
                    raise _bad(f"Invalid filter '{text}': expected a value in the IN list")
                j += 1
            if j >= len(tokens) or not values:
                raise _bad(f"Invalid filter '{text}': expected values in parentheses after IN")
            clauses.append(Clause(kind, key, "NOT IN" if negate else "IN", tuple(values)))
            i = j + 1
        else:
            if word(i) in ("LIKE", "ILIKE"):
                op = word(i)
            elif i < len(tokens) and tokens[i][0] == "op":
                op = "!=" if tokens[i][1] == "<>" else tokens[i][1]
            else:
                raise _bad(f"Invalid filter '{text}': expected a comparator after '{key}'")
            i += 1
            if i >= len(tokens) or tokens[i][0] not in ("string", "number"):
                raise _bad(f"Invalid filter '{text}': expected a value after '{op}'")
            value_kind, value_text = tokens[i]
            value: Any = _unquote(value_text) if value_kind == "string" else _number(value_text)
            clauses.append(Clause(kind, key, op, value))
            i += 1
        if i >= len(tokens):
            return clauses
        if word(i) != "AND":
            raise _bad(f"Invalid filter '{text}': expected AND between clauses (MLflow has no OR)")
        i += 1


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


# -- runs: into tracklog's grammar ---------------------------------------------------------------


def name(text: str) -> str:
    """A name as tracklog's grammar quotes it (backticks, a backtick doubled)."""
    return "`" + text.replace("`", "``") + "`"


def string(value: Any) -> str:
    """A string value as tracklog's grammar quotes it ('' is a quote)."""
    return "'" + str(value).replace("'", "''") + "'"


def _number_text(value: Any, clause: Clause) -> str:
    if isinstance(value, str):
        try:
            value = _number(value)
        except ValueError:
            raise _bad(f"Expected numeric value for {clause.kind} '{clause.key}', got '{value}'") from None
    return repr(value)


def _like(op: str) -> str:
    # LIKE and ILIKE are both tracklog's `like`: case-insensitive for ASCII (docs/mlflow.md).
    return "like" if op in ("LIKE", "ILIKE") else op


def _clause_text(clause: Clause) -> str:
    kind, key, op, value = clause.kind, clause.key, clause.op, clause.value
    if kind == "metric":
        if op not in _NUMERIC_OPS:
            raise _bad(f"Invalid comparator '{op}' not one of '{sorted(_NUMERIC_OPS)}'")
        return f"metrics.{name(key)} {op} {_number_text(value, clause)}"
    if kind in ("param", "tag"):
        if op not in _STRING_OPS:
            raise _bad(f"Invalid comparator '{op}' not one of '{sorted(_STRING_OPS)}'")
        if kind == "tag" and key == model.RUN_NAME_TAG:
            field = "name"
        else:
            field = f"{'config' if kind == 'param' else 'tags'}.{name(key)}"
        if op in ("IS NULL", "IS NOT NULL"):
            if kind == "tag" and field != "name":
                return f"{field} = {'false' if op == 'IS NULL' else 'true'}"
            return f"{field} {'=' if op == 'IS NULL' else '!='} null"
        if not isinstance(value, str):
            raise _bad(f"Expected a quoted string value for {kind} '{key}', got '{value}'")
        return f"{field} {_like(op)} {string(value)}"
    if kind == "attribute":
        if key not in _RUN_ATTRIBUTES:
            raise _bad(
                f"Invalid attribute key '{key}' specified. Valid keys are '{sorted(set(_RUN_ATTRIBUTES))}'"
            )
        field = _RUN_ATTRIBUTES[key]
        if field in _TIME_ATTRIBUTES:
            if op not in _NUMERIC_OPS:
                raise _bad(f"Invalid comparator '{op}' not one of '{sorted(_NUMERIC_OPS)}'")
            return f"{field} {op} {model.seconds(float(_number_text(value, clause)))!r}"
        if op not in _ATTRIBUTE_STRING_OPS:
            raise _bad(f"Invalid comparator '{op}' not one of '{sorted(_ATTRIBUTE_STRING_OPS)}'")
        if field == "status":
            return _status_text(op, value)
        if field == "experiment":
            return _experiment_text(op, value)
        if op in ("IN", "NOT IN"):
            return f"{field} {op.lower()} ({', '.join(string(v) for v in value)})"
        return f"{field} {_like(op)} {string(value)}"
    raise _bad(f"Invalid entity type '{kind}': tracklog searches metrics, params, tags and attributes")


def _status_text(op: str, value: Any) -> str:
    if op in ("LIKE", "ILIKE"):
        raise _bad("status LIKE is not supported: compare the status with = or IN")
    wanted = [value] if op in ("=", "!=") else list(value)
    statuses = sorted({s for v in wanted for s in model.STATUS_MATCHES.get(str(v).upper(), ())})
    if not statuses:
        statuses = ["scheduled"]  # matches no tracklog run
    negate = op in ("!=", "NOT IN")
    return f"status {'not in' if negate else 'in'} ({', '.join(string(s) for s in statuses)})"


def experiments_text(ids: list[str]) -> str:
    """The runs of these experiments (experiment 0 holds the runs without one too)."""
    inside = f"experiment in ({', '.join(string(i) for i in ids)})"
    if model.DEFAULT_EXPERIMENT_ID in ids:
        return f"({inside} or experiment = null)"
    return inside


def _experiment_text(op: str, value: Any) -> str:
    if op in ("IN", "NOT IN"):
        ids = [str(v) for v in value]
    elif op in ("=", "!="):
        ids = [str(value)]
    else:
        raise _bad("experiment_id compares with =, !=, IN or NOT IN only")
    return experiments_text(ids) if op in ("=", "IN") else _not(ids)


def _not(ids: list[str]) -> str:
    inside = f"experiment not in ({', '.join(string(i) for i in ids)})"
    if model.DEFAULT_EXPERIMENT_ID in ids:
        return f"({inside} and experiment != null)"
    return f"({inside} or experiment = null)"


def run_filter(text: str | None) -> str | None:
    """An MLflow run filter as a tracklog filter (None when it has no clause)."""
    clauses = parse_filter(text)
    if not clauses:
        return None
    return " and ".join(_clause_text(clause) for clause in clauses)


def run_order(order_by: list[str] | None) -> list[str]:
    """MLflow's `order_by` as tracklog's, with MLflow's tie-breakers: start time, newest
    first (unless ordered by it), then the run id."""
    out: list[str] = []
    by_start = False
    for entry in order_by or []:
        found = re.fullmatch(r"\s*(.+?)(?:\s+(ASC|DESC))?\s*", entry, re.IGNORECASE)
        if found is None or not found.group(1):
            raise _bad(f"Invalid order_by clause '{entry}'")
        kind, key = _identifier(found.group(1).strip(), "attribute")
        direction = (found.group(2) or "ASC").lower()
        if kind == "metric":
            field = f"metrics.{name(key)}"
        elif kind == "param":
            field = f"config.{name(key)}"
        elif kind == "tag":
            field = "name" if key == model.RUN_NAME_TAG else f"tags.{name(key)}"
        elif kind == "attribute" and key in _RUN_ATTRIBUTES:
            field = _RUN_ATTRIBUTES[key]
            by_start = by_start or field == "started"
        else:
            raise _bad(f"Invalid order_by clause '{entry}': cannot order by {kind} '{key}'")
        out.append(f"{field} {direction}")
    if not by_start:
        out.append("started desc")
    out.append("id asc")
    return out


# -- experiments: evaluated on rows ---------------------------------------------------------------

_EXPERIMENT_ATTRIBUTES: Final = {
    "name": "name",
    "creation_time": "created",
    "last_update_time": "updated",
    "experiment_id": "id",
}


def _like_regex(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    parts = ["%" if c == "%" else "_" if c == "_" else re.escape(c) for c in pattern]
    body = "".join(".*" if p == "%" else "." if p == "_" else p for p in parts)
    return re.compile(f"^{body}$", re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _compare(actual: Any, op: str, value: Any) -> bool:
    if op in ("IS NULL", "IS NOT NULL"):
        return (actual is None) == (op == "IS NULL")
    if actual is None:
        return False
    if op in ("LIKE", "ILIKE"):
        return _like_regex(str(value), op == "ILIKE").match(str(actual)) is not None
    if op in ("IN", "NOT IN"):
        return (str(actual) in {str(v) for v in value}) == (op == "IN")
    if isinstance(actual, (int, float)) and not isinstance(value, (int, float)):
        value = float(value)
    if isinstance(value, (int, float)) and not isinstance(actual, (int, float)):
        return False
    match op:
        case "=":
            return bool(actual == value)
        case "!=":
            return bool(actual != value)
        case "<":
            return bool(actual < value)
        case "<=":
            return bool(actual <= value)
        case ">":
            return bool(actual > value)
        case ">=":
            return bool(actual >= value)
    raise _bad(f"Invalid comparator '{op}'")


def experiment_matcher(text: str | None) -> Any:
    """A predicate on MLflow experiment JSON for an experiment search filter."""
    clauses = parse_filter(text)
    for clause in clauses:
        if clause.kind == "attribute" and clause.key not in _EXPERIMENT_ATTRIBUTES:
            raise _bad(
                f"Invalid attribute key '{clause.key}' specified."
                f" Valid keys are '{sorted(_EXPERIMENT_ATTRIBUTES)}'"
            )
        if clause.kind not in ("attribute", "tag"):
            raise _bad(f"Invalid entity type '{clause.kind}'. Valid values are ['attribute', 'tag']")

    def matches(experiment: dict[str, Any]) -> bool:
        tags = {t["key"]: t["value"] for t in experiment.get("tags", [])}
        for clause in clauses:
            if clause.kind == "tag":
                actual: Any = tags.get(clause.key)
            else:
                field = clause.key
                actual = experiment["experiment_id" if field == "experiment_id" else field]
            if not _compare(actual, clause.op, clause.value):
                return False
        return True

    return matches


def experiment_sort_key(order_by: list[str] | None) -> list[tuple[str, bool]]:
    """(field of the experiment JSON, descending) pairs, MLflow's default when none is given."""
    out: list[tuple[str, bool]] = []
    for entry in order_by or ["creation_time DESC", "experiment_id ASC"]:
        found = re.fullmatch(r"\s*(?:attributes?\.)?(\w+)(?:\s+(ASC|DESC))?\s*", entry, re.IGNORECASE)
        if found is None or found.group(1) not in _EXPERIMENT_ATTRIBUTES:
            raise _bad(f"Invalid order_by clause '{entry}'")
        out.append((found.group(1), (found.group(2) or "ASC").upper() == "DESC"))
    if not any(f == "experiment_id" for f, _ in out):
        out.append(("experiment_id", False))
    return out
