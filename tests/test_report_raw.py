"""The live report's raw page read (``_read_page``: HGETALLs packed by hand with the next SCAN, the
replies read straight from the parser), on a real Redis and each node of the real cluster."""

from __future__ import annotations

import redis.asyncio
from redis.exceptions import ResponseError

from quota._async.meter import _read_page as read_page_async
from quota._sync.meter import _read_page


def test_a_page_reads_each_hash_an_error_in_its_place_and_the_next_scan(real_backend) -> None:
    client = real_backend.sync_client()
    try:
        node = client.get_redis_connection(client.get_node_from_key("{u}")) if real_backend.is_cluster else client
        node.hset("{u}:a", mapping={"x": 1, "y": "2"})
        node.set("{u}:s", "a string")  # replaced since the SCAN saw a hash: WRONGTYPE
        scan = ("SCAN", 0, "MATCH", "{u}:*", "COUNT", 100, "TYPE", "hash")
        replies, following = _read_page(node, [b"{u}:a", "{u}:s", b"{u}:gone"], scan)
        assert replies[0] == [b"x", b"1", b"y", b"2"] or replies[0] == {b"x": b"1", b"y": b"2"}
        assert isinstance(replies[1], ResponseError) and "WRONGTYPE" in str(replies[1])
        assert replies[2] in ([], {})
        cursor, keys = following
        assert int(cursor) == 0 and keys == [b"{u}:a"]
        assert node.ping()  # the connection went back to the pool in step: the next command works
        assert _read_page(node, [b"{u}:a"], None)[1] is None
    finally:
        client.close()


async def test_the_asyncio_twin_reads_the_same(real_backend) -> None:
    client = real_backend.async_client()
    node = client
    try:
        if real_backend.is_cluster:  # a plain client on the node that owns the slot, as the meter keeps
            await client.initialize()
            owner = client.get_node_from_key("{v}")
            node = redis.asyncio.Redis(host=owner.host, port=owner.port)
        await node.hset("{v}:a", mapping={"x": 1})
        replies, following = await read_page_async(node, [b"{v}:a"], ("SCAN", 0, "MATCH", "{v}:*", "TYPE", "hash"))
        assert replies[0] in ([b"x", b"1"], {b"x": b"1"}) and following[1] == [b"{v}:a"]
    finally:
        if node is not client:
            await node.aclose()
        await client.aclose()
