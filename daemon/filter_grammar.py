"""The run filter grammar of PROTOCOL.md, parsed by recursive descent into a small tree.

    filter     := or_expr
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := term ("and" term)*
    term       := "(" or_expr ")" | comparison
    comparison := field op value | field ["not"] "in" "(" value ("," value)* ")" | "tags." NAME
    field      := status | name | pipeline | user | session | started | finished | id
                | experiment | experiment_name | metrics.NAME | config.KEY | tags.NAME
    op         := "=" | "!=" | "<>" | "<" | "<=" | ">" | ">=" | ["not"] "like"
    value      := 'single-quoted string' ('' is a quote) | number | true | false | null

NAME and KEY are a run of letters, digits and `_ - / : .`, or any text in backticks
(a doubled backtick is a backtick). Pure: no storage here. Every limit that keeps a
filter harmless (length, nesting, comparisons, values, distinct metrics) is checked
while parsing, with the position of the mistake, so every backend refuses the same
filters; a backend compiles the tree (SQLite and PostgreSQL in `storage/sqlcommon/filters.py`,
binding every value, name and key as a parameter).

`tags.NAME` alone (or `= true`, `= false`) tests whether a run has the tag; compared with
a string (`tags.NAME = 'v'`, `like`, `in`) it is the tag's value ('' for a tag without
one), and a run without the tag matches no such comparison. `experiment` is the run's
experiment id, `experiment_name` that experiment's name; `deleted` is true for a deleted run
(which only queries asking for deleted runs see).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

from tracklog.protocol import errors

#: Plain fields of a run a filter may name (and the words that name them).
RUN_FIELDS: Final = frozenset(
    {
        "id",
        "run",
        "status",
        "name",
        "pipeline",
        "user",
        "host",
        "session",
        "parent",
        "started",
        "finished",
        "created",
        "updated",
        "experiment",
        "experiment_name",
        "deleted",
    }
)
_TIME_FIELDS: Final = frozenset({"started", "finished"})
_OPERATORS: Final[dict[str, Operator]] = {
    "=": "=",
    "!=": "!=",
    "<>": "!=",
    "<": "<",
    "<=": "<=",
    ">": ">",
    ">=": ">=",
}
_KEYWORDS: Final = frozenset({"and", "or", "in", "like", "not", "true", "false", "null", "asc", "desc"})
_NAME_EXTRA: Final = frozenset("_-/:.")
#: Longest filter accepted, in characters: far beyond any real one, short of harm.
MAX_FILTER_CHARS: Final = 200_000
#: Deepest nesting of parentheses accepted (the parser recurses per level).
MAX_NESTING: Final = 64
MAX_IN_VALUES: Final = 1_000
#: Comparisons in one filter. The SQL chains them (`a OR b OR ...`), one level of SQLite's
#: expression tree each, and SQLite refuses trees deeper than 1,000.
MAX_TERMS: Final = 500
#: Values bound as parameters for one filter (SQLite builds allow 32,766 or more per
#: statement; a query adds a few of its own). A config key counts as one (two when nested),
#: a tag name as one.
MAX_VALUES: Final = 10_000
#: Distinct metrics one filter and its ordering name: each joins `metric_summaries` once,
#: and SQLite joins at most 64 tables in one statement.
MAX_METRIC_NAMES: Final = 32
#: Entries of `order_by`.
MAX_ORDER_TERMS: Final = 32
#: Longest `like` pattern, in characters (SQLite refuses patterns over 50,000 bytes).
MAX_PATTERN_CHARS: Final = 10_000
#: Integers a filter may hold: SQLite's 64-bit range (a larger number is written as a float, 1e20).
MIN_INTEGER: Final = -(2**63)
MAX_INTEGER: Final = 2**63 - 1


def bad(message: str, position: int) -> errors.BadQuery:
    return errors.BadQuery(f"filter: {message} at {position}")


def _shown(tok: Token) -> str:
    return "the end" if tok.kind == "end" else "'" + tok.text[:40] + "'"


@dataclass(frozen=True)
class Token:
    kind: str  # word, string, number, op, lparen, rparen, comma, end
    text: str
    value: Any
    position: int


def tokenize(text: str) -> list[Token]:
    """Split a filter into tokens; an unexpected character is a BadQuery naming its position."""
    tokens: list[Token] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        start = i
        if c == "'":
            i += 1
            parts: list[str] = []
            while True:
                end = text.find("'", i)
                if end < 0:
                    raise bad("unterminated string, expected a closing quote", start)
                parts.append(text[i:end])
                if end + 1 < n and text[end + 1] == "'":
                    parts.append("'")
                    i = end + 2
                    continue
                i = end + 1
                break
            tokens.append(Token("string", text[start:i], "".join(parts), start))
        elif c == "`":
            i += 1
            parts = []
            while True:
                end = text.find("`", i)
                if end < 0:
                    raise bad("unterminated name, expected a closing backtick", start)
                parts.append(text[i:end])
                if end + 1 < n and text[end + 1] == "`":
                    parts.append("`")
                    i = end + 2
                    continue
                i = end + 1
                break
            tokens.append(Token("quoted", text[start:i], "".join(parts), start))
        elif c.isdigit() or (c in "+-." and i + 1 < n and (text[i + 1].isdigit() or text[i + 1] == ".")):
            i += 1
            while i < n and (
                text[i].isdigit() or text[i] in ".eE" or (text[i] in "+-" and text[i - 1] in "eE")
            ):
                i += 1
            raw = text[start:i]
            try:
                value: Any = int(raw) if raw.lstrip("+-").isdigit() else float(raw)
            except ValueError:
                raise bad(f"bad number '{raw[:40]}'", start) from None
            if isinstance(value, float) and value != value:
                raise bad("bad number", start)
            if isinstance(value, int) and not MIN_INTEGER <= value <= MAX_INTEGER:
                raise bad(
                    f"integer '{raw[:40]}' out of range: integers are 64-bit, -2^63 to 2^63-1"
                    " (write a larger number as a float, like 1e20)",
                    start,
                )
            tokens.append(Token("number", raw, value, start))
        elif c.isalpha() or c == "_":
            i += 1
            while i < n and (text[i].isalnum() or text[i] in _NAME_EXTRA):
                i += 1
            # "metrics." followed by a backticked name: the word ends at the dot.
            tokens.append(Token("word", text[start:i], text[start:i], start))
        elif text.startswith(("<=", ">=", "!=", "<>"), i):
            tokens.append(Token("op", text[i : i + 2], text[i : i + 2], start))
            i += 2
        elif c in "=<>":
            tokens.append(Token("op", c, c, start))
            i += 1
        elif c == "(":
            tokens.append(Token("lparen", c, c, start))
            i += 1
        elif c == ")":
            tokens.append(Token("rparen", c, c, start))
            i += 1
        elif c == ",":
            tokens.append(Token("comma", c, c, start))
            i += 1
        else:
            shown = c if c.isprintable() else f"U+{ord(c):04X}"
            raise bad(f"unexpected character '{shown}', expected a field, a value or an operator", start)
    tokens.append(Token("end", "", None, n))
    return tokens


# -- the tree ---------------------------------------------------------------------------------

FieldKind: TypeAlias = Literal["run", "time", "metric", "config", "tag"]
Operator: TypeAlias = Literal["=", "!=", "<", "<=", ">", ">=", "in", "not in", "like", "not like"]


@dataclass(frozen=True)
class FieldRef:
    """A field: a run's own (`name` is the field's word, lower case; `time` for the two
    times), a metric's last value, a config key, or a tag (`name` is the metric, key or tag)."""

    kind: FieldKind
    name: str


@dataclass(frozen=True)
class Comparison:
    """`field op value`; `in` and `not in` hold a tuple of values; `= null` is value None."""

    field: FieldRef
    op: Operator
    value: Any


@dataclass(frozen=True)
class TagTest:
    """`tags.NAME` (present) or `tags.NAME = false` (absent)."""

    tag: str
    present: bool


@dataclass(frozen=True)
class BoolOp:
    """Two or more conditions joined by `and` or `or`."""

    op: Literal["and", "or"]
    parts: tuple[Condition, ...]


Condition: TypeAlias = Comparison | TagTest | BoolOp


@dataclass(frozen=True)
class OrderTerm:
    """One entry of `order_by`: a field (a tag orders by its value), ascending or not; nulls always last."""

    field: FieldRef
    descending: bool


@dataclass(frozen=True)
class RunQuery:
    """A parsed filter (None: every run) and ordering, with the distinct metrics they name in
    order of first use."""

    condition: Condition | None
    order: tuple[OrderTerm, ...]
    metrics: tuple[str, ...]


# -- the parser -------------------------------------------------------------------------------


@dataclass
class _Limits:
    """What a filter and its ordering have used so far, checked against the limits."""

    metrics: dict[str, None] = field(default_factory=dict)
    terms: int = 0
    values: int = 0

    def metric(self, name: str, position: int) -> None:
        if name not in self.metrics:
            if len(self.metrics) >= MAX_METRIC_NAMES:
                raise bad(
                    f"more than {MAX_METRIC_NAMES} distinct metrics in the filter and order_by", position
                )
            self.metrics[name] = None


def _field_values(ref: FieldRef) -> int:
    """Parameters a field binds (config keys and tags are bound as values)."""
    if ref.kind == "config":
        return 2 if "." in ref.name else 1
    return 1 if ref.kind == "tag" else 0


class _Parser:
    def __init__(self, text: str, limits: _Limits) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.limits = limits
        self.depth = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def is_word(self, *words: str) -> bool:
        tok = self.tok
        return tok.kind == "word" and tok.text.lower() in words

    def parse(self) -> Condition:
        condition = self.or_expr()
        if self.tok.kind != "end":
            raise bad(f"unexpected {_shown(self.tok)}, expected 'and', 'or' or the end", self.tok.position)
        return condition

    def or_expr(self) -> Condition:
        parts = [self.and_expr()]
        while self.is_word("or"):
            self.i += 1
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else BoolOp("or", tuple(parts))

    def and_expr(self) -> Condition:
        parts = [self.term()]
        while self.is_word("and"):
            self.i += 1
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else BoolOp("and", tuple(parts))

    def term(self) -> Condition:
        tok = self.tok
        if tok.kind == "lparen":
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise bad(f"parentheses nested deeper than {MAX_NESTING}", tok.position)
            self.i += 1
            inner = self.or_expr()
            if self.tok.kind != "rparen":
                raise bad(f"unexpected {_shown(self.tok)}, expected ')'", self.tok.position)
            self.i += 1
            self.depth -= 1
            return inner
        return self.comparison()

    # -- fields ----------------------------------------------------------------------

    def field_ref(self, *, for_order: bool = False) -> FieldRef:
        tok = self.tok
        if tok.kind != "word" or tok.text.lower() in _KEYWORDS:
            raise bad(
                f"unexpected {_shown(tok)}, expected a field (status, name, pipeline, user, session,"
                " started, finished, metrics.NAME, config.KEY, tags.NAME)",
                tok.position,
            )
        self.i += 1
        word = tok.text
        head, dot, rest = word.partition(".")
        lower = head.lower()
        if lower in ("metrics", "metric", "config", "params", "tags", "tag") and dot:
            name = rest
            if not name:
                nxt = self.tok
                if nxt.kind != "quoted" or nxt.position != tok.position + len(word):
                    raise bad(f"expected a name after '{word}'", tok.position + len(word))
                name = nxt.value
                self.i += 1
            if not name or len(name) > 250:
                raise bad("expected a name of 1 to 250 characters", tok.position)
            if lower in ("metrics", "metric"):
                self.limits.metric(name, tok.position)
                return FieldRef("metric", name)
            if lower in ("config", "params"):
                if '"' in name:
                    raise errors.BadQuery('filter: a config key cannot hold a double quote (")')
                return FieldRef("config", name)
            return FieldRef("tag", name)
        lower_word = word.lower()
        if lower_word not in RUN_FIELDS:
            raise bad(
                f"unknown field '{word[:64]}', expected status, name, pipeline, user, session, started,"
                " finished, metrics.NAME, config.KEY or tags.NAME",
                tok.position,
            )
        return FieldRef("time" if lower_word in _TIME_FIELDS else "run", lower_word)

    def value(self, kind: str) -> tuple[Any, int]:
        tok = self.tok
        self.i += 1
        if tok.kind == "number":
            return tok.value, tok.position
        if tok.kind == "string":
            if kind == "time":
                return _timestamp(tok.value, tok.position), tok.position
            return tok.value, tok.position
        if tok.kind == "word" and tok.text.lower() in ("true", "false"):
            return (1 if tok.text.lower() == "true" else 0), tok.position
        if tok.kind == "word" and tok.text.lower() == "null":
            return None, tok.position
        self.i -= 1
        raise bad(f"unexpected {_shown(tok)}, expected a value (a 'quoted string' or a number)", tok.position)

    def comparison(self) -> Condition:
        self.limits.terms += 1
        if self.limits.terms > MAX_TERMS:
            raise bad(f"more than {MAX_TERMS} comparisons", self.tok.position)
        condition, values = self._comparison()
        self.limits.values += values
        if self.limits.values > MAX_VALUES:
            raise bad(f"more than {MAX_VALUES} values", self.tok.position)
        return condition

    def _comparison(self) -> tuple[Condition, int]:
        """A comparison, and how many values it binds (its field's included)."""
        ref = self.field_ref()
        kind = ref.kind
        bound = _field_values(ref)
        tok = self.tok
        if kind == "tag":
            # `tags.x` alone, or compared with true/false: whether the run has the tag.
            # Compared with a string (or with like / in): the tag's value, below.
            if tok.kind == "op":
                after = self.tokens[self.i + 1]
                if after.kind != "string":
                    op = _OPERATORS.get(tok.text)
                    if op not in ("=", "!="):
                        raise bad(
                            "expected a 'quoted string' after a tag compared with " + tok.text, tok.position
                        )
                    self.i += 1
                    value, position = self.value(kind)
                    if value not in (0, 1) or isinstance(value, float):
                        raise bad("expected true, false or a 'quoted string' after a tag", position)
                    return TagTest(ref.name, (value == 1) == (op == "=")), bound
            elif not self.is_word("not", "in", "like"):
                return TagTest(ref.name, True), bound
        negate = False
        if self.is_word("not"):
            negate = True
            self.i += 1
            if not self.is_word("in", "like"):
                raise bad(
                    f"unexpected {_shown(self.tok)}, expected 'in' or 'like' after 'not'", self.tok.position
                )
        if self.is_word("in"):
            self.i += 1
            if self.tok.kind != "lparen":
                raise bad(f"unexpected {_shown(self.tok)}, expected '(' after 'in'", self.tok.position)
            self.i += 1
            values: list[Any] = []
            while True:
                value, position = self.value(kind)
                if value is None:
                    raise bad("null cannot be in a list", position)
                values.append(value)
                if len(values) > MAX_IN_VALUES:
                    raise bad(f"more than {MAX_IN_VALUES} values in a list", position)
                if self.tok.kind == "comma":
                    self.i += 1
                    continue
                if self.tok.kind == "rparen":
                    self.i += 1
                    break
                raise bad(f"unexpected {_shown(self.tok)}, expected ',' or ')'", self.tok.position)
            return Comparison(ref, "not in" if negate else "in", tuple(values)), bound + len(values)
        if self.is_word("like"):
            self.i += 1
            value, position = self.value("run")
            if not isinstance(value, str):
                raise bad("expected a 'quoted pattern' after 'like'", position)
            if len(value) > MAX_PATTERN_CHARS:
                raise bad(f"a 'like' pattern longer than {MAX_PATTERN_CHARS} characters", position)
            return Comparison(ref, "not like" if negate else "like", value), bound + 1
        if tok.kind != "op":
            raise bad(
                f"unexpected {_shown(tok)}, expected an operator (= != < <= > >= like in)", tok.position
            )
        self.i += 1
        op = _OPERATORS[tok.text]
        value, position = self.value(kind)
        if value is None:
            if op not in ("=", "!="):
                raise bad("null compares only with = or !=", position)
            return Comparison(ref, "=" if op == "=" else "!=", None), bound
        return Comparison(ref, op, value), bound + 1


def _timestamp(text: str, position: int) -> float:
    """A date or date-time in ISO 8601 (UTC unless it says otherwise) as seconds since the epoch."""
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise bad(
            f"expected a time as a number or an ISO date like '2026-01-31', got '{text[:40]}'", position
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def parse_run_query(text: str | None, order_by: list[str] | None = None) -> RunQuery:
    """Parse a filter and an ordering; a mistake raises BadQuery with its position."""
    limits = _Limits()
    if text is not None and len(text) > MAX_FILTER_CHARS:
        raise errors.BadQuery(f"filter: longer than {MAX_FILTER_CHARS} characters")
    condition = _Parser(text, limits).parse() if text is not None and text.strip() else None
    order: list[OrderTerm] = []
    if order_by:
        if len(order_by) > MAX_ORDER_TERMS:
            raise errors.BadQuery(f"order_by: more than {MAX_ORDER_TERMS} entries")
        order = [_order_term(spec, index, limits) for index, spec in enumerate(order_by)]
    return RunQuery(condition, tuple(order), tuple(limits.metrics))


def _order_term(spec: str, index: int, limits: _Limits) -> OrderTerm:
    if len(spec) > 1000:
        raise errors.BadQuery(f"order_by[{index}]: longer than 1000 characters")
    try:
        parser = _Parser(spec, limits)
        ref = parser.field_ref(for_order=True)
        descending = False
        if parser.is_word("asc", "desc"):
            descending = parser.tok.text.lower() == "desc"
            parser.i += 1
        if parser.tok.kind != "end":
            raise bad(f"unexpected {_shown(parser.tok)}, expected asc, desc or the end", parser.tok.position)
    except errors.BadQuery as exc:
        raise errors.BadQuery(f"order_by[{index}]: {exc.message.removeprefix('filter: ')}") from None
    return OrderTerm(ref, descending)
