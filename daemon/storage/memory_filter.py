"""Run filters and orderings evaluated in Python, answering as SQLite's compiled SQL does.

The tree is `filter_grammar.parse_run_query`'s; this module gives each comparison the
value SQLite would: three-valued logic (None is SQL's NULL, and only True keeps a run),
SQLite's type order (numbers before text), its column affinities (a number compared with
a text column is compared as text, a numeric-looking text compared with a number column
as a number; `json_extract` values, tag values and metric values from an expression keep
their own type), `like` case-insensitive for ASCII with `\\` as the escape.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec

from ..filter_grammar import BoolOp, Comparison, Condition, FieldRef, OrderTerm, TagTest

#: Run columns by affinity, as the runs table declares them (and `created`/`updated` seqs).
_NUMBER_COLUMNS: Final = frozenset({"started", "finished", "created", "updated", "deleted"})
_NUMBER_RE: Final = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")
_json_encode = msgspec.json.Encoder(order="sorted").encode

#: A run as the evaluator reads it: a field reference to its value and whether that value
#: comes from a column of numeric (True), text (False) or no affinity (None).
FieldReader = Callable[[FieldRef], tuple[Any, bool | None]]


def sqlite_text(value: Any) -> str:
    """A number as SQLite renders it as text (REAL with 15 significant digits, `.0` kept)."""
    if isinstance(value, float):
        if math.isinf(value):
            return "Inf" if value > 0 else "-Inf"
        text = f"{value:.15g}"
        if "e" not in text and "." not in text and "n" not in text:
            text += ".0"
        elif "e" in text:
            mantissa, exponent = text.split("e")
            if "." not in mantissa:
                mantissa += ".0"
            text = f"{mantissa}e{exponent[0]}{exponent[1:].lstrip('0').rjust(2, '0')}"
        return text
    return str(value)


def _numeric(text: str) -> int | float | None:
    if not _NUMBER_RE.fullmatch(text):
        return None
    stripped = text.strip()
    return int(stripped) if stripped.lstrip("+-").isdigit() else float(stripped)


def _with_affinity(value: Any, affinity: bool | None) -> Any:
    """A bound value as SQLite converts it to compare with a column of that affinity."""
    if value is None or affinity is None:
        return value
    if affinity and isinstance(value, str):
        number = _numeric(value)
        return value if number is None else number
    if not affinity and not isinstance(value, str):
        return sqlite_text(value)
    return value


def _rank(value: Any) -> int:
    return 2 if isinstance(value, str) else 1


def compare(left: Any, op: str, right: Any) -> bool | None:
    """`left op right` with SQLite's type order; None when either is NULL."""
    if left is None or right is None:
        return None
    lr, rr = _rank(left), _rank(right)
    if lr != rr:
        left, right = lr, rr
    match op:
        case "=":
            return bool(left == right)
        case "!=":
            return bool(left != right)
        case "<":
            return bool(left < right)
        case "<=":
            return bool(left <= right)
        case ">":
            return bool(left > right)
        case ">=":
            return bool(left >= right)
    raise AssertionError(f"unknown operator {op!r}")


def _like_regex(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    escaped = False
    for ch in pattern:
        if escaped:
            out.append(re.escape(ch))
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        else:
            # Case-insensitive for ASCII letters only, as SQLite's LIKE.
            if ch.isascii() and ch.isalpha():
                out.append(f"[{ch.lower()}{ch.upper()}]")
            else:
                out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def like(value: Any, pattern: Any) -> bool | None:
    if value is None or pattern is None:
        return None
    text = value if isinstance(value, str) else sqlite_text(value)
    shown = pattern if isinstance(pattern, str) else sqlite_text(pattern)
    return _like_regex(shown).fullmatch(text) is not None


def _not(value: bool | None) -> bool | None:
    return None if value is None else not value


def evaluate(condition: Condition, read: FieldReader, has_tag: Callable[[str], bool]) -> bool | None:
    """The condition's SQL truth value for one run."""
    match condition:
        case BoolOp(op, parts):
            results = [evaluate(part, read, has_tag) for part in parts]
            if op == "and":
                if any(r is False for r in results):
                    return False
                return None if any(r is None for r in results) else True
            if any(r is True for r in results):
                return True
            return None if any(r is None for r in results) else False
        case TagTest(tag, present):
            return has_tag(tag) if present else not has_tag(tag)
        case Comparison(ref, op, value):
            left, affinity = read(ref)
            if op in ("in", "not in"):
                found: bool | None = False
                if left is not None:
                    for v in value:
                        hit = compare(left, "=", _with_affinity(v, affinity))
                        if hit:
                            found = True
                            break
                        if hit is None:
                            found = None
                else:
                    found = None
                return _not(found) if op == "not in" else found
            if op in ("like", "not like"):
                matched = like(left, value)
                return _not(matched) if op == "not like" else matched
            if value is None:
                return (left is not None) if op == "!=" else (left is None)
            return compare(left, op, _with_affinity(value, affinity))
    raise AssertionError(f"unknown condition {condition!r}")


def config_value(config: dict[str, Any], key: str) -> Any:
    """`json_extract(config, '$."key"')` as SQLite gives it (`a.b`: the key, else b in a)."""

    def extract(path: Sequence[str]) -> Any:
        node: Any = config
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        if isinstance(node, bool):
            return 1 if node else 0
        if isinstance(node, (dict, list)):
            return _json_encode(node).decode()
        return node

    value = extract([key])
    if value is None and "." in key:
        value = extract(key.split("."))
    return value


def order_runs(
    runs: list[Any], order: Sequence[OrderTerm], read: Callable[[Any, FieldRef], Any]
) -> list[Any]:
    """Runs sorted as `ORDER BY expr IS NULL, expr [DESC], ...`: nulls last, numbers before text.
    `runs` must already be in the tie-break order (created_seq, run)."""
    out = list(runs)
    for term in reversed(order):
        keyed = [(read(run, term.field), run) for run in out]
        present = [(v, run) for v, run in keyed if v is not None]
        present.sort(key=lambda pair: (_rank(pair[0]), pair[0]), reverse=term.descending)
        out = [run for _, run in present] + [run for v, run in keyed if v is None]
    return out
