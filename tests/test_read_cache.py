"""The read cache's rules, driven step by step (store.read_cache): what is kept, when it is dropped,
and the fill that races an invalidation."""

from __future__ import annotations

from modelyard.registry.store.read_cache import (
    AUTH, EVERYTHING, NOTHING_CACHED, ReadCache, model_scope, payload, scopes_of,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def live_cache(**kwargs: object) -> ReadCache:
    cache = ReadCache(100, **kwargs)  # type: ignore[arg-type]
    cache.set_live(True)
    return cache


def test_an_answer_is_kept_until_its_model_changes_and_other_models_keep_theirs() -> None:
    cache = live_cache()
    a, b = model_scope("a"), model_scope("b")
    cache.put(cache.ticket(a, "production"), 1)
    cache.put(cache.ticket(b, "production"), 2)
    assert (cache.get(a, "production"), cache.get(b, "production")) == (1, 2)
    cache.invalidate([a])
    assert cache.get(a, "production") is None
    assert cache.get(b, "production") == 2
    cache.invalidate([EVERYTHING])
    assert cache.get(b, "production") is None and len(cache) == 0


def test_a_fill_that_raced_an_invalidation_is_returned_but_not_kept() -> None:
    """Reader: miss, ticket, read the database (old answer)...  the change commits and is heard...
    then the reader stores what it read: it must not stay."""
    cache = live_cache()
    scope = model_scope("m")
    ticket = cache.ticket(scope, 7)
    cache.invalidate([scope])               # the change is heard while the reader is reading
    assert cache.put(ticket, "old") == "old"  # the reader still answers with what it read
    assert cache.get(scope, 7) is None       # but the next reader goes to the database
    ticket = cache.ticket(scope, 7)
    cache.invalidate([EVERYTHING])
    cache.put(ticket, "old")
    assert cache.get(scope, 7) is None
    ticket = cache.ticket(AUTH, "hash")
    cache.set_live(False)
    cache.set_live(True)                     # a listener that reconnected may have missed changes
    cache.put(ticket, "old")
    assert cache.get(AUTH, "hash") is None


def test_nothing_is_served_or_kept_while_changes_are_not_heard() -> None:
    cache = ReadCache(100)
    scope = model_scope("m")
    cache.put(cache.ticket(scope, 1), "answer")
    assert cache.get(scope, 1) is None
    cache.set_live(True)
    cache.put(cache.ticket(scope, 1), "answer")
    assert cache.get(scope, 1) == "answer"
    cache.set_live(False)                    # the listener lost its session
    assert cache.get(scope, 1) is None
    cache.set_live(True)                     # back: what was held before is gone
    assert cache.get(scope, 1) is None


def test_an_answer_computed_from_the_clock_expires() -> None:
    clock = Clock()
    cache = live_cache(clock=clock)
    scope = model_scope("m")
    cache.put(cache.ticket(scope, 1), "fresh deployments", expires_in=30)
    clock.now += 29.9
    assert cache.get(scope, 1) == "fresh deployments"
    clock.now += 0.2
    assert cache.get(scope, 1) is None
    cache.put(cache.ticket(scope, 2), "already stale", expires_in=-1)
    assert cache.get(scope, 2) is None


def test_the_cache_is_bounded_in_entries_and_in_the_scopes_it_tracks() -> None:
    cache = ReadCache(10)
    cache.set_live(True)
    for n in range(25):
        cache.put(cache.ticket(model_scope(f"m{n}"), "a"), n)
        assert len(cache) <= 10
    cache.invalidate(model_scope(f"x{n}") for n in range(25))
    assert len(cache._generations) <= 10


def test_notify_payloads_name_each_scope_and_fall_back_to_everything() -> None:
    assert scopes_of(payload([model_scope("b"), model_scope("a"), model_scope("a")])) == ["m:a", "m:b"]
    assert payload([]) == EVERYTHING
    assert payload([model_scope("a"), EVERYTHING]) == EVERYTHING
    assert payload(model_scope(f"model-{n:05d}") for n in range(2_000)) == EVERYTHING  # over NOTIFY's limit
    assert scopes_of("") == [EVERYTHING]
    assert NOTHING_CACHED not in payload([model_scope("a")])
