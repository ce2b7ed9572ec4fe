"""Exact-cache keys and the in-memory LRU with TTL (semantics.md 8)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.core.cache import ExactCache, cache_key, cacheable, normalize_messages

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\r\nthere"}]


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_the_key_is_a_stable_sha256_hex() -> None:
    k = cache_key("gpt-4o-mini", MSGS, {"temperature": 0})
    assert len(k) == 64 and int(k, 16) >= 0
    assert k == cache_key("gpt-4o-mini", MSGS, {"temperature": 0})


def test_the_model_messages_and_output_changing_params_change_the_key() -> None:
    base = cache_key("m", MSGS, {"temperature": 0, "max_tokens": 100})
    assert base != cache_key("other", MSGS, {"temperature": 0, "max_tokens": 100})
    assert base != cache_key(
        "m", [*MSGS, {"role": "user", "content": "more"}], {"temperature": 0, "max_tokens": 100}
    )
    assert base != cache_key("m", MSGS, {"temperature": 0, "max_tokens": 101})
    assert base != cache_key("m", MSGS, {"temperature": 0, "max_tokens": 100, "tools": [{"name": "f"}]})
    assert base != cache_key("m", MSGS, {"temperature": 0, "max_tokens": 100, "brand_new_param": 1})


def test_transport_and_bookkeeping_params_do_not() -> None:
    base = cache_key("m", MSGS, {"temperature": 0})
    assert base == cache_key(
        "m", MSGS, {"temperature": 0, "stream": True, "user": "u-1", "metadata": {"a": 1}}
    )
    assert base == cache_key(
        "m", MSGS, {"temperature": 0, "timeout": 30, "stream_options": {"include_usage": True}}
    )


def test_equivalent_spellings_share_a_key() -> None:
    a = cache_key("m", MSGS, {"temperature": 0, "top_p": 1, "stop": None})
    b = cache_key(
        "m",
        [
            {"content": "Be brief.", "role": "System"},
            {"role": "user", "content": [{"type": "text", "text": "Hi\nthere"}]},
        ],
        {"top_p": 1.0, "temperature": 0.0},
    )
    assert a == b


def test_real_differences_in_content_are_kept() -> None:
    assert cache_key("m", [{"role": "user", "content": "hi"}], {}) != cache_key(
        "m", [{"role": "user", "content": "hi "}], {}
    )
    assert cache_key("m", [{"role": "user", "content": "hi"}], {}) != cache_key(
        "m", [{"role": "assistant", "content": "hi"}], {}
    )
    assert cache_key("m", [{"role": "user", "content": "1"}], {"temperature": 0.5}) != cache_key(
        "m", [{"role": "user", "content": "1"}], {"temperature": 0.7}
    )


def test_multi_part_content_is_kept_as_parts() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "data:x"}}]
    [m] = normalize_messages([{"role": "user", "content": parts}])
    assert m["content"] == parts


def test_unkeyable_values_are_a_clear_error() -> None:
    with pytest.raises(TypeError, match="cache key"):
        cache_key("m", MSGS, {"temperature": object()})


@given(st.dictionaries(st.sampled_from(["temperature", "top_p", "seed", "max_tokens"]), st.integers(0, 5)))
def test_param_order_never_matters(params: dict[str, int]) -> None:
    reordered = dict(reversed(list(params.items())))
    assert cache_key("m", MSGS, params) == cache_key("m", MSGS, reordered)


@pytest.mark.parametrize(
    ("temperature", "opt_in", "ok"),
    [(None, False, True), (0, False, True), (0.0, False, True), (0.7, False, False), (0.7, True, True)],
)
def test_cacheable_only_at_temperature_zero_unless_the_route_opts_in(
    temperature: float | None, opt_in: bool, ok: bool
) -> None:
    assert cacheable(temperature, opt_in) is ok


def test_entries_expire_after_their_ttl() -> None:
    clock = Clock()
    cache: ExactCache[str] = ExactCache(ttl_s=10, max_entries=5, clock=clock)
    cache.put("k", "v")
    clock.t = 9.99
    assert cache.get("k") == "v" and "k" in cache
    clock.t = 10.0
    assert cache.get("k") is None and "k" not in cache
    assert len(cache) == 0
    cache.put("short", "v", ttl_s=1)
    clock.t = 11.0
    assert cache.get("short") is None
    s = cache.stats()
    assert (s.hits, s.misses, s.expirations) == (1, 2, 2)


def test_least_recently_used_entries_go_first() -> None:
    cache: ExactCache[int] = ExactCache(ttl_s=100, max_entries=3, clock=Clock())
    for i, k in enumerate("abc"):
        cache.put(k, i)
    assert cache.get("a") == 0  # a is now the most recent
    cache.put("d", 3)
    assert cache.get("b") is None
    assert [cache.get(k) for k in "acd"] == [0, 2, 3]
    assert cache.stats().evictions == 1


def test_overwriting_refreshes_value_and_ttl() -> None:
    clock = Clock()
    cache: ExactCache[str] = ExactCache(ttl_s=10, clock=clock)
    cache.put("k", "old")
    clock.t = 8
    cache.put("k", "new")
    clock.t = 15
    assert cache.get("k") == "new"
    assert len(cache) == 1


def test_purge_and_clear() -> None:
    clock = Clock()
    cache: ExactCache[str] = ExactCache(ttl_s=10, clock=clock)
    cache.put("a", "1")
    cache.put("b", "2", ttl_s=100)
    clock.t = 50
    assert cache.purge_expired() == 1
    assert len(cache) == 1
    cache.discard("b")
    cache.put("c", "3")
    cache.clear()
    assert len(cache) == 0


@pytest.mark.parametrize(("ttl", "size"), [(0, 1), (-1, 1), (1, 0)])
def test_cache_settings_are_checked(ttl: float, size: int) -> None:
    with pytest.raises(ValueError):
        ExactCache(ttl_s=ttl, max_entries=size)
