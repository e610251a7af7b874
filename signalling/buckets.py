"""Keys bucketed by a timestamp, so "who is older than T" costs O(answer).

Moving a key happens at most once per bucket width however often it is
touched, and asking for the keys older than a cutoff visits only the buckets
before it (plus the boundary bucket, whose keys are checked one by one by the
caller).  This is what makes the sweeper cost O(expired sessions) rather than
O(all sessions).
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class TimeBuckets(Generic[K]):
    __slots__ = ("_buckets", "_heap", "_in_heap", "_peak", "_where", "width")

    def __init__(self, width: float) -> None:
        if width <= 0:
            raise ValueError("bucket width must be positive")
        self.width = width
        self._buckets: dict[int, dict[K, None]] = {}
        self._where: dict[K, int] = {}
        self._heap: list[int] = []
        self._in_heap: set[int] = set()
        self._peak: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def touch(self, key: K, time: float) -> None:
        """Record that ``key``'s timestamp is now ``time`` (never goes back)."""
        index = int(time // self.width)
        old = self._where.get(key)
        if old is not None and old >= index:
            return
        if old is not None:
            self._discard(old, key)
        found = self._buckets.get(index)
        if found is None:
            found = self._buckets[index] = {}
            if index not in self._in_heap:
                self._in_heap.add(index)
                heapq.heappush(self._heap, index)
        found[key] = None
        self._where[key] = index
        if len(found) > self._peak.get(index, 0):
            self._peak[index] = len(found)

    def remove(self, key: K) -> None:
        index = self._where.pop(key, None)
        if index is not None:
            self._discard(index, key)

    def _discard(self, index: int, key: K) -> None:
        bucket = self._buckets[index]
        del bucket[key]
        if not bucket:
            del self._buckets[index]
            self._peak.pop(index, None)
            self._forget_emptied()
        elif len(bucket) * 8 < self._peak.get(index, 0):
            # A dict keeps its peak size after deletes, and iterating it costs
            # O(peak): compact a bucket that shrank a lot (amortised O(1)).
            self._buckets[index] = dict(bucket)
            self._peak[index] = len(bucket)

    def _forget_emptied(self) -> None:
        # An emptied bucket's index stays in the heap until candidates() reaches it;
        # when nobody asks (a mechanism switched off), rebuild the heap once in a while.
        if len(self._heap) > 2 * len(self._buckets) + 16:
            self._heap = sorted(self._buckets)  # a sorted list is a heap
            self._in_heap = set(self._heap)

    def candidates(self, cutoff: float) -> Iterator[K]:
        """Keys whose timestamp may be older than ``cutoff``.

        Every key of a bucket that ends at or before ``cutoff`` is older; keys
        of the bucket containing ``cutoff`` may be: the caller checks them.
        Iterates over a snapshot, so the caller may touch or remove keys.
        """
        last = int(cutoff // self.width)
        heap = self._heap
        keys: list[K] = []
        still_there: list[int] = []
        while heap and heap[0] <= last:
            index = heapq.heappop(heap)
            bucket = self._buckets.get(index)
            if bucket:
                keys.extend(bucket)
                still_there.append(index)
            else:
                self._in_heap.discard(index)  # emptied since: forget it
        for index in still_there:
            heapq.heappush(heap, index)
        return iter(keys)
