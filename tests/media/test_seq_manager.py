"""SeqManager: a gap-free output sequence across drops, late packets and stream switches."""

from __future__ import annotations

from media.seq_manager import SeqManager


def feed(manager: SeqManager, values: list[int]) -> list[int]:
    return [manager.input(v) for v in values]


def test_in_order_inputs_map_one_to_one_from_the_initial_output() -> None:
    manager = SeqManager(16, initial_output=1000)

    assert feed(manager, [500, 501, 502]) == [1000, 1001, 1002]


def test_a_dropped_input_leaves_no_gap() -> None:
    manager = SeqManager(16, initial_output=10)
    out = feed(manager, [100, 101])
    manager.drop(102)
    out += feed(manager, [103, 104])

    assert out == [10, 11, 12, 13]


def test_a_late_input_gets_the_number_it_would_have_had() -> None:
    manager = SeqManager(16, initial_output=0)
    out = feed(manager, [1, 2])
    manager.drop(4)  # 3 is still on its way
    out += feed(manager, [5, 3])

    # 1, 2, 3 (late), 5 (4 dropped): outputs 0, 1, 2, 3 with no collision.
    assert out == [0, 1, 3, 2]


def test_a_late_input_before_a_drop_keeps_the_offset_of_its_time() -> None:
    manager = SeqManager(16, initial_output=0)
    feed(manager, [1, 2, 4])  # 3 is late
    manager.drop(5)
    assert manager.input(6) == 4
    assert manager.input(3) == 2  # not 1, which 2 already has


def test_a_dropped_input_arriving_again_is_not_sent() -> None:
    manager = SeqManager(16, initial_output=0)
    feed(manager, [1])
    manager.drop(2)
    feed(manager, [3])

    assert manager.input(2) == -1


def test_numbers_wrap_around() -> None:
    manager = SeqManager(16, initial_output=0xFFFE)
    out = feed(manager, [0xFFFF, 0, 1])
    manager.drop(2)
    out += feed(manager, [3])

    assert out == [0xFFFE, 0xFFFF, 0, 1]


def test_sync_continues_a_new_stream_right_after_the_last_output() -> None:
    manager = SeqManager(16, initial_output=50)
    feed(manager, [7000, 7001])  # outputs 50, 51
    manager.sync(19999)  # the new stream's 20000 is the next one

    assert feed(manager, [20000, 20001]) == [52, 53]
    # Numbers of the new stream from before the switch are not sent.
    assert manager.input(19990) == -1


def test_sync_after_a_drop_continues_after_the_last_number_sent() -> None:
    manager = SeqManager(16, initial_output=0)
    feed(manager, [1, 2])
    manager.drop(3)
    manager.sync(899)

    assert manager.input(900) == 2


def test_outputs_map_back_to_inputs_of_the_current_stream() -> None:
    manager = SeqManager(16, initial_output=100)
    feed(manager, [10, 11])
    manager.drop(12)
    feed(manager, [14])  # 13 lost upstream: output 102 is 13's

    assert manager.max_output == 103
    assert manager.input_for(102) == 13
    assert manager.input_for(103) == 14
    assert manager.input_for(100) == 10
    assert manager.input_for(104) is None  # not sent yet
    manager.sync(5000)
    assert manager.input_for(102) is None  # another stream's


def test_the_15_bit_space_of_vp8_picture_ids_wraps_at_32768() -> None:
    manager = SeqManager(15, initial_output=0)
    out = feed(manager, [0x7FFE, 0x7FFF, 0])
    manager.drop(1)
    out += feed(manager, [2])

    assert out == [0, 1, 2, 3]


def test_a_repeated_input_keeps_its_number() -> None:
    manager = SeqManager(15, initial_output=0)

    # Every packet of a picture carries its PictureID.
    assert feed(manager, [5, 5, 5, 6, 6]) == [0, 0, 0, 1, 1]
    manager.drop(7)
    assert manager.input(7) == -1  # later packets of a dropped picture are dropped too
    assert manager.is_newer(8) and not manager.is_newer(7)
