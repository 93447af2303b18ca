"""Run filters and orderings compiled to SQLite: the tree `daemon/filter_grammar.py` parses,
as parameterised SQL over `runs AS r`.

Every value, metric name, config key and tag is bound as a parameter: nothing from the
filter text is pasted into the SQL, so the text can hold quotes, comments or semicolons
without effect. Metric fields join `metric_summaries` once per distinct name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from ...filter_grammar import BoolOp, Comparison, Condition, FieldRef, OrderTerm, TagTest, parse_run_query

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
    where: str = "1"
    where_params: list[Any] = field(default_factory=list)
    order: str = "r.created_seq, r.run"
    order_params: list[Any] = field(default_factory=list)
    _metric_alias: dict[str, str] = field(default_factory=dict)

    def metric(self, name: str) -> str:
        """The alias of the metric_summaries row of metric `name` (joined once per name)."""
        alias = self._metric_alias.get(name)
        if alias is None:
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


def compile_filter(text: str | None, order_by: list[str] | None = None) -> Compiled:
    """Parse a filter and an ordering and compile them to SQL; a mistake raises BadQuery
    with its position (filter_grammar.py)."""
    parsed = parse_run_query(text, order_by)
    out = Compiled()
    if parsed.condition is not None:
        out.where = out.condition_sql(parsed.condition, out.where_params)
    if parsed.order:
        out.order = ", ".join([*(out.order_sql(term) for term in parsed.order), "r.created_seq, r.run"])
    return out
