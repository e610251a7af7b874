"""What a process holds: the counts a leak test compares before and after."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass


def _udp_inodes() -> set[str]:
    return _inodes("/proc/net/udp", "/proc/net/udp6")


def _tcp_inodes() -> set[str]:
    return _inodes("/proc/net/tcp", "/proc/net/tcp6")


def _inodes(*tables: str) -> set[str]:
    inodes: set[str] = set()
    for table in tables:
        try:
            with open(table) as f:
                next(f)
                inodes.update(line.split()[9] for line in f)
        except OSError:
            continue
    return inodes


@dataclass(frozen=True)
class ProcessResources:
    file_descriptors: int
    udp_sockets: int
    tasks: int
    tcp_sockets: int = 0
    """Listening and connected TCP sockets (ICE-TCP) of this process."""

    @classmethod
    def now(cls) -> ProcessResources:
        links = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                links.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                continue
        udp = _udp_inodes()
        tcp = _tcp_inodes()
        sockets = [link[8:-1] for link in links if link.startswith("socket:[")]
        return cls(
            file_descriptors=len(links),
            udp_sockets=sum(1 for inode in sockets if inode in udp),
            tasks=len(asyncio.all_tasks()),
            tcp_sockets=sum(1 for inode in sockets if inode in tcp),
        )
