#!/usr/bin/env python3
"""A TCP proxy that adds latency: every chunk the server sends reaches the
client DELAY ms after the proxy received it (order kept, chunks pipelined,
so it adds latency without capping throughput). Client-to-server traffic is
forwarded at once, so each request/response round trip costs DELAY ms more,
like a node started with --delay-ms DELAY.

    delay_proxy.py --delay-ms 20 LISTEN_PORT:TARGET_PORT [...]

Listens on 127.0.0.1 and forwards to 127.0.0.1. Standard library only.
"""
import argparse
import asyncio
import signal


async def forward(reader, writer, delay):
    """Copy reader to writer; with delay > 0 each chunk waits `delay` s."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def pump():
        while True:
            try:
                data = await reader.read(65536)
            except (ConnectionError, OSError):
                data = b""
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                return

    async def drain():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                break
            try:
                writer.write(data)
                await writer.drain()
            except (ConnectionError, OSError):
                break
        try:
            writer.close()
        except (ConnectionError, OSError):
            pass

    if delay > 0:
        await asyncio.gather(pump(), drain())
    else:
        while True:
            try:
                data = await reader.read(65536)
            except (ConnectionError, OSError):
                break
            if not data:
                break
            try:
                writer.write(data)
                await writer.drain()
            except (ConnectionError, OSError):
                break
        try:
            writer.close()
        except (ConnectionError, OSError):
            pass


def handler(target_port, delay):
    async def handle(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            forward(client_reader, server_writer, 0.0),
            forward(server_reader, client_writer, delay),
        )

    return handle


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("pairs", nargs="+", metavar="LISTEN_PORT:TARGET_PORT")
    args = parser.parse_args()
    delay = args.delay_ms / 1000.0
    servers = []
    for pair in args.pairs:
        listen, target = (int(p) for p in pair.split(":"))
        servers.append(await asyncio.start_server(handler(target, delay), "127.0.0.1", listen))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("delay_proxy: listening on", " ".join(args.pairs), f"(+{args.delay_ms} ms)", flush=True)
    await stop.wait()
    for s in servers:
        s.close()


if __name__ == "__main__":
    asyncio.run(main())
