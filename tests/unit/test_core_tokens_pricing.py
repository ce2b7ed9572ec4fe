from __future__ import annotations

import hashlib
import math

import pytest

from app.core import tokens
from app.core.pricing import PriceOverride, price_call


def test_tiktoken_counts_offline_with_the_bundled_encodings(monkeypatch: pytest.MonkeyPatch) -> None:
    # Any attempt to reach the network would go through requests; make it fail loudly.
    import requests

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("tiktoken tried to download an encoding")

    monkeypatch.setattr(requests, "get", no_network)
    count = tokens.count_text("hello world", "gpt-4o")
    assert count.tokens == 2
    assert count.encoding == "o200k_base"
    assert not count.estimate
    assert tokens.count_text("hello world", "gpt-4").encoding == "cl100k_base"


def test_installed_files_match_the_official_hashes(tmp_path: object) -> None:
    from pathlib import Path

    target = tokens.install_encodings(Path(str(tmp_path)))
    for cache_name, sha in tokens._ENCODING_FILES.values():
        assert hashlib.sha256((target / cache_name).read_bytes()).hexdigest() == sha


def test_claude_counts_are_labelled_as_estimates() -> None:
    count = tokens.count_messages([{"role": "user", "content": "Summarise this ticket"}], "claude-sonnet-4-5")
    assert count.estimate
    assert count.tokens > 3


def test_message_counting_follows_openai_accounting() -> None:
    # 3 per message + role + content, plus 3 to prime the reply.
    msgs = [{"role": "user", "content": "hello world"}]
    enc = tokens.get_encoding("o200k_base")
    expected = 3 + 3 + len(enc.encode("user")) + len(enc.encode("hello world"))
    assert tokens.count_messages(msgs, "gpt-4o").tokens == expected
    parts = [{"role": "user", "content": [{"type": "text", "text": "hello world"}]}]
    assert tokens.count_messages(parts, "gpt-4o").tokens == expected


def test_price_known_model_includes_cache_tokens() -> None:
    plain = price_call("gpt-4o", provider="openai", input_tokens=1_000_000, output_tokens=0)
    assert plain.cost_usd == pytest.approx(2.5)
    cached = price_call("gpt-4o", provider="openai", input_tokens=1_000_000, cache_read_tokens=1_000_000)
    assert cached.cost_usd is not None
    assert cached.cost_usd == pytest.approx(1.25)  # every input token read from cache at the cached rate


def test_anthropic_input_excludes_cache_so_it_is_added() -> None:
    p = price_call("claude-sonnet-4-5", provider="anthropic", input_tokens=0, cache_read_tokens=1_000_000)
    assert p.cost_usd is not None and p.cost_usd > 0
    direct = price_call("claude-sonnet-4-5", provider="anthropic", input_tokens=1_000_000)
    assert direct.cost_usd is not None and p.cost_usd < direct.cost_usd


def test_unknown_model_is_cost_unknown_not_zero() -> None:
    p = price_call(
        "my-private-finetune-9000", provider="openai_compatible", input_tokens=10, output_tokens=10
    )
    assert p.cost_usd is None
    assert p.source == "unknown"
    assert not p.known


def test_override_prices_negotiated_rates() -> None:
    p = price_call(
        "whatever",
        input_tokens=2_000_000,
        output_tokens=1_000_000,
        override=PriceOverride(input_per_mtok=3.0, output_per_mtok=15.0),
    )
    assert p.source == "override"
    assert math.isclose(p.cost_usd or 0, 21.0)


def test_remembered_and_long_texts_count_as_tiktoken_does() -> None:
    """Short texts' counts are remembered, texts over the limit are counted each time: both exact."""
    enc = tokens.get_encoding("o200k_base")
    short = "You are a concise assistant for an operations team. " * 20
    long = "Summarise the incident timeline, naming every service involved. " * 200
    assert len(short) <= tokens._CACHED_TEXT_MAX < len(long)
    for text in (short, long):
        want = 3 + 3 + len(enc.encode(text)) + len(enc.encode("user"))
        first = tokens.count_messages([{"role": "user", "content": text}], "gpt-4o").tokens
        again = tokens.count_messages([{"role": "user", "content": text}], "gpt-4o").tokens
        assert first == again == want
