"""Every query of the Grafana dashboard returns data from a real Prometheus after a call.

The call exercises what the panels show: Bob watches Alice's video, Carol
waits in the queue of the full room, someone is refused, Alice leaves and
Carol takes her seat, then leaves too.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Iterator
from typing import Any

import orjson

from signalling.protoo_client import ProtooClient
from signalling.server import Server
from tests.signalling.conftest import ServerFactory

from .conftest import ROOT, Call, Prometheus, PrometheusFactory, free_udp_block

DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "ghostless.json"
DATASOURCES = ROOT / "docker" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
# Grafana's variables as Grafana expands them for this test: every instance, a 1-minute window.
VARIABLES = {"$__rate_interval": "1m", "$instance": ".+"}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries() -> list[tuple[str, str]]:
    """(panel title, PromQL with Grafana's variables expanded) for every panel target."""
    dashboard = orjson.loads(DASHBOARD.read_bytes())
    found = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            found.append((panel["title"], expr))
    return found


def test_every_panel_queries_the_provisioned_prometheus_datasource() -> None:
    provisioned = re.findall(r"^\s+uid: (\S+)$", DATASOURCES.read_text(), re.MULTILINE)
    dashboard = orjson.loads(DASHBOARD.read_bytes())

    uids = set()
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"{panel['title']} has no query"
        uids.add(panel["datasource"]["uid"])
        uids.update(target["datasource"]["uid"] for target in panel["targets"])
    uids.update(variable["datasource"]["uid"] for variable in dashboard["templating"]["list"])

    assert provisioned == ["prometheus"]
    assert uids == {"prometheus"}
    assert "${DS_" not in DASHBOARD.read_text()


async def test_every_dashboard_query_returns_data_after_a_call(
    make_server: ServerFactory, watch: PrometheusFactory
) -> None:
    low, high = free_udp_block(20)
    server = await make_server(
        rtc_min_port=low,
        rtc_max_port=high,
        heartbeat_interval=0.5,
        max_peers_per_room=2,
        when_full="queue",
    )
    prometheus = await watch(server)
    call = Call(server)
    try:
        await call.start()
        carol = await ProtooClient.connect(
            f"ws://127.0.0.1:{server.port}/?roomId=call&peerId=carol"
        )
        try:
            _, queued = await carol.next_notification("queuePosition")
            assert queued["position"] == 1
            await prometheus.wait_for_value("ghostless_queue_length", 1)
            await refused_for_a_bad_request(server)

            await call.alice_leaves()
            # The detection histogram's series is created by its first observation, and
            # rate() counts only what Prometheus saw change: let it see Alice's first.
            await prometheus.wait_for_value(
                'ghostless_detection_to_cleanup_seconds_count{reason="graceful"}', 1
            )

            await carol.next_notification("queueAdmitted")
            await carol.request("join", {"displayName": "carol"})
        finally:
            await carol.close()
        await prometheus.wait_for_value('ghostless_sessions_ended_total{reason="graceful"}', 2)

        missing = await queries_without_data(prometheus, queries(), timeout=20)
    finally:
        await call.close()

    assert missing == [], "panels without data:\n" + "\n".join(
        f"  {title}: {expr}{absent}" for title, expr, absent in missing
    )


async def refused_for_a_bad_request(server: Server) -> None:
    nameless = await ProtooClient.connect(f"ws://127.0.0.1:{server.port}/?roomId=call")
    code, _ = await asyncio.wait_for(nameless.closed, 5)
    assert code == 4400


async def queries_without_data(
    prometheus: Prometheus, pending: list[tuple[str, str]], timeout: float
) -> list[tuple[str, str, str]]:
    """Poll until every query has a finite sample: (title, query, metrics without series)
    of those that never had one."""
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        still = []
        for title, expr in pending:
            samples = await prometheus.query(expr)
            if not any(math.isfinite(value) for _, value in samples):
                still.append((title, expr))
        pending = still
        if pending:
            await asyncio.sleep(0.5)
    missing = []
    for title, expr in pending:
        absent = [
            name
            for name in sorted(set(re.findall(r"\b(?:ghostless|process)_\w+", expr)))
            if not await prometheus.query(f"count({name})")
        ]
        missing.append((title, expr, f" (no series: {', '.join(absent)})" if absent else ""))
    return missing
