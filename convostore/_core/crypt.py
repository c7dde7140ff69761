"""Turn text encrypted at rest (``StoreConfig.encryption_keys``): Fernet tokens, marked with
the id of the key that made them.

A sealed value is ``SEALED_MARK``, the key's id (8 hex digits: the start of the SHA-256 of
the key), ``:``, then the Fernet token (URL-safe base64), e.g. ``csf1:3f2a9c1e:gAAAAAB...``.
The mark is what tells a sealed value from text stored before encryption was turned on, which
still loads as it is; the key id says which key opens it without trying each, and lets
``rekey`` find in SQL the rows the first key did not seal. ``results`` (a JSON column) holds the
token of its JSON text as a JSON string: plain results are always a list, so a string there is
always sealed, and the column stays valid JSON on every backend.

Fernet (AES-128-CBC with HMAC-SHA256, a random IV per value) is authenticated, has no limit on
values per key worth planning for (AES-GCM's random 96-bit nonces have one), and its keys are
the 32-byte URL-safe base64 strings ``Fernet.generate_key()`` prints. ``cryptography`` is an
optional extra, imported only when keys are configured.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from convostore.errors import ConfigError, DecryptionFailed

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

__all__ = ["SEALED_MARK", "TurnCipher", "cipher_for", "key_id", "refuse_sealed", "sealed_with"]

SEALED_MARK = "csf1:"
"""How every sealed value starts (convostore, Fernet, format 1)."""
_KEY_ID_LENGTH = 8
_PREFIX_LENGTH = len(SEALED_MARK) + _KEY_ID_LENGTH + 1


def key_id(key: str) -> str:
    """The id a sealed value carries for ``key``: 8 hex digits of its SHA-256 (which tell
    nothing of the key)."""
    return hashlib.sha256(key.encode("ascii")).hexdigest()[:_KEY_ID_LENGTH]


def sealed_with(key: str) -> str:
    """The start of every value ``key`` seals, ``csf1:<key id>:`` (``rekey`` looks for rows
    without it)."""
    return f"{SEALED_MARK}{key_id(key)}:"


def refuse_sealed(value: str) -> None:
    """Raise ``DecryptionFailed`` if ``value`` is sealed: read without keys, it would be the
    token instead of the text."""
    if value.startswith(SEALED_MARK):
        raise DecryptionFailed(
            f"a stored turn is encrypted (key id {_id_of(value)}) but StoreConfig."
            "encryption_keys is empty; set the keys it was written with"
        )


def _id_of(value: str) -> str:
    return value[len(SEALED_MARK) : len(SEALED_MARK) + _KEY_ID_LENGTH]


def _fernet() -> tuple[type[Fernet], type[Exception]]:
    """Fernet and the error of a token it refuses, imported now (an optional extra)."""
    try:
        from cryptography.fernet import Fernet, InvalidToken
    except ImportError:
        raise ConfigError(
            "StoreConfig.encryption_keys needs the cryptography package: "
            'pip install "convostore[encryption]"'
        ) from None
    return Fernet, InvalidToken


class TurnCipher:
    """Seals and opens the encrypted fields of turns (``content``, ``resolved_question``,
    ``results``) with a list of keys: the first seals, all open."""

    __slots__ = ("_first", "_invalid", "_openers", "_prefix", "first_id")

    def __init__(self, keys: Sequence[str]) -> None:
        """Raises ``ConfigError`` if there are no keys, a key is not a Fernet key (32 bytes in
        URL-safe base64), or ``cryptography`` is not installed. No message shows a key."""
        if not keys:
            raise ConfigError("encryption needs at least one key")
        fernet, self._invalid = _fernet()
        openers: dict[str, Fernet] = {}
        for index, key in enumerate(keys):
            try:
                openers.setdefault(key_id(key), fernet(key))
            except (ValueError, TypeError, UnicodeError):
                raise ConfigError(
                    f"encryption key {index + 1} is not a Fernet key (32 bytes in URL-safe "
                    "base64, as Fernet.generate_key() makes)"
                ) from None
        self.first_id = key_id(keys[0])
        """The id of the key that seals."""
        self._first = openers[self.first_id]
        self._openers = openers
        self._prefix = sealed_with(keys[0])

    def seal(self, text: str) -> str:
        """``text`` sealed with the first key."""
        return self._prefix + self._first.encrypt(text.encode("utf-8")).decode("ascii")

    def seal_optional(self, text: str | None) -> str | None:
        """``seal``, None passing."""
        return None if text is None else self.seal(text)

    def seal_results(self, results: Any) -> str:
        """A turn's results sealed: the token of their JSON text (stored as a JSON string)."""
        return self.seal(json.dumps(results))

    def open(self, value: str) -> str:
        """A stored text value as written: opened if sealed, else as it is (stored before
        encryption was turned on). ``DecryptionFailed`` if no key given opens it."""
        if not value.startswith(SEALED_MARK):
            return value
        found = _id_of(value)
        opener = self._openers.get(found)
        if opener is None:
            raise DecryptionFailed(
                f"a stored turn was encrypted with key id {found}, which is not among "
                f"StoreConfig.encryption_keys (ids {', '.join(self._openers)})"
            )
        try:
            return opener.decrypt(value[_PREFIX_LENGTH:]).decode("utf-8")
        except (self._invalid, UnicodeDecodeError):
            raise DecryptionFailed(
                f"a stored turn encrypted with key id {found} does not decrypt: it was altered "
                "or is not convostore's"
            ) from None

    def open_optional(self, value: str | None) -> str | None:
        """``open``, None passing."""
        return None if value is None else self.open(value)

    def open_results(self, value: Any) -> Any:
        """Stored results as written: a string is sealed JSON text, anything else plain."""
        return json.loads(self.open(value)) if isinstance(value, str) else value

    def reseal(self, value: str) -> str:
        """A stored text value sealed with the first key (``rekey``): opened first if sealed
        with another, sealed if plain."""
        if value.startswith(self._prefix):
            return value
        return self.seal(self.open(value))


def cipher_for(keys: Sequence[str]) -> TurnCipher | None:
    """The cipher of ``keys`` (``StoreConfig.encryption_keys``); None for no keys."""
    return TurnCipher(keys) if keys else None
