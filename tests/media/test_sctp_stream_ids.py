"""Data consumers get their SCTP stream ids round robin, as mediasoup gives them.

An id freed by a closed data consumer is handed out again only after every
other id had its turn: the client may still hold a channel with it (it is not
told by SCTP, and may ignore ``dataConsumerClosed``).
"""

from __future__ import annotations

import pytest

from media import DataProducer, Router, UnsupportedError, WebRtcTransport


async def chat(router: Router) -> DataProducer:
    sender = await router.create_webrtc_transport(enable_sctp=True)
    return await sender.produce_data(sctp_stream_parameters={"streamId": 0}, label="chat")


async def receiver(router: Router, streams: int = 1024) -> WebRtcTransport:
    return await router.create_webrtc_transport(
        enable_sctp=True, num_sctp_streams=(streams, streams)
    )


async def test_a_freed_stream_id_is_not_handed_out_again_at_once(router: Router) -> None:
    data_producer = await chat(router)
    transport = await receiver(router)

    first = await transport.consume_data(data_producer_id=data_producer.id)
    second = await transport.consume_data(data_producer_id=data_producer.id)
    first.close()
    third = await transport.consume_data(data_producer_id=data_producer.id)

    assert [first.stream_id, second.stream_id, third.stream_id] == [0, 1, 2]


async def test_the_ids_wrap_round_skipping_those_in_use(router: Router) -> None:
    data_producer = await chat(router)
    transport = await receiver(router, streams=4)
    consumers = [await transport.consume_data(data_producer_id=data_producer.id) for _ in range(4)]
    assert [c.stream_id for c in consumers] == [0, 1, 2, 3]

    consumers[2].close()
    consumers[0].close()
    again = [await transport.consume_data(data_producer_id=data_producer.id) for _ in range(2)]

    assert [c.stream_id for c in again] == [0, 2]  # after 3 comes 0, then the next free


async def test_no_free_stream_is_an_error_and_costs_nothing(router: Router) -> None:
    data_producer = await chat(router)
    transport = await receiver(router, streams=2)
    for _ in range(2):
        await transport.consume_data(data_producer_id=data_producer.id)

    with pytest.raises(UnsupportedError):
        await transport.consume_data(data_producer_id=data_producer.id)
    assert len(transport.data_consumers) == 2


async def test_the_client_named_ids_of_data_producers_are_skipped(router: Router) -> None:
    data_producer = await chat(router)
    transport = await receiver(router)
    own = await transport.produce_data(sctp_stream_parameters={"streamId": 1}, label="mine")

    ids = [
        (await transport.consume_data(data_producer_id=data_producer.id)).stream_id
        for _ in range(2)
    ]

    assert own.stream_id == 1 and ids == [0, 2]
