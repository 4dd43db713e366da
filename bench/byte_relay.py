"""A bare TCP relay for bench_door.py: what any process in the middle costs on this machine.

    python bench/byte_relay.py --port 8082 --to 8081

Each accepted connection gets its own connection to 127.0.0.1:`--to`, and the bytes from
either side are written to the other as they come: nothing is parsed, routed or checked.
The door does all of that on top; the difference between the two is the door's own work,
and what is left is the cost of one more process hop (two wake-ups a request).
"""

from __future__ import annotations

import argparse
import asyncio


class Side(asyncio.Protocol):
    """One end: what it receives goes to its peer (held until the peer is connected)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Side | None = None
        self.held: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.held.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--to", type=int, required=True)
    args = parser.parse_args()
    loop = asyncio.get_running_loop()

    async def join(client: Side) -> None:
        _, upstream = await loop.create_connection(Side, "127.0.0.1", args.to)
        upstream.peer, client.peer = client, upstream
        assert upstream.transport is not None
        for data in client.held:
            upstream.transport.write(data)
        client.held.clear()

    def accepted() -> Side:
        client = Side()
        loop.create_task(join(client))
        return client

    server = await loop.create_server(accepted, "127.0.0.1", args.port)
    print("listening", args.port, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
