"""Run filters and orderings compiled to SQL: the tree `daemon/filter_grammar.py` parses,
as parameterised SQL over `runs AS r`, for SQLite (`Compiled`) and PostgreSQL
(`PostgresCompiled`, which gives the same answers: see its docstring).

Every value, metric name, config key and tag is bound as a parameter: nothing from the
filter text is pasted into the SQL, so the text can hold quotes, comments or semicolons
without effect. Metric fields join `metric_summaries` once per distinct name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

from ...filter_grammar import BoolOp, Comparison, Condition, FieldRef, OrderTerm, TagTest, parse_run_query
from .dialect import POSTGRES, SQLITE, Dialect

#: The runs table's column of each plain field.
RUN_COLUMNS: Final = {
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
    "experiment": "r.experiment",
    "deleted": "r.deleted",
    "experiment_name": "(SELECT e.name FROM experiments e WHERE e.experiment = r.experiment)",
}
_TAG_TEST: Final = "EXISTS (SELECT 1 FROM run_tags t WHERE t.run = r.run AND t.tag = ?)"
#: A tag's value ('' for a tag without one); NULL when the run does not have the tag.
_TAG_VALUE: Final = "(SELECT COALESCE(t.value, '') FROM run_tags t WHERE t.run = r.run AND t.tag = ?)"


@dataclass
class Compiled:
    """A filter and an ordering as SQL over `runs AS r`, with their parameters in order."""

    joins: list[str] = field(default_factory=list)
    join_params: list[Any] = field(default_factory=list)
    where: str = "1 = 1"
    where_params: list[Any] = field(default_factory=list)
    order: str = "r.created_seq, r.run"
    order_params: list[Any] = field(default_factory=list)
    #: The alias of each join made, by what it joins (`m:loss`, `c:lr`): each is made once.
    _aliases: dict[str, str] = field(default_factory=dict)

    def joined(self, key: str, join: str, params: list[Any]) -> str:
        """The alias of the join `key` names, made now if it is the first use: `join` is its
        SQL with `{alias}` in place of the alias, `params` its parameters."""
        alias = self._aliases.get(key)
        if alias is None:
            alias = self._aliases[key] = f"{key[0]}{len(self._aliases)}"
            self.joins.append(join.format(alias=alias))
            self.join_params.extend(params)
        return alias

    def metric(self, name: str) -> str:
        """The alias of the metric_summaries row of metric `name` (joined once per name)."""
        return self.joined(
            f"m:{name}",
            "LEFT JOIN metric_summaries {alias} ON {alias}.run = r.run AND {alias}.name = ?",
            [name],
        )

    @property
    def from_sql(self) -> str:
        return " ".join(["runs AS r", *self.joins])

    @property
    def params(self) -> list[Any]:
        """Parameters of `SELECT ... FROM {from_sql} WHERE {where} ORDER BY {order}`."""
        return [*self.join_params, *self.where_params, *self.order_params]

    # -- compiling the tree -------------------------------------------------------------

    def field_sql(self, ref: FieldRef) -> tuple[str, list[Any]]:
        """The SQL expression of a field, and its parameters."""
        if ref.kind == "metric":
            return f"{self.metric(ref.name)}.last", []
        if ref.kind == "config":
            if "." in ref.name:
                # `config.a.b`: the key "a.b" if there is one, else b inside a.
                nested = "$" + "".join(_config_path(part)[1:] for part in ref.name.split("."))
                return (
                    "COALESCE(json_extract(r.config, ?), json_extract(r.config, ?))",
                    [_config_path(ref.name), nested],
                )
            return "json_extract(r.config, ?)", [_config_path(ref.name)]
        if ref.kind == "tag":
            return _TAG_VALUE, [ref.name]
        return RUN_COLUMNS[ref.name], []

    def condition_sql(self, condition: Condition, params: list[Any]) -> str:
        """The SQL of a condition; its parameters are appended to params in order."""
        match condition:
            case BoolOp(op, parts):
                joined = f" {op.upper()} ".join(self.condition_sql(part, params) for part in parts)
                return f"({joined})"
            case TagTest(tag, present):
                params.append(tag)
                return _TAG_TEST if present else f"NOT {_TAG_TEST}"
            case Comparison(ref, op, value):
                expr, expr_params = self.field_sql(ref)
                params.extend(expr_params)
                if op in ("in", "not in"):
                    params.extend(value)
                    return f"{expr} {op.upper()} ({', '.join('?' * len(value))})"
                if op in ("like", "not like"):
                    params.append(value)
                    return f"{expr} {op.upper()} ? ESCAPE '\\'"
                if value is None:
                    return f"{expr} IS {'NOT ' if op == '!=' else ''}NULL"
                params.append(value)
                return f"{expr} {op} ?"
        raise AssertionError(f"unknown condition {condition!r}")

    def order_sql(self, term: OrderTerm) -> str:
        expr, params = self.field_sql(term.field)
        # The expression appears twice (nulls last, then the value): so do its parameters.
        self.order_params.extend(params * 2)
        return f"{expr} IS NULL, {expr} {'DESC' if term.descending else 'ASC'}"


def _config_path(key: str) -> str:
    """The JSON path of a top-level config key (the grammar refuses keys with a double quote)."""
    return "$." + '"' + key + '"'


#: PostgreSQL: the run fields whose columns hold numbers (the others hold text).
NUMERIC_FIELDS: Final = frozenset({"started", "finished", "created", "updated"})
#: Text SQLite takes for a number when it meets a number column (NUMERIC affinity).
_NUMBER_RE: Final = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")
#: One config key of a run as SQLite's json_extract sees it, in three columns: `num` for a
#: number or a boolean (1 or 0), `txt` for a string, object or array (as JSON text), `lit`
#: for what LIKE matches; all NULL when the key is absent or JSON null.
_CONFIG_VALUE: Final = (
    "SELECT CASE jsonb_typeof(j) WHEN 'number' THEN (j #>> '{{}}')::numeric"
    " WHEN 'boolean' THEN CASE WHEN j = 'true'::jsonb THEN 1 ELSE 0 END END AS num,"
    " CASE WHEN jsonb_typeof(j) IN ('string', 'object', 'array')"
    " THEN (j #>> '{{}}') COLLATE \"C\" END AS txt,"
    " CASE jsonb_typeof(j) WHEN 'boolean' THEN CASE WHEN j = 'true'::jsonb THEN '1' ELSE '0' END"
    " ELSE j #>> '{{}}' END AS lit"
    " FROM (SELECT NULLIF({path}, 'null'::jsonb) AS j) AS x"
)


def _as_number(text: str) -> int | float | None:
    """The number SQLite reads in text compared with a number column, or None (it stays text)."""
    if not _NUMBER_RE.fullmatch(text):
        return None
    stripped = text.strip()
    return int(stripped) if stripped.lstrip("+-").isdigit() else float(stripped)


def _as_text(value: Any) -> Any:
    """A value compared with a text column, as SQLite's TEXT affinity makes it."""
    return value if value is None or isinstance(value, str) else repr(value)


def _always(expr: str) -> str:
    """True where expr is not NULL (NULL where it is): SQLite's answer for a comparison
    that holds whatever the value, such as a number being less than any text."""
    return f"({expr} IS NOT NULL OR NULL)"


def _never(expr: str) -> str:
    """False where expr is not NULL (NULL where it is)."""
    return f"({expr} IS NULL AND NULL)"


@dataclass
class PostgresCompiled(Compiled):
    """The same filter for PostgreSQL, answering as SQLite does.

    SQLite compares values of any type with each other; PostgreSQL refuses to compare text
    with a number, so each comparison is spelled for its column's type, with SQLite's
    rules: a number compared with a text column is compared as text, a numeric-looking text
    compared with a number column as a number, and otherwise numbers sort before text. A
    config key is read once per run (a LATERAL join per distinct key) into a number, a
    text and a LIKE column (`_CONFIG_VALUE`); `like` is case-insensitive (ILIKE), as
    SQLite's is; a metric's NaN is NULL, as SQLite stores it.
    """

    def config(self, key: str) -> str:
        """The alias of the LATERAL row of config key `key` (joined once per key)."""
        path = "r.config::jsonb #> ?::text[]"
        params: list[Any] = [[key]]
        if "." in key:
            # `config.a.b`: the key "a.b" if there is one, else b inside a.
            path = f"COALESCE({path}, {path})"
            params.append(key.split("."))
        value = _CONFIG_VALUE.format(path=path).replace("{", "{{").replace("}", "}}")
        return self.joined(f"c:{key}", f"LEFT JOIN LATERAL ({value}) AS {{alias}} ON TRUE", params)

    def column(self, ref: FieldRef) -> tuple[str, bool]:
        """The SQL of a metric or run field, and whether it holds numbers."""
        if ref.kind == "metric":
            return f"NULLIF({self.metric(ref.name)}.last, 'NaN'::float8)", True
        return RUN_COLUMNS[ref.name], ref.name in NUMERIC_FIELDS

    def condition_sql(self, condition: Condition, params: list[Any]) -> str:
        if not isinstance(condition, Comparison) or condition.field.kind == "tag":
            return super().condition_sql(condition, params)
        ref, op, value = condition.field, condition.op, condition.value
        if ref.kind == "config":
            alias = self.config(ref.name)
            if value is None:
                test = f"({alias}.num IS NULL AND {alias}.txt IS NULL)"
                return f"NOT {test}" if op == "!=" else test
            if op in ("like", "not like"):
                params.append(value)
                return f"{alias}.lit {'NOT ' if op == 'not like' else ''}ILIKE ? ESCAPE '\\'"
            if op in ("in", "not in"):
                return self._any_of(
                    [self._config_compare(alias, "=", v, params) for v in value if v is not None],
                    None in value,
                    op == "not in",
                )
            return self._config_compare(alias, op, value, params)
        expr, numeric = self.column(ref)
        if value is None:
            return f"{expr} IS {'NOT ' if op == '!=' else ''}NULL"
        if op in ("like", "not like"):
            params.append(value)
            text = f"CAST({expr} AS TEXT)" if numeric else expr
            return f"{text} {'NOT ' if op == 'not like' else ''}ILIKE ? ESCAPE '\\'"
        if op in ("in", "not in"):
            kept = [v for v in value if v is not None]
            if numeric:
                kept = [
                    n for n in (_as_number(v) if isinstance(v, str) else v for v in kept) if n is not None
                ]
            else:
                kept = [_as_text(v) for v in kept]
            params.extend(kept)
            parts = [f"{expr} IN ({', '.join('?' * len(kept))})"] if kept else [_never(expr)]
            return self._any_of(parts, None in value, op == "not in")
        if numeric:
            if isinstance(value, str):
                number = _as_number(value)
                if number is None:  # numbers sort before text
                    return _always(expr) if op in ("<", "<=", "!=") else _never(expr)
                value = number
            params.append(value)
        else:
            params.append(_as_text(value))
        return f"{expr} {op} ?"

    @staticmethod
    def _any_of(parts: list[str], with_null: bool, negate: bool) -> str:
        """`IN` as OR: a NULL among the values makes a miss NULL, as SQL's IN does."""
        if with_null:
            parts = [*parts, "NULL"]
        joined = "(" + " OR ".join(parts or ["NULL"]) + ")"
        return f"NOT {joined}" if negate else joined

    @staticmethod
    def _config_compare(alias: str, op: str, value: Any, params: list[Any]) -> str:
        """A config value against a number or a text, numbers sorting before text."""
        params.append(value)
        if isinstance(value, str):
            other = "TRUE" if op in ("<", "<=", "!=") else "FALSE"
            return (
                f"CASE WHEN {alias}.txt IS NOT NULL THEN {alias}.txt {op} ?"
                f" WHEN {alias}.num IS NOT NULL THEN {other} END"
            )
        other = "TRUE" if op in (">", ">=", "!=") else "FALSE"
        return (
            f"CASE WHEN {alias}.num IS NOT NULL THEN {alias}.num {op} ?"
            f" WHEN {alias}.txt IS NOT NULL THEN {other} END"
        )

    def order_sql(self, term: OrderTerm) -> str:
        ref = term.field
        if ref.kind == "tag":
            return super().order_sql(term)
        direction = "DESC" if term.descending else "ASC"
        if ref.kind == "config":
            a = self.config(ref.name)
            # Absent last, then numbers before text (after it, descending), as SQLite sorts.
            return (
                f"({a}.num IS NULL AND {a}.txt IS NULL), {a}.txt IS NOT NULL {direction},"
                f" {a}.num {direction}, {a}.txt {direction}"
            )
        expr, _ = self.column(ref)
        return f"{expr} IS NULL, {expr} {direction}"


def compile_filter(
    text: str | None, order_by: list[str] | None = None, dialect: Dialect = SQLITE
) -> Compiled:
    """Parse a filter and an ordering and compile them to the dialect's SQL; a mistake
    raises BadQuery with its position (filter_grammar.py)."""
    parsed = parse_run_query(text, order_by)
    out = PostgresCompiled() if dialect.name == POSTGRES.name else Compiled()
    if parsed.condition is not None:
        out.where = out.condition_sql(parsed.condition, out.where_params)
    if parsed.order:
        out.order = ", ".join([*(out.order_sql(term) for term in parsed.order), "r.created_seq, r.run"])
    return out
