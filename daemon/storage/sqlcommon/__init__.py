"""The SQL both SQLite and PostgreSQL run: schema, dialects, projections, the shared event log."""
