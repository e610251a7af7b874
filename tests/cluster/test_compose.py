"""docker/compose.yaml's cluster profile: nodes, HAProxy's configuration, Redis.

There is no Docker engine here, so what can be checked without one is: the
committed HAProxy configuration is the template's rendering (no drift), the
real haproxy binary accepts it, and every node service is one HAProxy routes
a room's holder to (its server name is its node id), with a configuration
ghostless itself validates and a media port range of its own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from signalling.cluster import ROOT, _binary, render_haproxy
from signalling.config import parse_config

DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
HAPROXY_CONFIG = DOCKER / "haproxy" / "compose.cfg"
HOLDERS_MAP = "/usr/local/etc/haproxy/ghostless-holders.map"


def node_services() -> dict[str, dict[str, str]]:
    """Each ``nodeN`` service of compose.yaml: its environment (merged over the
    shared ``x-node`` one) and its published UDP range."""
    text = COMPOSE.read_text()
    shared = dict(re.findall(r'^    (GHOSTLESS_\w+): "([^"]*)"', text, re.MULTILINE))
    nodes = {}
    for name, body in re.findall(r"^  (node\d+):\n((?:    .*\n|\n)+)", text, re.MULTILINE):
        environment = dict(shared)
        environment.update(re.findall(r'^      (GHOSTLESS_\w+): "([^"]*)"', body, re.MULTILINE))
        published = re.search(r'"(\d+-\d+):(\d+-\d+)/udp"', body)
        assert published is not None, f"{name} publishes no media range"
        environment["published"] = published.group(1)
        environment["container"] = published.group(2)
        nodes[name] = environment
    return nodes


def test_the_committed_haproxy_configuration_is_the_templates_rendering() -> None:
    rendered = subprocess.run(
        [str(DOCKER / "haproxy" / "render-compose")],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
        cwd=ROOT,
    ).stdout

    assert rendered == HAPROXY_CONFIG.read_text(), "run docker/haproxy/render-compose"


def test_haproxy_accepts_the_compose_configuration() -> None:
    with tempfile.TemporaryDirectory() as directory:
        holders = Path(directory) / "holders.map"
        holders.write_text("")
        config = Path(directory) / "haproxy.cfg"
        config.write_text(HAPROXY_CONFIG.read_text().replace(HOLDERS_MAP, str(holders)))
        check = subprocess.run(
            [_binary("haproxy"), "-c", "-f", str(config)], capture_output=True, text=True
        )

    assert check.returncode == 0, check.stdout + check.stderr
    assert "Configuration file is valid" in check.stdout + check.stderr


def test_a_balancers_thread_count_is_rendered_and_haproxy_accepts_it() -> None:
    with tempfile.TemporaryDirectory() as directory:
        holders = Path(directory) / "holders.map"
        holders.write_text("")
        text = render_haproxy([("n1", "127.0.0.1:8765")], holders_map=str(holders), threads=1)
        config = Path(directory) / "haproxy.cfg"
        config.write_text(text)
        check = subprocess.run(
            [_binary("haproxy"), "-c", "-f", str(config)], capture_output=True, text=True
        )

    assert "\n    nbthread 1\n" in text
    assert "nbthread 1" not in render_haproxy([("n1", "127.0.0.1:8765")])  # HAProxy's default
    assert check.returncode == 0, check.stdout + check.stderr
    with pytest.raises(ValueError):
        render_haproxy([("n1", "127.0.0.1:8765")], threads=0)


def test_every_node_is_a_server_named_by_its_node_id_with_ports_of_its_own() -> None:
    nodes = node_services()
    servers = dict(re.findall(r"^    server (\S+) (\S+)", HAPROXY_CONFIG.read_text(), re.M))

    assert len(nodes) >= 2
    assert servers == {env["GHOSTLESS_NODE_ID"]: f"{name}:8765" for name, env in nodes.items()}
    ranges = []
    for env in nodes.values():
        config = parse_config([], {k: v for k, v in env.items() if k.startswith("GHOSTLESS_")})
        assert config.redis_url == "redis://redis:6379/0"
        own_range = f"{config.rtc_min_port}-{config.rtc_max_port}"
        assert env["published"] == env["container"] == own_range
        ranges.append(range(config.rtc_min_port, config.rtc_max_port + 1))
    for index, first in enumerate(ranges):
        for second in ranges[index + 1 :]:
            assert not set(first) & set(second), "two nodes share media ports"


def test_the_nodes_believe_the_forwarded_address_only_from_the_compose_network() -> None:
    text = COMPOSE.read_text()
    subnet = re.search(r"subnet: (\S+)", text)

    assert subnet is not None
    for env in node_services().values():
        assert env["GHOSTLESS_TRUSTED_PROXIES"] == subnet.group(1)
