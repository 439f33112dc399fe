#!/usr/bin/env python3
"""TCP proxies between tollgate peers on loopback, which can cut a node off and heal it.

Usage: partition_proxy.py LISTEN_PORT:TARGET_PORT[:cut] ...

Every mapping forwards 127.0.0.1:LISTEN_PORT to 127.0.0.1:TARGET_PORT. Mappings marked `cut`
form the partition: SIGUSR1 closes their open connections and refuses new ones (the nodes on
either side then see their peer streams break and their reconnects fail, as in a real network
partition, while every node keeps serving its clients); SIGUSR2 heals them.
"""
import asyncio
import signal
import sys

cut = False
live: set[asyncio.StreamWriter] = set()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


def handler(target: int, cuttable: bool):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if cuttable and cut:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return
        if cuttable:
            live.update((writer, up_writer))
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        live.discard(writer)
        live.discard(up_writer)

    return handle


def set_cut(on: bool) -> None:
    global cut
    cut = on
    if on:
        for w in list(live):
            w.transport.abort()
        live.clear()
    print(f"partition {'cut' if on else 'healed'}", file=sys.stderr, flush=True)


async def main(specs: list[str]) -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, set_cut, True)
    loop.add_signal_handler(signal.SIGUSR2, set_cut, False)
    servers = []
    for spec in specs:
        parts = spec.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "cut"):
            sys.exit(f"bad mapping '{spec}': want LISTEN_PORT:TARGET_PORT[:cut]")
        listen, target = int(parts[0]), int(parts[1])
        servers.append(
            await asyncio.start_server(handler(target, len(parts) == 3), "127.0.0.1", listen)
        )
    print("proxies ready", file=sys.stderr, flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1:]))
