"""The run filter grammar of PROTOCOL.md, parsed by recursive descent into parameterised SQL.

    filter     := or_expr
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := term ("and" term)*
    term       := "(" or_expr ")" | comparison
    comparison := field op value | field ["not"] "in" "(" value ("," value)* ")" | "tags." NAME
    field      := status | name | pipeline | user | session | started | finished | id
                | metrics.NAME | config.KEY | tags.NAME
    op         := "=" | "!=" | "<>" | "<" | "<=" | ">" | ">=" | ["not"] "like"
    value      := 'single-quoted string' ('' is a quote) | number | true | false | null

NAME and KEY are a run of letters, digits and `_ - / : .`, or any text in backticks
(a doubled backtick is a backtick). Every value, metric name and config key is bound
as a parameter: nothing from the filter text is pasted into the SQL, so the text can
hold quotes, comments or semicolons without effect. The SQL reads the run table as
`r`; metric fields join `metric_summaries` once per distinct name.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Final

from tracklog.protocol import errors

#: Plain columns of the runs table a filter may name.
RUN_FIELDS: Final = {
    "id": "r.run",
    "run": "r.run",
    "status": "r.status",
    "name": "r.name",
    "pipeline": "r.pipeline",
    "user": "r.user",
    "host": "r.host",
    "session": "r.session",
    "parent": "r.parent",
    "started": "r.started",
    "finished": "r.finished",
    "created": "r.created_seq",
    "updated": "r.updated_seq",
}
_TIME_FIELDS: Final = frozenset({"started", "finished"})
_OPERATORS: Final = {"=": "=", "!=": "!=", "<>": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
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
#: Values bound as parameters for one filter and its ordering (SQLite builds allow 32,766
#: or more per statement; a query adds a few of its own).
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


@dataclass
class Compiled:
    """A filter and an ordering as SQL over `runs AS r`, with their parameters in order."""

    joins: list[str] = field(default_factory=list)
    join_params: list[Any] = field(default_factory=list)
    where: str = "1"
    where_params: list[Any] = field(default_factory=list)
    order: str = "r.created_seq, r.run"
    order_params: list[Any] = field(default_factory=list)
    _metric_alias: dict[str, str] = field(default_factory=dict)

    def metric(self, name: str, position: int = 0) -> str:
        """The alias of the metric_summaries row of metric `name` (joined once per name)."""
        alias = self._metric_alias.get(name)
        if alias is None:
            if len(self._metric_alias) >= MAX_METRIC_NAMES:
                raise bad(
                    f"more than {MAX_METRIC_NAMES} distinct metrics in the filter and order_by", position
                )
            alias = f"m{len(self._metric_alias)}"
            self._metric_alias[name] = alias
            self.joins.append(
                f"LEFT JOIN metric_summaries {alias} ON {alias}.run = r.run AND {alias}.name = ?"
            )
            self.join_params.append(name)
        return alias

    @property
    def from_sql(self) -> str:
        return " ".join(["runs AS r", *self.joins])

    @property
    def params(self) -> list[Any]:
        """Parameters of `SELECT ... FROM {from_sql} WHERE {where} ORDER BY {order}`."""
        return [*self.join_params, *self.where_params, *self.order_params]


def _config_path(key: str) -> str:
    if '"' in key:
        raise errors.BadQuery('filter: a config key cannot hold a double quote (")')
    return "$." + '"' + key + '"'


class _Parser:
    def __init__(self, text: str, out: Compiled) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.out = out
        self.depth = 0
        self.terms = 0
        self.values = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def _is_word(self, *words: str) -> bool:
        tok = self.tok
        return tok.kind == "word" and tok.text.lower() in words

    def parse(self) -> tuple[str, list[Any]]:
        params: list[Any] = []
        sql = self.or_expr(params)
        if self.tok.kind != "end":
            raise bad(f"unexpected {_shown(self.tok)}, expected 'and', 'or' or the end", self.tok.position)
        return sql, params

    def or_expr(self, params: list[Any]) -> str:
        parts = [self.and_expr(params)]
        while self._is_word("or"):
            self.i += 1
            parts.append(self.and_expr(params))
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    def and_expr(self, params: list[Any]) -> str:
        parts = [self.term(params)]
        while self._is_word("and"):
            self.i += 1
            parts.append(self.term(params))
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def term(self, params: list[Any]) -> str:
        tok = self.tok
        if tok.kind == "lparen":
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise bad(f"parentheses nested deeper than {MAX_NESTING}", tok.position)
            self.i += 1
            sql = self.or_expr(params)
            if self.tok.kind != "rparen":
                raise bad(f"unexpected {_shown(self.tok)}, expected ')'", self.tok.position)
            self.i += 1
            self.depth -= 1
            return "(" + sql + ")"
        return self.comparison(params)

    # -- fields ----------------------------------------------------------------------

    def field_ref(self, *, for_order: bool = False) -> tuple[str, str, list[Any], int]:
        """Parse a field; returns (kind, SQL expression, its parameters, position).

        kind is "run", "time", "metric", "config" or "tag" (the SQL then tests the tag).
        """
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
                alias = self.out.metric(name, tok.position)
                return "metric", f"{alias}.last", [], tok.position
            if lower in ("config", "params"):
                if "." in name:
                    # `config.a.b`: the key "a.b" if there is one, else b inside a.
                    nested = "$" + "".join(_config_path(part)[1:] for part in name.split("."))
                    return (
                        "config",
                        "COALESCE(json_extract(r.config, ?), json_extract(r.config, ?))",
                        [_config_path(name), nested],
                        tok.position,
                    )
                return "config", "json_extract(r.config, ?)", [_config_path(name)], tok.position
            if for_order:
                raise bad("cannot order by a tag", tok.position)
            return (
                "tag",
                "EXISTS (SELECT 1 FROM run_tags t WHERE t.run = r.run AND t.tag = ?)",
                [name],
                tok.position,
            )
        column = RUN_FIELDS.get(word.lower())
        if column is None:
            raise bad(
                f"unknown field '{word[:64]}', expected status, name, pipeline, user, session, started,"
                " finished, metrics.NAME, config.KEY or tags.NAME",
                tok.position,
            )
        return ("time" if word.lower() in _TIME_FIELDS else "run"), column, [], tok.position

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

    def comparison(self, params: list[Any]) -> str:
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise bad(f"more than {MAX_TERMS} comparisons", self.tok.position)
        start = len(params)
        sql = self._comparison(params)
        self.values += len(params) - start
        if self.values > MAX_VALUES:
            raise bad(f"more than {MAX_VALUES} values", self.tok.position)
        return sql

    def _comparison(self, params: list[Any]) -> str:
        kind, expr, expr_params, _ = self.field_ref()
        tok = self.tok
        if kind == "tag":
            # `tags.x` alone, or compared with true/false.
            if tok.kind == "op" and _OPERATORS.get(tok.text) in ("=", "!="):
                op = _OPERATORS[tok.text]
                self.i += 1
                value, position = self.value(kind)
                if value not in (0, 1) or isinstance(value, float):
                    raise bad("expected true or false after a tag", position)
                params.extend(expr_params)
                return expr if (value == 1) == (op == "=") else f"NOT {expr}"
            params.extend(expr_params)
            return expr
        negate = False
        if self._is_word("not"):
            negate = True
            self.i += 1
            if not self._is_word("in", "like"):
                raise bad(
                    f"unexpected {_shown(self.tok)}, expected 'in' or 'like' after 'not'", self.tok.position
                )
        if self._is_word("in"):
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
            params.extend(expr_params)
            params.extend(values)
            marks = ", ".join("?" * len(values))
            return f"{expr} {'NOT IN' if negate else 'IN'} ({marks})"
        if self._is_word("like"):
            self.i += 1
            value, position = self.value("run")
            if not isinstance(value, str):
                raise bad("expected a 'quoted pattern' after 'like'", position)
            if len(value) > MAX_PATTERN_CHARS:
                raise bad(f"a 'like' pattern longer than {MAX_PATTERN_CHARS} characters", position)
            params.extend(expr_params)
            params.append(value)
            return f"{expr} {'NOT LIKE' if negate else 'LIKE'} ? ESCAPE '\\'"
        if tok.kind != "op":
            raise bad(
                f"unexpected {_shown(tok)}, expected an operator (= != < <= > >= like in)", tok.position
            )
        self.i += 1
        op = _OPERATORS[tok.text]
        value, position = self.value(kind)
        params.extend(expr_params)
        if value is None:
            if op not in ("=", "!="):
                raise bad("null compares only with = or !=", position)
            return f"{expr} IS {'NOT ' if op == '!=' else ''}NULL"
        params.append(value)
        return f"{expr} {op} ?"


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


def compile_filter(text: str | None, order_by: list[str] | None = None) -> Compiled:
    """Parse a filter and an ordering into SQL; a mistake raises BadQuery with its position."""
    out = Compiled()
    if text is not None and len(text) > MAX_FILTER_CHARS:
        raise errors.BadQuery(f"filter: longer than {MAX_FILTER_CHARS} characters")
    if text is not None and text.strip():
        parser = _Parser(text, out)
        out.where, out.where_params = parser.parse()
    if order_by:
        if len(order_by) > MAX_ORDER_TERMS:
            raise errors.BadQuery(f"order_by: more than {MAX_ORDER_TERMS} entries")
        terms: list[str] = []
        for index, spec in enumerate(order_by):
            terms.append(_order_term(spec, index, out))
        terms.append("r.created_seq, r.run")
        out.order = ", ".join(terms)
    return out


def _order_term(spec: str, index: int, out: Compiled) -> str:
    if len(spec) > 1000:
        raise errors.BadQuery(f"order_by[{index}]: longer than 1000 characters")
    try:
        parser = _Parser(spec, out)
        _, expr, params, _ = parser.field_ref(for_order=True)
        direction = "ASC"
        if parser._is_word("asc", "desc"):
            direction = parser.tok.text.upper()
            parser.i += 1
        if parser.tok.kind != "end":
            raise bad(f"unexpected {_shown(parser.tok)}, expected asc, desc or the end", parser.tok.position)
    except errors.BadQuery as exc:
        raise errors.BadQuery(f"order_by[{index}]: {exc.message.removeprefix('filter: ')}") from None
    # The expression appears twice (nulls last, then the value): so do its parameters.
    out.order_params.extend(params * 2)
    return f"{expr} IS NULL, {expr} {direction}"
