"""The PostgreSQL backend: one log shared by several daemons."""
