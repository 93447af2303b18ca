"""The tracklog daemon: server, writer, log store, projections, queries."""
