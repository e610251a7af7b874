"""Configuration (signalling/config.py): flags > GHOSTLESS_* environment > defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from signalling.config import OPTIONS, Config, ConfigError, _Option, parse_config, replace
from signalling.liveness import LivenessPolicy, TakeoverPolicy
from signalling.payloads import PeerLimits


def parse(*argv: str, **environ: str) -> Config:
    return parse_config(list(argv), environ)


def error(*argv: str, **environ: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(*argv, **environ)
    return str(caught.value)


def flag_of(name: str) -> str:
    return "--" + name.removeprefix("liveness.").replace(".", "-").replace("_", "-")


def env_of(name: str) -> str:
    return "GHOSTLESS_" + name.removeprefix("liveness.").replace(".", "_").upper()


def names(message: str, field: str) -> bool:
    """Whether ``message`` names ``field`` (as the field, its flag or its env var)."""
    normal = message.lower().replace("-", "_")
    return field.removeprefix("liveness.").lower() in normal


# -- defaults and precedence ----------------------------------------------------------------


def test_nothing_given_means_the_defaults() -> None:
    config = parse()

    assert config == Config()
    assert (config.host, config.port) == ("127.0.0.1", 8765)
    assert config.metrics_port == 9102
    assert (config.rtc_min_port, config.rtc_max_port) == (40000, 49999)
    # ICE-TCP on, so that UDP-blocked clients can join; UDP keeps the higher priority.
    assert (config.rtc_enable_tcp, config.rtc_prefer_udp, config.rtc_prefer_tcp) == (
        True,
        False,
        False,
    )
    assert config.rtc_max_tcp_connections == 8
    assert config.consent_timeout == 30.0
    assert config.liveness == LivenessPolicy()
    assert config.liveness.takeover is TakeoverPolicy.TAKEOVER
    assert config.liveness.inactivity_limit is None
    assert config.token_secret is None and config.rtc_announced_address is None
    assert config.max_peers_per_room is None
    assert (config.log_format, config.log_level, config.gc_freeze) == ("text", "INFO", True)


def test_unrelated_environment_variables_are_ignored() -> None:
    assert parse(PORT="1", GHOSTLESS="x", GHOSTLESS_NOT_AN_OPTION="x") == Config()


def test_the_environment_overrides_the_defaults() -> None:
    config = parse(GHOSTLESS_PORT="9000", GHOSTLESS_GRACE_PERIOD="5", GHOSTLESS_HOST="0.0.0.0")

    assert config.port == 9000
    assert config.host == "0.0.0.0"
    assert config.liveness.grace_period == 5.0
    assert config.liveness.silence_timeout == LivenessPolicy().silence_timeout


def test_a_flag_overrides_the_environment() -> None:
    config = parse(
        "--port", "9001", "--grace-period", "7", GHOSTLESS_PORT="9000", GHOSTLESS_GRACE_PERIOD="5"
    )

    assert config.port == 9001
    assert config.liveness.grace_period == 7.0


def test_a_flag_may_use_the_equals_form() -> None:
    assert parse("--port=9002").port == 9002


def test_values_are_stripped_of_surrounding_blanks() -> None:
    config = parse(GHOSTLESS_PORT=" 9000 ", GHOSTLESS_LOG_LEVEL=" debug\n")

    assert config.port == 9000 and config.log_level == "DEBUG"


# A valid value, other than the default, for every option.
OTHER_VALUES = {
    "host": "127.0.0.2",
    "port": "3000",
    "metrics_host": "127.0.0.2",
    "metrics_port": "3001",
    "rtc_listen_ip": "127.0.0.2",
    "rtc_announced_address": "203.0.113.7",
    "rtc_min_port": "41000",
    "rtc_max_port": "45000",
    "rtc_enable_tcp": "off",
    "rtc_prefer_udp": "on",
    "rtc_prefer_tcp": "on",
    "rtc_max_tcp_connections": "3",
    "consent_timeout": "31",
    "liveness.heartbeat_interval": "31",
    "liveness.grace_period": "11",
    "liveness.silence_timeout": "21",
    "liveness.probe_after": "12",
    "liveness.stale_after": "121",
    "liveness.sweep_interval": "31",
    "liveness.inactivity_limit": "1000",
    "liveness.idle_after": "121",
    "liveness.background_after": "601",
    "liveness.takeover": "reject",
    "room_close_delay": "21",
    "max_peers_per_room": "8",
    "max_message_size": "2048",
    "request_timeout": "31",
    "token_secret": "s3cret-s3cret-s3cret-s3cret-s3cret",
    "shutdown_timeout": "11",
    "reconnect_delay": "3",
    "log_format": "json",
    "log_level": "DEBUG",
    "gc_freeze": "false",
    "gc_collect_interval": "600",
    "tick_interval": "0.05",
    "liveness.media_probe_after": "4",
    "liveness.media_silence_timeout": "8",
    "liveness.socket_probe_after": "12",
    "probe_chunk": "64",
    "ws_close_timeout": "5",
    "ws_max_queue": "32",
    "listen_backlog": "512",
    "ws_write_high_water": "65536",
    "speech_interval": "1.5",
    "refusal_log_interval": "30",
    "token_jwks": str(Path(__file__).with_name("jwks_example.json")),
    "token_leeway": "31",
    "token_max_lifetime": "3600",
    "token_audience": "ghostless",
    "token_issuer": "https://app.example",
    "max_connections": "100",
    "max_connections_per_ip": "5",
    "ip_connection_rate": "2/5",
    "trusted_proxies": "10.0.0.0/8, 192.0.2.1",
    "max_outbound_bytes": "65536",
    "message_rate": "10/20",
    "broadcast_rate": "1/2",
    "heartbeat_rate": "1/3",
    "refusal_rate": "2/10",
    "max_display_name_length": "64",
    "max_device_bytes": "512",
    "max_app_data_bytes": "1024",
    "max_transports_per_peer": "2",
    "max_producers_per_peer": "3",
    "max_data_producers_per_peer": "1",
    "sctp_send_buffer_size": "65536",
    "max_queued_dtls_records": "64",
    "media_error_log_interval": "10",
    "consent_resync_window": "8",
    "max_sessions": "500",
    "when_full": "queue",
    "queue_timeout": "60",
    "max_queue_length": "10",
    "listed_rooms": "public-*,demo",
    "lobby_update_interval": "1",
    "quality.interval": "5",
    "quality.rtt_unstable_ms": "250",
    "quality.rtt_poor_ms": "900",
    "quality.loss_unstable": "0.05",
    "quality.loss_poor": "0.2",
    "quality.jitter_unstable_ms": "40",
    "quality.jitter_poor_ms": "100",
    "quality.consent_gap_unstable": "9",
    "quality.consent_gap_poor": "20",
    "quality.degrade_samples": "2",
    "quality.smoothing": "0.5",
    "quality.recovery_margin": "0.3",
    "quality.recovery_hold": "20",
    "quality.min_loss_packets": "50",
    "quality.forget_after": "60",
    "ready_max_port_use": "0.5",
    "ready_max_fd_use": "0.5",
    "open_files_relist_interval": "30",
    "liveness.join_timeout": "31",
    "liveness.stall_tolerance": "2",
    "liveness.stall_resync": "6",
    "redis_url": "redis://127.0.0.1:6379/0",
    "redis_prefix": "cluster2",
    "node_id": "node-a",
    "node_address": "10.0.0.1:8765",
    "lease_ttl": "5",
    "lease_renew_interval": "2",
    "lease_stall_limit": "30",
    "reaper_interval": "2",
    "redis_timeout": "0.25",
    "cluster_connections_per_ip": "false",
    "cluster_max_sessions": "5000",
    "cluster_release_delay": "0.5",
    "cluster_queue_retry": "2.5",
    "lobby_linger": "5",
    "lobby_max_remote_rooms": "100",
}


def value_of(config: Config, name: str) -> object:
    if name.startswith("liveness."):
        return getattr(config.liveness, name.removeprefix("liveness."))
    if name.startswith("quality."):
        return getattr(config.quality, name.removeprefix("quality."))
    return getattr(config, name)


@pytest.mark.parametrize("name", [o.name for o in OPTIONS])
def test_every_option_has_a_flag_and_an_environment_variable(name: str) -> None:
    value = OTHER_VALUES[name]

    from_flag = parse(flag_of(name), value)
    from_env = parse(**{env_of(name): value})

    assert from_flag == from_env
    assert value_of(from_flag, name) != value_of(Config(), name)


# -- optional values, choices, booleans -----------------------------------------------------


@pytest.mark.parametrize("off", ["off", "OFF", "none", "None", ""])
def test_off_switches_optional_values_off(off: str) -> None:
    config = parse(
        "--metrics-port", off,
        "--silence-timeout", off,
        "--stale-after", off,
        "--max-peers-per-room", off,
        "--token-secret", off,
        "--rtc-announced-address", off,
    )  # fmt: skip

    assert config.metrics_port is None
    assert config.liveness.silence_timeout is None
    assert config.liveness.stale_after is None
    assert config.max_peers_per_room is None
    assert config.token_secret is None
    assert config.rtc_announced_address is None


def test_optional_values_may_also_be_switched_on() -> None:
    config = parse(
        GHOSTLESS_INACTIVITY_LIMIT="1800",
        GHOSTLESS_MAX_PEERS_PER_ROOM="8",
        GHOSTLESS_TOKEN_SECRET="s3cret-s3cret-s3cret-s3cret-s3cret",
        GHOSTLESS_METRICS_PORT="0",
    )

    assert config.liveness.inactivity_limit == 1800.0
    assert config.max_peers_per_room == 8
    assert config.token_secret == "s3cret-s3cret-s3cret-s3cret-s3cret"
    assert config.metrics_port == 0


def test_an_empty_environment_variable_switches_an_optional_value_off() -> None:
    assert parse(GHOSTLESS_METRICS_PORT="").metrics_port is None


@pytest.mark.parametrize(
    ("raw", "policy"),
    [
        ("takeover", TakeoverPolicy.TAKEOVER),
        ("reject", TakeoverPolicy.REJECT),
        ("REJECT", TakeoverPolicy.REJECT),
        ("Takeover", TakeoverPolicy.TAKEOVER),
    ],
)
def test_the_takeover_policy_is_a_case_insensitive_choice(raw: str, policy: TakeoverPolicy) -> None:
    assert parse("--takeover", raw).liveness.takeover is policy
    assert parse(GHOSTLESS_TAKEOVER=raw).liveness.takeover is policy


def test_choices_are_normalised_to_their_canonical_spelling() -> None:
    config = parse("--log-format", "JSON", "--log-level", "warning")

    assert (config.log_format, config.log_level) == ("json", "WARNING")


@pytest.mark.parametrize(
    ("raw", "value"),
    [("1", True), ("true", True), ("Yes", True), ("on", True),
     ("0", False), ("FALSE", False), ("no", False), ("off", False)],
)  # fmt: skip
def test_booleans_accept_the_usual_spellings(raw: str, value: bool) -> None:
    assert parse("--gc-freeze", raw).gc_freeze is value


# -- bad values -------------------------------------------------------------------------------

BAD_VALUES = {
    "int": "eighty",
    "float": "soon",
    "optional_int": "1.5",
    "optional_float": "never",
    "bool": "maybe",
    "choice": "bogus",
}
CONVERTED = [o for o in OPTIONS if o.kind in BAD_VALUES]


@pytest.mark.parametrize("option", CONVERTED, ids=lambda o: o.name)
def test_a_value_of_the_wrong_kind_names_the_flag_it_came_from(option: _Option) -> None:
    name, kind = option.name, option.kind

    message = error(flag_of(name), BAD_VALUES[kind])

    assert flag_of(name) in message
    assert repr(BAD_VALUES[kind]) in message


@pytest.mark.parametrize("option", CONVERTED, ids=lambda o: o.name)
def test_a_value_of_the_wrong_kind_names_the_environment_variable_it_came_from(
    option: _Option,
) -> None:
    name, kind = option.name, option.kind

    message = error(**{env_of(name): BAD_VALUES[kind]})

    assert env_of(name) in message
    assert repr(BAD_VALUES[kind]) in message


def test_a_bad_flag_is_reported_even_when_the_environment_is_fine() -> None:
    message = error("--port", "x", GHOSTLESS_PORT="9000")

    assert "--port" in message and "GHOSTLESS_PORT" not in message


def test_a_bad_choice_lists_the_choices() -> None:
    message = error("--takeover", "steal")

    assert "--takeover" in message and "takeover" in message and "reject" in message


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--port", "65536"], "port"),
        (["--port", "-1"], "port"),
        (["--metrics-port", "70000"], "metrics_port"),
        (["--rtc-min-port", "-5"], "rtc_min_port"),
        (["--rtc-max-port", "65536"], "rtc_max_port"),
        (["--rtc-min-port", "50000", "--rtc-max-port", "40000"], "rtc_min_port"),
        (["--rtc-min-port", "0", "--rtc-max-port", "100"], "rtc_min_port"),
        (["--rtc-min-port", "100", "--rtc-max-port", "0"], "rtc_max_port"),
        (["--rtc-listen-ip", "localhost"], "rtc_listen_ip"),
        (["--rtc-max-tcp-connections", "0"], "rtc_max_tcp_connections"),
        (["--rtc-enable-tcp", "maybe"], "rtc_enable_tcp"),
        (["--rtc-listen-ip", "0.0.0.0"], "rtc_listen_ip"),
        (["--rtc-listen-ip", "::"], "rtc_listen_ip"),
        (["--consent-timeout", "9.9"], "consent_timeout"),
        (["--consent-timeout", "nan"], "consent_timeout"),
        (["--room-close-delay", "-1"], "room_close_delay"),
        (["--max-peers-per-room", "0"], "max_peers_per_room"),
        (["--max-message-size", "1023"], "max_message_size"),
        (["--message-rate", "fast"], "message_rate"),
        (["--broadcast-rate", "0/5"], "broadcast_rate"),
        (["--max-outbound-bytes", "1000"], "max_outbound_bytes"),
        (["--max-connections-per-ip", "0"], "max_connections_per_ip"),
        (["--trusted-proxies", "10.0.0.0/33"], "trusted_proxies"),
        (["--ready-max-port-use", "1.5"], "ready_max_port_use"),
        (["--token-secret", "short"], "token_secret"),
        (["--token-jwks", "/nonexistent/keys.json"], "jwks"),
        (["--join-timeout", "0"], "join_timeout"),
        (["--request-timeout", "0"], "request_timeout"),
        (["--shutdown-timeout", "-1"], "shutdown_timeout"),
        (["--reconnect-delay", "-0.5"], "reconnect_delay"),
        (["--grace-period", "0"], "grace_period"),
        (["--heartbeat-interval", "-1"], "heartbeat_interval"),
        (["--probe-after", "20"], "probe_after"),
        (["--silence-timeout", "10"], "silence_timeout"),
        (["--stale-after", "0"], "stale_after"),
        (["--sweep-interval", "0"], "sweep_interval"),
        (["--inactivity-limit", "-60"], "inactivity_limit"),
        (["--idle-after", "600"], "background_after"),
        (["--background-after", "nan"], "background_after"),
        (["--cluster-queue-retry", "0"], "cluster_queue_retry"),
        (["--cluster-queue-retry", "nan"], "cluster_queue_retry"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v,
)
def test_an_out_of_range_value_is_refused_with_a_message_naming_it(
    argv: list[str], field: str
) -> None:
    message = error(*argv)

    assert names(message, field), message


def test_an_out_of_range_value_from_the_environment_is_refused_too() -> None:
    assert names(error(GHOSTLESS_PORT="99999"), "port")
    assert names(error(GHOSTLESS_PROBE_AFTER="25"), "probe_after")


def test_the_liveness_policy_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="liveness"):
        parse("--probe-after", "30")


@pytest.mark.parametrize("port", ["0", "1", "65535"])
def test_ports_from_zero_to_65535_are_accepted(port: str) -> None:
    config = parse("--port", port, "--metrics-port", port)

    assert config.port == config.metrics_port == int(port)


@pytest.mark.parametrize(("low", "high"), [("0", "0"), ("1", "65535"), ("40000", "40000")])
def test_an_rtc_port_range_may_be_any_range_or_zero_zero_for_ephemeral(low: str, high: str) -> None:
    config = parse("--rtc-min-port", low, "--rtc-max-port", high)

    assert (config.rtc_min_port, config.rtc_max_port) == (int(low), int(high))


@pytest.mark.parametrize("address", ["0.0.0.0", "::"])
def test_listening_on_every_address_needs_an_announced_address(address: str) -> None:
    message = error("--rtc-listen-ip", address)
    assert "rtc_announced_address" in message

    config = parse("--rtc-listen-ip", address, "--rtc-announced-address", "203.0.113.7")
    assert config.rtc_listen_ip == address
    assert config.rtc_announced_address == "203.0.113.7"


def test_a_specific_listen_address_needs_no_announced_address() -> None:
    assert parse("--rtc-listen-ip", "192.0.2.10").rtc_announced_address is None
    assert parse("--rtc-listen-ip", "::1").rtc_listen_ip == "::1"


@pytest.mark.parametrize("timeout", ["9.99", "0", "-30"])
def test_a_consent_timeout_under_ten_seconds_is_refused(timeout: str) -> None:
    assert "consent_timeout" in error("--consent-timeout", timeout)


def test_a_consent_timeout_of_ten_seconds_is_the_minimum_rfc_7675_allows() -> None:
    assert parse("--consent-timeout", "10").consent_timeout == 10.0


def test_the_silence_timeout_may_be_off_whatever_the_probe_delay() -> None:
    config = parse("--silence-timeout", "off", "--probe-after", "500")

    assert config.liveness.silence_timeout is None and config.liveness.probe_after == 500


# -- replace() ----------------------------------------------------------------------------------


def test_replace_changes_top_level_fields_and_flat_liveness_fields() -> None:
    base = Config()

    changed = replace(base, port=0, grace_period=2.5, takeover=TakeoverPolicy.REJECT)

    assert changed.port == 0
    assert changed.liveness.grace_period == 2.5
    assert changed.liveness.takeover is TakeoverPolicy.REJECT
    assert changed.liveness.silence_timeout == base.liveness.silence_timeout
    assert base == Config()  # the original is untouched


def test_replace_accepts_a_whole_liveness_policy() -> None:
    policy = LivenessPolicy(grace_period=3)

    assert replace(Config(), liveness=policy).liveness is policy


def test_replace_without_changes_is_an_equal_copy() -> None:
    assert replace(Config()) == Config()


def test_replace_validates_the_result() -> None:
    with pytest.raises(ConfigError, match="port"):
        replace(Config(), port=70000)
    with pytest.raises(ConfigError, match="rtc_announced_address"):
        replace(Config(), rtc_listen_ip="0.0.0.0")
    with pytest.raises(ConfigError, match="consent_timeout"):
        replace(Config(), consent_timeout=5)

    ok = replace(Config(), rtc_listen_ip="0.0.0.0", rtc_announced_address="203.0.113.7")
    assert ok.rtc_listen_ip == "0.0.0.0"


def test_replace_reports_a_bad_liveness_value_as_a_config_error() -> None:
    with pytest.raises(ConfigError, match="probe_after"):
        replace(Config(), probe_after=25)
    with pytest.raises(ConfigError, match="grace_period"):
        replace(Config(), grace_period=0)


def test_replace_refuses_an_unknown_field() -> None:
    with pytest.raises(TypeError):
        replace(Config(), no_such_option=1)


def test_config_is_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().port = 1  # type: ignore[misc]


def test_ice_tcp_can_be_switched_off_or_preferred() -> None:
    config = parse("--rtc-enable-tcp", "off", "--rtc-max-tcp-connections", "2")
    assert (config.rtc_enable_tcp, config.rtc_max_tcp_connections) == (False, 2)
    config = parse(GHOSTLESS_RTC_PREFER_TCP="yes", GHOSTLESS_RTC_PREFER_UDP="0")
    assert (config.rtc_enable_tcp, config.rtc_prefer_tcp, config.rtc_prefer_udp) == (
        True,
        True,
        False,
    )


def test_each_per_peer_option_sets_its_own_peer_limit() -> None:
    config = parse(
        "--max-display-name-length=11",
        "--max-device-bytes=12",
        "--max-app-data-bytes=13",
        "--max-transports-per-peer=14",
        "--max-producers-per-peer=15",
        "--max-data-producers-per-peer=16",
    )
    assert config.peer_limits == PeerLimits(
        display_name_length=11,
        device_bytes=12,
        app_data_bytes=13,
        transports=14,
        producers=15,
        data_producers=16,
    )


def test_the_per_peer_options_default_to_the_peer_limits() -> None:
    assert Config().peer_limits == PeerLimits()


# -- the directory (docs/scaling.md) ----------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--lease-ttl", "1", "--lease-renew-interval", "1"],
        ["--redis-timeout", "2"],
        ["--reaper-interval", "0"],
        ["--redis-url", "http://127.0.0.1:6379"],
        ["--redis-prefix", "a:b"],
        ["--node-id", "a/b"],
        ["--cluster-max-sessions", "0"],
        ["--cluster-release-delay", "-1"],
        ["--lobby-linger", "-1"],
        ["--lobby-max-remote-rooms", "0"],
    ],
)
def test_directory_options_are_validated(argv: list[str]) -> None:
    with pytest.raises(ConfigError):
        parse_config(argv, environ={})


def test_the_directory_is_off_by_default() -> None:
    config = parse_config([], environ={})
    assert config.redis_url is None and config.node_id is None
    assert (config.lease_ttl, config.lease_renew_interval, config.reaper_interval) == (3, 1, 1)
    # With --redis-url: the per-address limit spans the nodes; the session capacity is opt-in.
    assert config.cluster_connections_per_ip and config.cluster_max_sessions is None
