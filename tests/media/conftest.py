"""Fixtures for the media tests: a worker and a router, torn down after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from media import Router, Worker, WorkerSettings

from .clients import Client
from .object_harness import RawClients


@pytest.fixture
async def worker(request: pytest.FixtureRequest) -> AsyncIterator[Worker]:
    """A worker on loopback; ``@pytest.mark.worker_settings(...)`` overrides settings."""
    marker = request.node.get_closest_marker("worker_settings")
    overrides = marker.kwargs if marker is not None else {}
    worker = Worker(WorkerSettings(listen_ip="127.0.0.1", consent_timeout=10.0, **overrides))
    yield worker
    worker.close()


@pytest.fixture
async def router(worker: Worker) -> Router:
    return await worker.create_router()


@pytest.fixture
async def clients(router: Router) -> AsyncIterator[list[Client]]:
    """Test clients (``clients.join``), closed at the end."""
    made: list[Client] = []
    yield made
    for client in made:
        await client.close()


@pytest.fixture
async def raw_clients() -> AsyncIterator[RawClients]:
    """Raw ICE/DTLS-SRTP clients (``object_harness.RawClients``), closed at the end."""
    made = RawClients()
    yield made
    await made.close()
