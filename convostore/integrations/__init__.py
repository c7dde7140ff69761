"""Adapters that let agent frameworks keep their conversation memory in convostore.

Each adapter is a module of its own that imports its framework, installed with the extra of
its name (``pip install ".[openai-agents]"`` in the checkout); this package imports none of
them, and ``import convostore`` does not import this package.
"""
