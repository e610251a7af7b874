"""Unit tests of media/events.py: the synchronous, error-isolating EventEmitter."""

from __future__ import annotations

import logging

import pytest

from media.events import EventEmitter


def test_listeners_run_in_registration_order_with_the_emitted_arguments() -> None:
    emitter = EventEmitter()
    calls: list[tuple[str, tuple[object, ...]]] = []
    emitter.on("x", lambda *args: calls.append(("first", args)))
    emitter.on("x", lambda *args: calls.append(("second", args)))
    emitter.on("y", lambda *args: calls.append(("other event", args)))

    emitter.emit("x", 1, "two")

    assert calls == [("first", (1, "two")), ("second", (1, "two"))]


def test_on_returns_the_listener_so_it_can_be_removed_later() -> None:
    emitter = EventEmitter()

    def listener() -> None:
        pass

    assert emitter.on("x", listener) is listener


def test_emit_returns_whether_the_event_had_listeners() -> None:
    emitter = EventEmitter()
    emitter.on("x", lambda: None)

    assert emitter.emit("x") is True
    assert emitter.emit("y") is False


def test_emit_returns_false_once_the_last_listener_is_removed() -> None:
    emitter = EventEmitter()
    listener = emitter.on("x", lambda: None)

    emitter.off("x", listener)

    assert emitter.emit("x") is False
    assert emitter.listener_count("x") == 0


def test_a_once_listener_runs_a_single_time() -> None:
    emitter = EventEmitter()
    calls: list[int] = []
    emitter.once("x", calls.append)

    assert emitter.emit("x", 1) is True
    assert emitter.emit("x", 2) is False

    assert calls == [1]
    assert emitter.listener_count("x") == 0


def test_a_once_listener_keeps_its_place_among_the_others() -> None:
    emitter = EventEmitter()
    calls: list[str] = []
    emitter.on("x", lambda: calls.append("a"))
    emitter.once("x", lambda: calls.append("once"))
    emitter.on("x", lambda: calls.append("b"))

    emitter.emit("x")
    emitter.emit("x")

    assert calls == ["a", "once", "b", "a", "b"]


def test_a_once_listener_can_be_removed_before_it_runs_by_the_handle_once_returns() -> None:
    emitter = EventEmitter()
    calls: list[int] = []
    handle = emitter.once("x", calls.append)

    emitter.off("x", handle)

    assert emitter.emit("x", 1) is False
    assert calls == []


def test_a_once_listener_that_raises_is_still_removed(caplog: pytest.LogCaptureFixture) -> None:
    emitter = EventEmitter()
    calls: list[int] = []

    def boom(value: int) -> None:
        calls.append(value)
        raise RuntimeError("boom")

    emitter.once("x", boom)

    with caplog.at_level(logging.ERROR, logger="media.events"):
        emitter.emit("x", 1)
    emitter.emit("x", 2)

    assert calls == [1]


def test_off_removes_only_the_given_listener() -> None:
    emitter = EventEmitter()
    calls: list[str] = []

    def a() -> None:
        calls.append("a")

    def b() -> None:
        calls.append("b")

    emitter.on("x", a)
    emitter.on("x", b)

    emitter.off("x", a)
    emitter.emit("x")

    assert calls == ["b"]
    assert emitter.listener_count("x") == 1


def test_a_listener_registered_twice_runs_twice_and_off_removes_one_registration() -> None:
    emitter = EventEmitter()
    calls: list[int] = []
    emitter.on("x", calls.append)
    emitter.on("x", calls.append)

    emitter.emit("x", 1)
    emitter.off("x", calls.append)
    emitter.emit("x", 2)

    assert calls == [1, 1, 2]


def test_off_with_an_unknown_event_or_listener_does_nothing() -> None:
    emitter = EventEmitter()
    emitter.on("x", lambda: None)

    emitter.off("y", lambda: None)
    emitter.off("x", lambda: None)

    assert emitter.listener_count("x") == 1


def test_a_raising_listener_does_not_stop_the_others_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    emitter = EventEmitter()
    calls: list[str] = []

    def boom() -> None:
        raise ValueError("listener bug")

    emitter.on("close", lambda: calls.append("before"))
    emitter.on("close", boom)
    emitter.on("close", lambda: calls.append("after"))

    with caplog.at_level(logging.ERROR, logger="media.events"):
        assert emitter.emit("close") is True

    assert calls == ["before", "after"]
    [record] = caplog.records
    assert record.name == "media.events"
    assert record.levelno == logging.ERROR
    assert "'close'" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)


def test_a_listener_added_during_emit_waits_for_the_next_emit() -> None:
    emitter = EventEmitter()
    calls: list[str] = []

    def adder() -> None:
        calls.append("adder")
        emitter.on("x", lambda: calls.append("late"))

    emitter.once("x", adder)

    emitter.emit("x")
    assert calls == ["adder"]
    emitter.emit("x")
    assert calls == ["adder", "late"]


def test_a_listener_removed_during_emit_still_runs_this_time() -> None:
    emitter = EventEmitter()
    calls: list[str] = []

    def second() -> None:
        calls.append("second")

    def remover() -> None:
        calls.append("remover")
        emitter.off("x", second)

    emitter.on("x", remover)
    emitter.on("x", second)

    emitter.emit("x")
    emitter.emit("x")

    assert calls == ["remover", "second", "remover"]


def test_remove_all_listeners_silences_every_event() -> None:
    emitter = EventEmitter()
    emitter.on("x", lambda: None)
    emitter.once("y", lambda: None)

    emitter.remove_all_listeners()

    assert emitter.emit("x") is False
    assert emitter.emit("y") is False
    assert emitter.listener_count("x") == emitter.listener_count("y") == 0
