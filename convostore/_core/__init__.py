"""What every backend shares: the calls' lifecycle, session operations, the cache, the store
and its coherence, the schema, ownership and engines. Internal: import from ``convostore``."""
