"""The aiortc internals media/aiortc_bridge.py relies on are still there."""

from __future__ import annotations

import aioice
import aiortc

from media.aiortc_bridge import check_internals


async def test_the_aiortc_internals_the_bridge_uses_still_exist() -> None:
    check_internals()


def test_aiortc_and_aioice_are_the_pinned_versions() -> None:
    # The bridge was written against these; an upgrade must re-run the whole suite.
    assert aiortc.__version__ == "1.16.0"
    assert aioice.__version__ == "0.13.0"
