"""Open-loop load: requests leave on a fixed schedule whatever the server does.

A closed loop (wrk) waits for each answer before sending the next request, so a
slow server also slows the load and hides its tail ("coordinated omission").
Here each request's latency is measured from the moment it was *scheduled*.
Raw asyncio streams keep the generator's own cost low.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

from benchmark.harness import percentile


def _request_bytes(url: str, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> bytes:
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {content_type}\r\n{extra}"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n")
    return head.encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> int:
    writer.write(payload)
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(status_line.split()[1])


async def _run(url: str, body: bytes, content_type: str, rate: float, seconds: float, connections: int,
               headers: dict[str, str] | None = None) -> dict:
    parts = urlsplit(url)
    payload = _request_bytes(url, body, content_type, headers)
    idle: asyncio.Queue = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(await asyncio.open_connection(parts.hostname, parts.port))
    latencies: list[float] = []
    statuses: dict[str, int] = {}

    async def one(scheduled: float) -> None:
        reader, writer = await idle.get()
        try:
            status = await _exchange(reader, writer, payload)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            latencies.append(time.perf_counter() - scheduled)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            statuses["socket_error"] = statuses.get("socket_error", 0) + 1
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        idle.put_nowait((reader, writer))

    start = time.perf_counter()
    tasks = []
    for i in range(int(rate * seconds)):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    while not idle.empty():
        _, writer = idle.get_nowait()
        writer.close()
    return {"rate": rate, "seconds": seconds, "sent": len(tasks), "statuses": statuses,
            "p50_s": percentile(latencies, 50), "p90_s": percentile(latencies, 90),
            "p99_s": percentile(latencies, 99), "max_s": max(latencies)}


def open_loop(url: str, body: bytes, content_type: str, rate: float, seconds: float, connections: int = 64,
              headers: dict[str, str] | None = None) -> dict:
    """Send ``rate`` requests per second for ``seconds``; latencies counted from each scheduled time.
    ``headers``: more request headers (an API key)."""
    cpu_start = time.process_time()
    result = asyncio.run(_run(url, body, content_type, rate, seconds, connections, headers))
    result["generator_cpu_cores"] = (time.process_time() - cpu_start) / seconds
    return result
