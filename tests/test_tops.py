"""The dashboard's heavy hitters (`_tops`, space-saving) against an exact Counter,
the shared notes the workers publish them in (`_stats.Stats.publish/note`), and
the windows the admin process makes of them (`dashboard.TopLists`)."""

from __future__ import annotations

import json
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy._stats import Stats
from fastproxy._tops import MAX_KEY, Analytics, TopK
from fastproxy.dashboard import TopLists, merge_notes

keys = st.lists(st.integers(min_value=0, max_value=40).map(lambda i: b"/p%d" % i),
                max_size=400)


@settings(max_examples=300, deadline=None)
@given(keys, st.integers(min_value=1, max_value=16))
def test_space_saving_bounds_against_an_exact_count(stream: list[bytes], k: int) -> None:
    top = TopK(k)
    for key in stream:
        top.count(key)
    exact = Counter(stream)
    items = top.items()
    assert len(items) == min(k, len(exact)) == len(top)
    assert sum(count for _, count, _ in items) == len(stream)  # counts are conserved
    n = len(stream)
    for key, count, error in items:
        # Never under, over by at most the error, the error at most N/k.
        assert exact[key] <= count <= exact[key] + error, (key, count, error)
        assert error <= n // k
    listed = {key for key, _, _ in items}
    for key, c in exact.items():
        if c > n / k:  # every heavy hitter is listed
            assert key in listed, (key, c, items)
    assert [c for _, c, _ in items] == sorted((c for _, c, _ in items), reverse=True)


def test_exact_while_the_keys_fit() -> None:
    top = TopK(64)
    stream = [b"/a"] * 50 + [b"/b"] * 7 + [b"/c%d" % i for i in range(60)]
    for key in stream:
        top.count(key)
    assert top.items()[:2] == [(b"/a", 50, 0), (b"/b", 7, 0)]
    assert all(error == 0 for _, _, error in top.items())


def test_analytics_cuts_long_keys_and_counts_missing_agents() -> None:
    a = Analytics(8)
    a.record(b"/" + b"x" * 500, b"10.0.0.1", None)
    a.record(b"/", b"10.0.0.1", b"curl/8")
    snap = a.snapshot()
    assert [len(k) for k, _, _ in snap["paths"]] == [1, MAX_KEY] or \
        sorted(len(k) for k, _, _ in snap["paths"]) == [1, MAX_KEY]
    assert snap["clients"] == [["10.0.0.1", 2, 0]]
    assert sorted(k for k, _, _ in snap["user_agents"]) == ["", "curl/8"]


def test_notes_go_through_shared_memory_and_die_with_their_block() -> None:
    stats = Stats(16, 4, (), note_size=1024)
    assert stats.note(1) == b"" and stats.note(0) == b"" and stats.note(9) == b""
    assert stats.publish(b"x") is False  # no block yet
    stats.use_block(2)
    assert stats.publish(b'{"paths":[]}') is True
    assert stats.note(2) == b'{"paths":[]}'
    assert stats.publish(b"y" * 2000) is False  # too long: the old note stays
    assert stats.note(2) == b'{"paths":[]}'
    stats.retire(2, b"")
    assert stats.note(2) == b""
    assert Stats(16, 4).publish(b"x") is False  # a table without notes


def note(**lists: list[tuple[str, int]]) -> bytes:
    return json.dumps({dim: [[k, c, 0] for k, c in v] for dim, v in lists.items()}).encode()


def test_merge_sums_the_workers_and_skips_bad_notes() -> None:
    merged = merge_notes([note(paths=[("/a", 3), ("/b", 1)]), note(paths=[("/a", 2)]),
                          b"not json", b"", note(clients=[("1.2.3.4", 5)])])
    assert merged["paths"] == {"/a": 5, "/b": 1}
    assert merged["clients"] == {"1.2.3.4": 5} and merged["user_agents"] == {}


def test_windows_subtract_the_snapshot_at_the_window_start() -> None:
    tops = TopLists()
    tops.update([note(paths=[("/a", 10)])], now=0.0)
    tops.update([note(paths=[("/a", 15), ("/b", 2)])], now=5.0)  # no snapshot: < 10 s
    tops.update([note(paths=[("/a", 30), ("/b", 9)])], now=60.0)
    tops.update([note(paths=[("/a", 31), ("/b", 20)])], now=100.0)
    # Since the snapshot at 60 (the newest one at least 40 s old).
    assert tops.window(40, 100.0)["paths"] == [{"key": "/b", "count": 11},
                                               {"key": "/a", "count": 1}]
    # Older than every snapshot but the first: since 0.
    assert tops.window(100, 100.0)["paths"] == [{"key": "/a", "count": 21},
                                                {"key": "/b", "count": 20}]
    # A window longer than the history: everything.
    assert tops.window(3600, 100.0)["paths"][0] == {"key": "/a", "count": 31}
    # A worker that restarted (counts down): nothing, not a negative.
    tops.update([note(paths=[("/a", 1)])], now=110.0)
    assert tops.window(20, 110.0)["paths"] == []
    assert tops.window(20, 110.0)["available"] is True
