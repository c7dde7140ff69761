"""Checking and building the SQLAlchemy ``AsyncEngine`` (each backend adds its options and
connection settings: ``Backend.engine_options``, ``on_new_engine``, ``prepare``)."""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic_core import from_json
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext import asyncio as sqlalchemy_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from convostore._core.quiet import ENGINE_LOGGING_NAME, keep_content_out_of_logs
from convostore.backends import backend_for
from convostore.backends._urls import check_database_url, hide_password
from convostore.config import StoreConfig
from convostore.errors import ConfigError, hide_in_messages, register_driver_errors

__all__ = [
    "check_database",
    "create_engine",
    "engine_for_url",
    "load_json",
    "prepare_engine",
    "release_engine",
]

logger = logging.getLogger("convostore")


def check_database(config: StoreConfig, engine: object | None) -> None:
    """Raise ``ConfigError`` unless a repository can run on ``engine`` or, without one, on
    ``config.database_url``, in ``config.schema`` if it is given, and listen on
    ``config.listen_url`` if it is given; from then on those URLs' passwords are masked in
    error messages."""
    if engine is None:
        url = check_database_url(config.database_url)
    elif isinstance(engine, AsyncEngine):
        url = check_database_url(engine.url, "the engine's URL")
    else:
        raise ConfigError(
            "engine must be an AsyncEngine from sqlalchemy.ext.asyncio.create_async_engine "
            f"(on sqlite+aiosqlite or postgresql+asyncpg), not {type(engine).__name__}"
        )
    hide_in_messages(url.password)
    if config.schema is not None:
        backend_for(url).check_schema_name(config.schema)
    if config.listen_url is not None:
        hide_in_messages(check_database_url(config.listen_url, "listen_url").password)


def load_json(text: str) -> Any:
    """``json.loads`` for the documents the database hands back: the empty ones (most turns'
    results) without parsing, the others through pydantic-core's parser, which builds the
    same values faster. What it refuses goes to ``json.loads``: an escaped lone
    surrogate, which ``json.loads`` accepts, and malformed text, for ``json.loads``'s own
    error. A cold load decodes one per turn (see docs/architecture.md, "What speed costs in
    upkeep")."""
    if text == "[]":
        return []
    if text == "{}":
        return {}
    try:
        return from_json(text)
    except ValueError:
        return json.loads(text)


def create_engine(config: StoreConfig, *, timeout: float | None = None) -> AsyncEngine:
    """The repository's own engine for ``config.database_url``, pooled as configured, with its
    backend's options (``Backend.engine_options``; ``timeout``: seconds each connect and
    statement may take where the backend can bound them, None: no bound, for what may rightly
    run long, a migration or an export), in ``config.schema`` if it is given.

    Its errors and logs leave out SQL parameters (``hide_parameters``) and result rows
    (``quiet``): they are turn content, which does not belong in a ``StoreError`` message or a
    log line. ``create_async_engine`` is looked up when called, so an instrumentation that
    wraps it (OpenTelemetry's ``SQLAlchemyInstrumentor().instrument()``) before ``start()``
    sees this engine too."""
    url = make_url(config.database_url)
    logger.debug("convostore: creating an engine for %s", hide_password(url))
    backend = backend_for(url)
    options: dict[str, Any] = {
        "hide_parameters": True,
        "logging_name": ENGINE_LOGGING_NAME,
        "json_deserializer": load_json,
        **backend.engine_options(url, config, timeout),
    }
    engine = engine_for_url(url, timeout=timeout, schema=config.schema, **options)
    keep_content_out_of_logs(engine)
    backend.keep_content_out_of_logs(engine)
    return prepare_engine(engine)


def engine_for_url(
    url: str | URL, *, timeout: float | None = None, schema: str | None = None, **options: Any
) -> AsyncEngine:
    """``create_async_engine(url, **options)`` (looked up when called, for instrumentations
    that wrap it), with the listeners its backend needs on every engine convostore creates
    (``Backend.on_new_engine``: on PostgreSQL, the URL's libpq options reach asyncpg); its
    connections work in ``schema`` if it is given (``Backend.into_schema``)."""
    backend = backend_for(make_url(url))
    if schema is not None:
        url, connect_args = backend.into_schema(
            make_url(url), options.get("connect_args", {}), schema
        )
        options = {**options, "connect_args": connect_args}
    engine = sqlalchemy_asyncio.create_async_engine(url, **options)
    register_driver_errors(backend)
    backend.on_new_engine(engine, timeout)
    return engine


def prepare_engine(engine: AsyncEngine) -> AsyncEngine:
    """Apply convostore's connection settings to an engine (its own, or one a caller passed
    in; for the latter, connections it opens from now on), undone by ``release_engine``."""
    backend_for(engine).prepare(engine)
    return engine


async def release_engine(engine: AsyncEngine, *, owned: bool) -> None:
    """Undo ``prepare_engine``: dispose an engine convostore created; leave a caller's open,
    without convostore's settings once no repository of ours uses it."""
    if owned:
        await engine.dispose()
        return
    backend_for(engine).release(engine)
