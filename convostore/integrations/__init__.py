"""Adapters that keep other frameworks' conversation histories in convostore (optional extras)."""
