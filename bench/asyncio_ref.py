#!/usr/bin/env python3
"""bench/asyncio_ref.py: what a first asyncio version of the room looks like.

A yardstick for bench/load.py, not a design: asyncio streams, one coroutine
per member, and every line written to every member on its own, waiting for
each member's drain in turn.  No limits, no logging, standard library only.

    python3 bench/asyncio_ref.py PORT [HOST]     (HOST: 127.0.0.1 unless given)

The protocol (docs/PROTOCOL.md): `ALIAS` on accept; the alias is what comes
before the first line end, or the whole first read; then everyone hears
`{alias} joined the chat...` and the count; each line goes to everyone as
`{alias}: {text}`; on close everyone left hears `{alias} has left the
chat...` and the count.
"""

import asyncio
import sys

members: dict[asyncio.StreamWriter, str] = {}


def count_line() -> str:
    n = len(members)
    return "1 person is online...\n" if n == 1 else f"{n} people are online...\n"


async def broadcast(text: str) -> None:
    data = text.encode()
    for writer in list(members):
        try:
            writer.write(data)
            await writer.drain()
        except ConnectionError:
            pass   # its own coroutine sees the close and says goodbye


async def chat(alias: str, line: bytes) -> None:
    text = line.decode("utf-8", "replace").removesuffix("\r")
    if text == f"\t{alias} has left the chat...":
        return   # the App's goodbye: the close says it, once
    if not text.startswith(f"{alias}: "):
        text = f"{alias}: {text}"
    await broadcast(text + "\n")


async def member(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"ALIAS")
    try:
        first = await reader.read(65536)
    except ConnectionError:
        first = b""
    if not first:
        writer.close()
        return
    name, _, pending = first.partition(b"\n")
    alias = name.decode("utf-8", "replace").rstrip("\r")
    members[writer] = alias
    try:
        await broadcast(f"{alias} joined the chat...\n" + count_line())
        while True:
            *lines, pending = pending.split(b"\n")
            for line in lines:
                await chat(alias, line)
            more = await reader.readline()
            if not more.endswith(b"\n"):
                break   # closed (in the middle of a line, maybe)
            pending += more
    except ConnectionError:
        pass
    finally:
        del members[writer]
        writer.close()
        await broadcast(f"{alias} has left the chat...\n" + count_line())


async def main(port: int, host: str) -> None:
    server = await asyncio.start_server(member, host, port, backlog=65535, limit=1 << 20)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python3 bench/asyncio_ref.py PORT [HOST]")
    asyncio.run(main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) == 3 else "127.0.0.1"))
