"""The backends: what differs between SQLite and PostgreSQL (statements, executors, URL rules)."""
