"""A TCP proxy on loopback that delays every byte by a fixed time in each direction.

It stands for distance: an operator hot-fixing a far region from a laptop sees ~100 ms
round trips, and then the number of round trips a tool makes, not CPU, decides its time.
Order is kept; bandwidth is not limited.
"""

from __future__ import annotations

import asyncio
import threading
import time


class DelayProxy:
    def __init__(self, routes: list[tuple[str, int, str, int]], delay: float):
        """routes: (listen address, listen port, target address, target port)."""
        self.routes = routes
        self.delay = delay
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._servers: list[asyncio.AbstractServer] = []

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def delayed_writer() -> None:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None:
                    break
                writer.write(data)
                await writer.drain()
            writer.close()

        task = asyncio.ensure_future(delayed_writer())
        try:
            while data := await reader.read(65536):
                queue.put_nowait((time.monotonic() + self.delay, data))
        except (ConnectionError, OSError):
            pass
        queue.put_nowait((time.monotonic() + self.delay, None))
        await task

    async def _serve(self) -> None:
        for listen, lport, target, tport in self.routes:
            async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter,
                             target: str = target, tport: int = tport) -> None:
                try:
                    ur, uw = await asyncio.open_connection(target, tport)
                except OSError:
                    w.close()
                    return
                await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w),
                                     return_exceptions=True)

            self._servers.append(await asyncio.start_server(handle, listen, lport))
        self._ready.set()

    def __enter__(self) -> DelayProxy:
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.run_forever()

    def __exit__(self, *exc: object) -> None:
        def stop() -> None:
            for s in self._servers:
                s.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()  # connections still open (ControlPersist masters)
            self._loop.stop()

        self._loop.call_soon_threadsafe(stop)
