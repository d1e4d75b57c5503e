"""Bounded maps drop the least recently used entry and say so in their metrics; the token
bucket lets through its burst, then its rate."""

from __future__ import annotations

from mxfed.bounded import ENTRIES, EVICTIONS, BoundedDict, TokenBucket


def _entries(name: str) -> float:
    return float(ENTRIES.labels(name)._value.get())


def _evictions(name: str) -> float:
    return float(EVICTIONS.labels(name)._value.get())


def test_least_recently_used_goes_first_and_metrics_follow() -> None:
    cache: BoundedDict[str, int] = BoundedDict("test_lru", 3)
    for index, key in enumerate("abc"):
        cache[key] = index
    assert cache["a"] == 0  # a read makes "a" recent
    cache["d"] = 3
    assert list(cache) == ["c", "a", "d"]  # "b", least recently used, went
    cache["c"] = 9  # an update is no new entry
    del cache["a"]
    assert len(cache) == 2
    assert _entries("test_lru") == 2
    assert _evictions("test_lru") == 1


def test_lookup_is_get_that_makes_the_entry_recent() -> None:
    cache: BoundedDict[str, int] = BoundedDict("test_lookup", 2)
    cache["a"], cache["b"] = 1, 2
    assert cache.lookup("missing") is None
    assert cache.lookup("a") == 1  # "a" is now the most recent
    cache["c"] = 3
    assert list(cache) == ["a", "c"]


def test_instances_of_one_name_add_up() -> None:
    first: BoundedDict[int, int] = BoundedDict("test_shared", 2)
    second: BoundedDict[int, int] = BoundedDict("test_shared", 2)
    for key in range(5):
        first[key] = key
    second[0] = 0
    assert _entries("test_shared") == 3
    assert _evictions("test_shared") == 3


def test_token_bucket_burst_then_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 1.0  # two more tokens
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    now[0] += 100.0  # never more than the burst
    assert sum(bucket.take() for _ in range(10)) == 3
