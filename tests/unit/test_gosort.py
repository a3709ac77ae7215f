"""confsync.gosort is Go 1.19's sort.Sort; the orders below are Go's own (sort.Sort over
{key, id} pairs by key), so sortByLength leaves equal lengths where confd leaves them."""

from __future__ import annotations

from confsync.confd_funcs import sort_by_length
from confsync.gosort import go_sort


def test_equal_keys_end_where_gos_unstable_sort_leaves_them() -> None:
    # 28 strings, 20 of length 3 (recorded from confd 0.17: tests/fixtures/confd_diff).
    items = sorted([f"v{i:02d}" for i in range(20)] + ["w" * (i % 4 + 1) for i in range(8)])
    assert sort_by_length(items) == [
        "w", "w", "ww", "ww", "v07", "v15", "v06", "v00", "v08", "v09", "v10", "v11", "v12",
        "v13", "v14", "v05", "v16", "v17", "v18", "v19", "v04", "v03", "v02", "v01", "www",
        "www", "wwww", "wwww"]


def test_length_is_counted_in_bytes_as_go_does() -> None:
    assert sort_by_length(["éé", "abc"]) == ["abc", "éé"]  # 4 bytes > 3 bytes


def test_a_short_list_is_an_insertion_sort_and_stable() -> None:
    ids = list(range(12))
    go_sort(ids, lambda i: i % 2)
    assert ids == [0, 2, 4, 6, 8, 10, 1, 3, 5, 7, 9, 11]
