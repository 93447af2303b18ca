"""Run references: what people type for a run, turned into the run's id.

Every query that takes a run (`run`, `metrics`, `compare`, `items`, `artifacts`,
`resolve`) resolves it here, so the REST API, the Python client and the CLI all accept
the same three spellings, tried in this order:

1. the run's full id;
2. an exact run name: the latest run with that name (by creation), a deleted one only
   when no other run has the name;
3. a unique prefix of an id, as git takes a commit.

A reference that is both a name and a prefix of another run's id, or a prefix of several
ids, is ambiguous: `bad_query`, listing the candidates. One that matches nothing is
`not_found`. Reading is by the primary key and the `runs_name` index, never a scan.
"""

from __future__ import annotations

from typing import Final

import msgspec

from tracklog.protocol import errors

from .dialect import Connection

#: Candidates an ambiguity message lists at most.
MAX_CANDIDATES: Final = 10
#: Above every character: `prefix + _TOP` bounds the ids that start with prefix.
_TOP: Final = "\U0010ffff"


class Resolved(msgspec.Struct, frozen=True):
    """A reference and the run it names: `by` is `id`, `name` or `prefix`; `same_name`
    is how many runs have that name (more than 1: the latest was taken)."""

    ref: str
    id: str
    name: str | None
    deleted: bool
    by: str
    same_name: int = 0


def _describe(run: str, name: str | None) -> str:
    return f"{run} ({name})" if name else run


def resolve(conn: Connection, ref: str | None, field: str = "run", ref_id: int | None = None) -> Resolved:
    """The run `ref` names; NotFound or BadQuery (ambiguous) naming `field`."""
    if not ref:
        raise errors.BadQuery(f"{field}: required (a run id, a unique id prefix or a run name)", ref_id)
    row = conn.execute("SELECT name, deleted FROM runs WHERE run = ?", (ref,)).fetchone()
    if row is not None:
        return Resolved(ref, ref, row[0], bool(row[1]), "id")
    named = conn.execute(
        "SELECT run, deleted FROM runs WHERE name = ? ORDER BY deleted, created_seq DESC, run DESC LIMIT 1",
        (ref,),
    ).fetchall()
    same_name = conn.execute("SELECT count(*) FROM runs WHERE name = ?", (ref,)).fetchone()[0] if named else 0
    prefixed = conn.execute(
        "SELECT run, name, deleted FROM runs WHERE run > ? AND run < ? ORDER BY run LIMIT ?",
        (ref, ref + _TOP, MAX_CANDIDATES + 1),
    ).fetchall()
    shown = repr(ref[:128])
    if named and any(run != named[0][0] for run, _, _ in prefixed):
        candidates = [f"{named[0][0]} (named {ref})"]
        candidates += [
            _describe(run, name) for run, name, _ in prefixed[:MAX_CANDIDATES] if run != named[0][0]
        ]
        raise errors.BadQuery(
            f"{field}: {shown} is ambiguous: the name of {named[0][0]} and a prefix of other ids; "
            f"candidates: {', '.join(candidates)}",
            ref_id,
        )
    if named:
        run, deleted = named[0]
        return Resolved(ref, run, ref, bool(deleted), "name", same_name)
    if len(prefixed) == 1:
        run, name, deleted = prefixed[0]
        return Resolved(ref, run, name, bool(deleted), "prefix")
    if prefixed:
        more = " and more" if len(prefixed) > MAX_CANDIDATES else ""
        listed = ", ".join(_describe(run, name) for run, name, _ in prefixed[:MAX_CANDIDATES])
        count = len(prefixed[:MAX_CANDIDATES])
        raise errors.BadQuery(
            f"{field}: {shown} is ambiguous: it is a prefix of {count}{more} run ids: "
            f"{listed}; give more characters",
            ref_id,
        )
    raise errors.NotFound(f"{field}: no run {shown} (no run has that id, id prefix or name)", ref_id)


def resolve_id(conn: Connection, ref: str | None, field: str = "run", ref_id: int | None = None) -> str:
    """The id of the run `ref` names (see `resolve`)."""
    return resolve(conn, ref, field, ref_id).id


def resolve_live(
    conn: Connection,
    ref: str | None,
    deleted: bool | None,
    field: str = "run",
    ref_id: int | None = None,
) -> Resolved:
    """As `resolve`, for queries that leave deleted runs out unless asked: a deleted run
    is `not_found` (saying so) unless `deleted` is true."""
    found = resolve(conn, ref, field, ref_id)
    if found.deleted and not deleted:
        raise errors.NotFound(
            f"{field}: run {_describe(found.id, found.name)} is deleted; ask with deleted=true to include it",
            ref_id,
        )
    return found
