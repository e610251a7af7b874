"""The alert rules pass promtool: they load, and each fires and stays quiet when it should."""

from __future__ import annotations

import re
import subprocess

from .conftest import ALERT_RULES, ROOT

ALERT_TESTS = ROOT / "docker" / "prometheus" / "alerts_test.yml"
PROMETHEUS_CONFIG = ROOT / "docker" / "prometheus" / "prometheus.yml"


def promtool(*args: str) -> str:
    """Run promtool; its output, or AssertionError with that output on any failure."""
    done = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, cwd=ROOT)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def alert_names() -> set[str]:
    return set(re.findall(r"^\s*- alert: (\w+)$", ALERT_RULES.read_text(), re.MULTILINE))


def test_promtool_accepts_the_alert_rules() -> None:
    output = promtool("check", "rules", str(ALERT_RULES))

    assert f"SUCCESS: {len(alert_names())} rules found" in output


def test_every_alert_fires_and_stays_quiet_as_its_unit_tests_expect() -> None:
    output = promtool("test", "rules", str(ALERT_TESTS))

    assert "SUCCESS" in output


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_stays_quiet() -> None:
    tests = ALERT_TESTS.read_text()
    fires = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n", tests))
    stays_quiet = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts: \[\]\n", tests))

    assert alert_names() - fires == set()
    assert alert_names() - stays_quiet == set()
    assert (fires | stays_quiet) - alert_names() == set()


def test_the_compose_prometheus_configuration_loads_the_alert_rules() -> None:
    output = promtool("check", "config", str(PROMETHEUS_CONFIG))

    assert "SUCCESS: 1 rule files found" in output
