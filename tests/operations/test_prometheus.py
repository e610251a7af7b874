"""A real Prometheus scrapes the server through a real call and sees what happened.

Bob watches Alice's video, then Alice leaves gracefully.  Prometheus (scraping
every second) must have seen the call at its height, the departure, and
nothing left behind; its alert rules must evaluate cleanly against the real
series and stay quiet.  The metrics text itself must pass ``promtool check
metrics``.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from datetime import datetime
from typing import Any

from signalling.protoo_client import ProtooClient
from signalling.server import Server

from .conftest import ALERT_RULES, JOB, Call, Prometheus, http_get

# A stall of the test process (over 1 s) on a loaded machine is a true positive, not a bug.
LOAD_ALERTS = {"GhostlessEventLoopStalled"}


async def test_prometheus_sees_a_call_at_its_height_and_nothing_left_after_it(
    server: Server, prometheus: Prometheus, call: Call
) -> None:
    assert await prometheus.value('ghostless_sessions_ended_total{reason="graceful"}') == 0

    await call.start()

    # At the height of the call: two joined peers, Alice's video forwarded to Bob.
    await prometheus.wait_for_value('ghostless_sessions{state="joined"}', 2)
    await prometheus.wait_for_value('ghostless_media_objects{kind="producers"}', 1)
    await prometheus.wait_for_value('ghostless_media_objects{kind="consumers"}', 1)
    await prometheus.wait_for_value('ghostless_media_objects{kind="transports"}', 4)
    await prometheus.wait_for_value("ghostless_peers", 2)
    await prometheus.wait_for_value("ghostless_rooms", 1)
    await prometheus.wait_for_value("ghostless_connections", 2)
    await prometheus.wait_for_value("ghostless_rtc_ports_in_use", 4)
    assert await prometheus.value("ghostless_rtc_ports") == 20

    await call.alice_leaves()

    # After Alice left: her media released, her departure counted as graceful.
    await prometheus.wait_for_value('ghostless_media_objects{kind="producers"}', 0)
    await prometheus.wait_for_value('ghostless_media_objects{kind="consumers"}', 0)
    await prometheus.wait_for_value('ghostless_media_objects{kind="transports"}', 2)
    await prometheus.wait_for_value("ghostless_rtc_ports_in_use", 2)
    await prometheus.wait_for_value('ghostless_sessions{state="joined"}', 1)
    await prometheus.wait_for_value('ghostless_sessions_ended_total{reason="graceful"}', 1)

    # Over the whole test, from the series Prometheus stored (a window wider than the test).
    async def highest(series: str) -> float | None:
        return await prometheus.value(f"max_over_time({series}[5m])")

    async def lowest(series: str) -> float | None:
        return await prometheus.value(f"min_over_time({series}[5m])")

    graceful_ends = 'ghostless_sessions_ended_total{reason="graceful"}'
    assert await highest('ghostless_sessions{state="joined"}') == 2
    assert await highest('ghostless_media_objects{kind="producers"}') == 1
    assert (await lowest(graceful_ends), await highest(graceful_ends)) == (0, 1)
    assert await highest("ghostless_orphaned_transports") == 0
    failed = await prometheus.value('sum(ghostless_requests_total{outcome="failed"}) or vector(0)')
    assert failed == 0
    await prometheus.wait_for_value(f'up{{job="{JOB}"}}', 1)
    joins = await prometheus.value('ghostless_requests_total{method="join",outcome="ok"}')
    assert joins is not None and joins >= 2
    # Bob's heartbeat reports its round-trip time (heartbeat_interval is 0.5 s here).
    await prometheus.wait_until(
        'ghostless_ping_rtt_seconds_count{source="client"} > 0', lambda samples: len(samples) == 1
    )
    open_fds = await prometheus.value(f'process_open_fds{{job="{JOB}"}}')
    max_fds = await prometheus.value(f'process_max_fds{{job="{JOB}"}}')
    assert open_fds is not None and max_fds is not None and 0 < open_fds < max_fds


async def test_the_alert_rules_evaluate_cleanly_and_stay_quiet_through_a_healthy_call(
    server: Server, prometheus: Prometheus, call: Call
) -> None:
    await call.start()
    await prometheus.wait_for_value('ghostless_media_objects{kind="producers"}', 1)
    await call.alice_leaves()
    await prometheus.wait_for_value('ghostless_sessions_ended_total{reason="graceful"}', 1)
    after_the_call = time.time()

    rules = await rules_evaluated_after(prometheus, after_the_call)

    assert sorted(rule["name"] for rule in rules) == sorted(alert_names())
    unhealthy = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert unhealthy == {}
    alerts = (await prometheus.api("alerts"))["alerts"]
    firing = {alert["labels"]["alertname"] for alert in alerts if alert["state"] == "firing"}
    assert firing - LOAD_ALERTS == set(), alerts


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)$", ALERT_RULES.read_text(), re.MULTILINE)


async def rules_evaluated_after(
    prometheus: Prometheus, moment: float, timeout: float = 20.0
) -> list[dict[str, Any]]:
    """Every loaded rule, once each has been evaluated after ``moment`` (on real series)."""
    deadline = time.monotonic() + timeout
    while True:
        groups = (await prometheus.api("rules"))["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        last = [datetime.fromisoformat(rule["lastEvaluation"]).timestamp() for rule in rules]
        if rules and min(last) > moment:
            return rules
        if time.monotonic() > deadline:
            raise AssertionError(f"rules not evaluated since {moment}: {last}")
        await asyncio.sleep(0.25)


async def test_promtool_finds_nothing_to_lint_in_the_real_metrics(server: Server) -> None:
    # Some activity first, so that lazily created series (requests, refusals) are there too.
    client = await ProtooClient.connect(f"ws://127.0.0.1:{server.port}/?roomId=lint&peerId=p")
    await client.request("join", {"displayName": "p"})
    await client.request("ping", {"rtt": 12})
    refused = await ProtooClient.connect(f"ws://127.0.0.1:{server.port}/?roomId=lint")
    await asyncio.wait_for(refused.closed, 5)
    await client.close()

    status, text = await asyncio.to_thread(
        http_get, f"http://127.0.0.1:{server.metrics_port}/metrics"
    )
    assert status == 200 and b"ghostless_refusals_total{" in text

    lint = await asyncio.to_thread(
        subprocess.run,
        ["promtool", "check", "metrics"],
        input=text,
        capture_output=True,
        timeout=30,
    )
    report = (lint.stdout + lint.stderr).decode(errors="replace")
    assert lint.returncode == 0 and report.strip() == "", report
