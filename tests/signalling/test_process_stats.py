"""Open files counted without listing them; the process metrics Prometheus reads."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator

import pytest

from signalling.process_stats import OpenFiles, ProcessCollector


@pytest.fixture
def opened() -> Iterator[list[int]]:
    descriptors: list[int] = []
    yield descriptors
    for fd in descriptors:
        os.close(fd)


def open_some(descriptors: list[int], n: int) -> None:
    descriptors.extend(os.open(os.devnull, os.O_RDONLY) for _ in range(n))


def test_the_count_follows_every_open_and_close(opened: list[int]) -> None:
    # The clock moves past the relist interval before each count, so a kernel
    # without the count in st_size (before Linux 6.2) lists anew too.
    now = 0.0
    files = OpenFiles(relist_interval=5.0, clock=lambda: now)

    before = files.count()
    assert before == len(os.listdir("/proc/self/fd")) - 1  # the listing's own descriptor
    open_some(opened, 300)
    now += 5.0
    assert files.count() == before + 300
    for fd in opened[:100]:
        os.close(fd)
    del opened[:100]
    now += 5.0
    assert files.count() == before + 200


def test_this_kernel_counts_without_listing_or_falls_back_to_listing() -> None:
    # Linux 6.2+: st_size is the count, and no listing is ever made (a clock
    # that must not be read proves it); older kernels: 0, and OpenFiles lists.
    size = os.stat("/proc/self/fd").st_size

    def no_listing() -> float:
        raise AssertionError("listed although the kernel gave the count")

    if size > 0:
        assert OpenFiles(relist_interval=5.0, clock=no_listing).count() > 0
    else:
        assert OpenFiles(relist_interval=5.0).count() == len(os.listdir("/proc/self/fd")) - 1


def test_a_kernel_without_the_count_is_listed_at_most_once_per_interval(
    opened: list[int],
) -> None:
    # /proc/self/fdinfo has one entry per descriptor, as fd does, and a size of
    # 0 on every kernel: what /proc/self/fd looks like before Linux 6.2.
    assert os.stat("/proc/self/fdinfo").st_size == 0
    now = 100.0
    files = OpenFiles(relist_interval=5.0, clock=lambda: now, directory="/proc/self/fdinfo")

    before = files.count()
    assert abs(before - (len(os.listdir("/proc/self/fd")) - 1)) <= 1
    open_some(opened, 50)
    now += 4.9
    assert files.count() == before  # the old listing, no new one
    now += 0.1
    assert files.count() == before + 50


def test_no_proc_counts_nothing() -> None:
    assert OpenFiles(relist_interval=1.0, directory="/nonexistent/fd").count() == 0


def test_the_collector_exports_prometheus_clients_process_metrics(opened: list[int]) -> None:
    files = OpenFiles(relist_interval=5.0)
    open_some(opened, 10)

    metrics = {m.name: m for m in ProcessCollector(files).collect()}

    assert set(metrics) == {
        "process_virtual_memory_bytes",
        "process_resident_memory_bytes",
        "process_cpu_seconds",  # a counter: its sample is process_cpu_seconds_total
        "process_start_time_seconds",
        "process_open_fds",
        "process_max_fds",
    }
    [open_fds] = metrics["process_open_fds"].samples
    assert abs(open_fds.value - files.count()) <= 1
    [max_fds] = metrics["process_max_fds"].samples
    assert max_fds.value == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    [rss] = metrics["process_resident_memory_bytes"].samples
    assert rss.value > 10_000_000  # a Python process with these imports
    cpu_samples = metrics["process_cpu_seconds"].samples
    [cpu] = [s for s in cpu_samples if s.name == "process_cpu_seconds_total"]
    assert cpu.value > 0
