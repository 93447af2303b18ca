"""The database's tables: the event log, and the projections rebuilt from it.

One schema for every SQL backend, written in SQLite's dialect: SQLite runs it as it is,
PostgreSQL runs it as `dialect.POSTGRES.ddl` translates it (types, `WITHOUT ROWID`, the
reserved column name `user`). Only the full-text index differs: SQLite keeps an FTS5
table the writer feeds (`FTS5_SEARCH_DDL`), PostgreSQL a GIN index over `search_docs`
(in the dialect).
"""

from __future__ import annotations

from typing import Final

#: Bump when a projection's shape or meaning changes: the daemon then rebuilds every
#: projection table from the log at start. 5: run.deleted/run.restored only flip the mark,
#: runs(name) index; 6: metric_summaries.sum and .summed (the mean), items_stage; 7:
#: experiments and experiment_tags, runs.experiment, run_tags.value (tags with a value),
#: artifacts.blob.
PROJECTION_VERSION: Final = 7

#: Points per metric chunk. A chunk is sealed when full; only the open one is rewritten.
CHUNK_POINTS: Final = 1024
#: Epoch stored for a point logged without one.
NO_EPOCH: Final = -(2**63)

LOG_DDL: Final = """
CREATE TABLE IF NOT EXISTS events (
    seq      INTEGER PRIMARY KEY,
    id       TEXT,
    type     TEXT NOT NULL,
    run      TEXT,
    ts       REAL NOT NULL,
    recorded REAL NOT NULL,
    data     BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_id ON events(id) WHERE id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_run ON events(run, seq) WHERE run IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value
) WITHOUT ROWID;
"""

#: Projection tables, in the order `verify` compares them, with their sort key.
PROJECTION_TABLES: Final = {
    "runs": "run",
    "run_tags": "run, tag",
    "experiments": "experiment",
    "experiment_tags": "experiment, tag",
    "items": "seq",
    "artifacts": "seq",
    "metric_chunks": "run, name, chunk",
    "metric_summaries": "run, name",
    "metric_tiers": "run, name, chunk",
    "cache": "key",
    "dedup_entries": "seq",
    # The documents of the full-text index. The FTS5 index over them (`search`) is not
    # compared: its segment b-trees depend on the history of inserts and merges, not
    # only on the documents; it is dropped and rebuilt with the other tables.
    "search_docs": "doc",
}

#: The projection tables, in the SQL every backend shares.
PORTABLE_PROJECTION_DDL: Final = """
CREATE TABLE IF NOT EXISTS runs (
    run          TEXT PRIMARY KEY,
    name         TEXT,
    pipeline     TEXT,
    user         TEXT,
    host         TEXT,
    session      TEXT,
    notes        TEXT,
    parent       TEXT,
    status       TEXT NOT NULL,
    error        TEXT,
    config       TEXT NOT NULL DEFAULT '{}',
    started      REAL NOT NULL,
    finished     REAL,
    created_seq  INTEGER NOT NULL,
    updated_seq  INTEGER NOT NULL,
    last_ts      REAL NOT NULL,
    deleted      INTEGER NOT NULL DEFAULT 0,
    n_events     INTEGER NOT NULL DEFAULT 0,
    n_points     INTEGER NOT NULL DEFAULT 0,
    n_items      INTEGER NOT NULL DEFAULT 0,
    n_failed     INTEGER NOT NULL DEFAULT 0,
    n_artifacts  INTEGER NOT NULL DEFAULT 0,
    experiment   TEXT
);
CREATE INDEX IF NOT EXISTS runs_started ON runs(started);
CREATE INDEX IF NOT EXISTS runs_experiment ON runs(experiment, created_seq);
-- Covers the columns most filters and every listing test (deleted, status, creation
-- order), so a `runs` query walks this index instead of the rows. None of them changes
-- on the frequent counter updates. (No semicolons in these comments: the DDL is split on them.)
CREATE INDEX IF NOT EXISTS runs_listing ON runs(run, deleted, status, created_seq);
-- Run references by name (daemon/runref.py): the latest run with a name.
CREATE INDEX IF NOT EXISTS runs_name ON runs(name, created_seq);
-- value: the tag's value when it has one (MLflow's key-value tags), else NULL.
CREATE TABLE IF NOT EXISTS run_tags (
    run   TEXT NOT NULL,
    tag   TEXT NOT NULL,
    value TEXT,
    PRIMARY KEY (run, tag)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS run_tags_tag ON run_tags(tag);
-- Experiments group runs (runs.experiment). Plain SQL only here (no SQLite-only
-- functions), as the PostgreSQL backend shares these statements.
CREATE TABLE IF NOT EXISTS experiments (
    experiment        TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    lifecycle         TEXT NOT NULL,
    artifact_location TEXT,
    created           REAL NOT NULL,
    updated           REAL NOT NULL,
    created_seq       INTEGER NOT NULL,
    updated_seq       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS experiments_name ON experiments(name);
CREATE TABLE IF NOT EXISTS experiment_tags (
    experiment TEXT NOT NULL,
    tag        TEXT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (experiment, tag)
);
CREATE TABLE IF NOT EXISTS items (
    seq       INTEGER PRIMARY KEY,
    run       TEXT NOT NULL,
    item      TEXT,
    kind      TEXT,
    stage     TEXT,
    iteration INTEGER,
    status    TEXT NOT NULL,
    data      TEXT,
    path      TEXT,
    model     TEXT,
    backend   TEXT,
    duration  REAL,
    error     TEXT,
    ts        REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS items_run ON items(run, status, seq);
-- Covers the per-stage summary of `stats`: counts and sums by (stage, kind) read this index
-- alone, and a duration percentile is one seek in a (stage, kind) range ordered by duration.
CREATE INDEX IF NOT EXISTS items_stage ON items(stage, kind, duration, status);
CREATE TABLE IF NOT EXISTS artifacts (
    seq      INTEGER PRIMARY KEY,
    run      TEXT NOT NULL,
    kind     TEXT NOT NULL,
    path     TEXT NOT NULL,
    size     INTEGER,
    digest   TEXT,
    metadata TEXT,
    ts       REAL NOT NULL,
    -- The blob in the artifact store holding the bytes (sha256:<hex>), if stored there.
    blob     TEXT
);
CREATE INDEX IF NOT EXISTS artifacts_run ON artifacts(run, seq);
CREATE TABLE IF NOT EXISTS metric_chunks (
    run       TEXT NOT NULL,
    name      TEXT NOT NULL,
    chunk     INTEGER NOT NULL,
    n         INTEGER NOT NULL,
    step_min  INTEGER NOT NULL,
    step_max  INTEGER NOT NULL,
    steps     BLOB NOT NULL,
    vals      BLOB NOT NULL,
    epochs    BLOB NOT NULL,
    ts        BLOB NOT NULL,
    PRIMARY KEY (run, name, chunk)
) WITHOUT ROWID;
-- Each chunk's lowest and highest value and where they are: a long history downsamples
-- from these rows without reading its points.
CREATE TABLE IF NOT EXISTS metric_tiers (
    run      TEXT NOT NULL,
    name     TEXT NOT NULL,
    chunk    INTEGER NOT NULL,
    n        INTEGER NOT NULL,
    step_min INTEGER NOT NULL,
    step_max INTEGER NOT NULL,
    lo       REAL,
    lo_at    INTEGER,
    lo_step  INTEGER,
    lo_epoch INTEGER,
    lo_ts    REAL,
    hi       REAL,
    hi_at    INTEGER,
    hi_step  INTEGER,
    hi_epoch INTEGER,
    hi_ts    REAL,
    PRIMARY KEY (run, name, chunk)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS metric_summaries (
    run        TEXT NOT NULL,
    name       TEXT NOT NULL,
    count      INTEGER NOT NULL,
    last       REAL,
    last_step  INTEGER,
    last_epoch INTEGER,
    last_ts    REAL,
    min        REAL,
    min_step   INTEGER,
    min_epoch  INTEGER,
    max        REAL,
    max_step   INTEGER,
    max_epoch  INTEGER,
    -- The sum of the values other than NaN, and how many those are: mean = sum / summed.
    sum        REAL,
    summed     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS metric_summaries_name ON metric_summaries(name, last);
-- `best` reads the lowest or highest value of a metric straight off these.
CREATE INDEX IF NOT EXISTS metric_summaries_min ON metric_summaries(name, min);
CREATE INDEX IF NOT EXISTS metric_summaries_max ON metric_summaries(name, max);
CREATE TABLE IF NOT EXISTS cache (
    key        TEXT PRIMARY KEY,
    value      BLOB NOT NULL,
    expires_at REAL,
    seq        INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dedup_entries (
    seq       INTEGER PRIMARY KEY,
    namespace TEXT NOT NULL,
    kind      TEXT NOT NULL,
    space     TEXT,
    value     BLOB NOT NULL,
    run       TEXT,
    item      TEXT
);
CREATE INDEX IF NOT EXISTS dedup_entries_ns ON dedup_entries(namespace, kind);
CREATE TABLE IF NOT EXISTS search_docs (
    doc   INTEGER PRIMARY KEY,
    kind  TEXT NOT NULL,
    run   TEXT NOT NULL,
    title TEXT NOT NULL,
    body  TEXT NOT NULL
);
"""

#: SQLite's full-text index over search_docs (external content: the writer feeds it).
FTS5_SEARCH_DDL: Final = """
DROP TABLE IF EXISTS search;
CREATE VIRTUAL TABLE search USING fts5(
    title,
    body,
    content = 'search_docs',
    content_rowid = 'doc',
    tokenize = 'porter unicode61'
);
"""

#: Every projection table and index of an SQLite database.
PROJECTION_DDL: Final = PORTABLE_PROJECTION_DDL + FTS5_SEARCH_DDL
