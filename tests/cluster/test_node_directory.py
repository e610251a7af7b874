"""One node (a Server on the test's loop) with its directory in a real Redis:
what it does while Redis is away, what /readyz and the metrics say, and the
LocalDirectory default."""

from __future__ import annotations

import asyncio

import orjson

from signalling.cluster import Cluster, http_get
from signalling.directory import HOLDER_HEADER, LocalDirectory
from signalling.protocol import CloseCode
from signalling.protoo_client import ProtooClient, ProtooError
from tests.signalling import conftest as signalling
from tests.signalling.conftest import ServerFactory, url

make_server = signalling.make_server  # the fixture of tests/signalling, shared

SHORT = {
    "lease_ttl": 1.0,
    "lease_renew_interval": 0.25,
    "reaper_interval": 0.25,
    "redis_timeout": 0.2,
}


async def readyz(port: int) -> tuple[int, dict[str, object]]:
    status, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/readyz")
    return status, orjson.loads(body)


async def metric(port: int | None, name: str) -> str:
    _, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/metrics")
    return next(line for line in body.decode().splitlines() if line.startswith(name + " "))


async def admitted(server_url: str) -> ProtooClient:
    client = await ProtooClient.connect(server_url)
    try:
        await client.request("getRouterRtpCapabilities")  # refused clients are closed before
    except ProtooError:
        raise AssertionError(f"refused: {await client.closed}") from None
    return client


async def refused_with(server_url: str) -> int | None:
    client = await ProtooClient.connect(server_url)
    code, _ = await asyncio.wait_for(client.closed, 5)
    return code


async def wait_for(condition: object, timeout: float = 5.0) -> None:
    async def loop() -> None:
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.02)

    await asyncio.wait_for(loop(), timeout)


async def test_without_redis_a_node_keeps_its_rooms_refuses_new_ones_and_says_so(
    redis_process: Cluster, make_server: ServerFactory
) -> None:
    server = await make_server(redis_url=redis_process.redis_url, node_id="solo", **SHORT)
    alice = await admitted(url(server, "kept", "alice"))
    status, body = await readyz(server.port)
    assert status == 200 and body["directory"]["up"] is True  # type: ignore[index]
    assert await metric(server.metrics_port, "ghostless_directory_up") == (
        "ghostless_directory_up 1.0"
    )

    redis_process.stop_redis()
    await wait_for(lambda: not server.directory.up)

    status, body = await readyz(server.port)
    assert status == 200  # still serving: the load balancer keeps sending its rooms here
    assert body["directory"]["up"] is False  # type: ignore[index]
    assert await metric(server.metrics_port, "ghostless_directory_up") == (
        "ghostless_directory_up 0.0"
    )
    assert await refused_with(url(server, "new", "bob")) == CloseCode.DIRECTORY_UNAVAILABLE
    bob = await admitted(url(server, "kept", "bob"))  # a room it holds takes newcomers
    await alice.request("ping")

    redis_process.start_redis()  # back, empty: the node registers and reconciles
    await wait_for(lambda: server.directory.up, 5)
    carol = await admitted(url(server, "new", "carol"))
    for client in (alice, bob, carol):
        await client.close()


async def test_without_redis_url_the_node_is_alone_as_before(make_server: ServerFactory) -> None:
    server = await make_server()
    assert isinstance(server.directory, LocalDirectory)
    status, body = await readyz(server.port)
    assert status == 200 and body["directory"] == {"kind": "local", "nodeId": "local", "up": True}
    client = await admitted(url(server, "room", "alice"))
    await client.close()


async def test_a_node_names_the_live_holder_of_a_room_in_its_handshake(
    redis_process: Cluster, make_server: ServerFactory
) -> None:
    """X-Ghostless-Holder on the 101, for HAProxy (docs/scaling.md); the claim
    still decides: the session is refused 4421."""
    one = await make_server(redis_url=redis_process.redis_url, node_id="one", **SHORT)
    two = await make_server(redis_url=redis_process.redis_url, node_id="two", **SHORT)
    alice = await admitted(url(one, "call", "alice"))
    assert alice.ws.response is not None
    assert HOLDER_HEADER not in alice.ws.response.headers  # a new room: nobody else holds it
    bob = await admitted(url(one, "call", "bob"))
    assert bob.ws.response is not None
    assert HOLDER_HEADER not in bob.ws.response.headers  # it holds the room

    carol = await ProtooClient.connect(url(two, "call", "carol"))
    assert carol.ws.response is not None
    assert carol.ws.response.headers[HOLDER_HEADER] == "one"
    code, _ = await asyncio.wait_for(carol.closed, 5)
    assert code == CloseCode.ROOM_ELSEWHERE
    for client in (alice, bob):
        await client.close()
