"""Suite-wide set-up shared by every test package."""

from __future__ import annotations

from collections.abc import Iterator

import aioice.ice
import pytest


@pytest.fixture(autouse=True, scope="session")
def clients_gather_on_loopback() -> Iterator[None]:
    """Make aiortc clients offer a 127.0.0.1 candidate.

    aioice skips loopback when it gathers host candidates; every test client
    and server here talks over loopback only, so the clients are configured to
    gather there (client-side configuration, the server is untouched).
    """
    patch = pytest.MonkeyPatch()
    patch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    yield
    patch.undo()
