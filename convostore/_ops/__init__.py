"""Operators' tools: the command line, the report, export and import, admin, the demo.
Internal: they use the public API and the backends, never the other way round."""
