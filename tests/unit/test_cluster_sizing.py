"""How big a cluster batch is: from the measured rate, the tail spread, bounded."""

from __future__ import annotations

from leanpool._cluster.sizing import FIRST, GROWTH, LEAST_S, MOST, TARGET_S, BatchSizer


def test_first_batches_are_small_until_one_comes_back() -> None:
    sizer = BatchSizer()
    assert sizer.next_size(left=None, threads=4) == FIRST
    assert sizer.next_size(left=3, threads=4) == 1  # an even share of what is left
    assert BatchSizer(3).next_size(left=None, threads=4) == 3  # one wave of a batch


def test_size_follows_the_rate_growing_at_most_growth_times() -> None:
    sizer = BatchSizer()
    sizer.next_size(left=None, threads=4)
    sizer.observe(FIRST, 0.01)  # 800 tasks/s
    assert sizer.next_size(left=None, threads=4) == round(FIRST * GROWTH)
    for _ in range(10):
        sizer.observe(sizer.last, sizer.last / 800)
        size = sizer.next_size(left=None, threads=4)
    assert size == round(800 * TARGET_S)


def test_slow_tasks_make_small_batches_and_fast_ones_stop_at_most() -> None:
    slow = BatchSizer()
    slow.observe(4, 40.0)  # 10 s a task
    assert slow.next_size(left=None, threads=2) == 1
    fast = BatchSizer()
    for _ in range(20):
        fast.observe(10_000, 0.1)
        size = fast.next_size(left=None, threads=2)
    assert size == MOST


def test_the_tail_is_shared_but_not_below_least_s_of_work() -> None:
    sizer = BatchSizer()
    for _ in range(10):
        sizer.observe(1000, 1.0)  # 1,000 tasks/s
        sizer.next_size(left=None, threads=4)
    assert sizer.next_size(left=4000, threads=4) == 1000  # an even share
    assert sizer.next_size(left=400, threads=4) == round(1000 * LEAST_S)  # not 100
    assert sizer.next_size(left=1_000_000, threads=4) == round(1000 * TARGET_S)
