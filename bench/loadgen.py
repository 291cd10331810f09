"""A lean HTTP/1.1 load generator: asyncio, raw sockets, keep-alive.

Why not wrk: wrk only drives a closed loop (a fixed number of connections
sending back to back); an open loop at a fixed offered rate, measured from
the moment each request *should* have been sent (so a stalled server cannot
hide its queueing, "coordinated omission"), needs wrk2, which Debian does not
ship. This client does both with the same code for baseline and system, runs
in its own process (no eventlet, no HTTP library), sends pre-built request
bytes and parses only the status line and Content-Length, so it costs a few
percent of one core at a thousand requests a second; the benchmark reports
its CPU next to the services'.

Usage (prints one JSON object on stdout):
    python -m bench.loadgen --url http://127.0.0.1:8000/orders --body-file B \
        --mode closed --concurrency 32 --duration 10
    python -m bench.loadgen ... --mode open --rate 200 --duration 10

Bodies: --body-file holds one JSON body per line; requests cycle through them.
"""
import argparse
import asyncio
import json
import re
import resource
import sys
import time
from urllib.parse import urlsplit

_ID = re.compile(rb'"id"\s*:\s*"([0-9a-f-]{36})"')


class Result:
    def __init__(self):
        self.latencies = []  # seconds, successful requests only
        self.statuses = {}
        self.errors = {}
        self.ids = []
        self.first_send = None
        self.last_done = None

    def error(self, kind):
        self.errors[kind] = self.errors.get(kind, 0) + 1


class Connection:
    def __init__(self, host, port):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def open(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    async def request(self, raw, timeout):
        if self.writer is None:
            await self.open()
        self.writer.write(raw)
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        status = int(head[9:12])
        match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
        length = int(match.group(1)) if match else 0
        body = await asyncio.wait_for(self.reader.readexactly(length), timeout) if length else b""
        if re.search(rb"(?i)\r\nconnection:\s*close", head):
            self.close()
        return status, body


def build_requests(url, bodies, request_id_prefix=None, headers=()):
    """Raw requests; ``headers`` are extra "Name: value" lines (e.g. the bearer token)."""
    parts = urlsplit(url)
    path = parts.path or "/"
    host = parts.netloc
    extra = "".join("{}\r\n".format(header) for header in headers)
    built = []
    for body in bodies:
        data = body.encode()
        built.append(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{}"
            "Content-Length: {}\r\nConnection: keep-alive\r\n\r\n".format(path, host, extra, len(data)).encode()
            + data)
    return parts.hostname, parts.port or 80, built


async def one(conn, raw, scheduled, result, timeout, collect_ids):
    try:
        status, body = await conn.request(raw, timeout)
    except asyncio.TimeoutError:
        conn.close()
        result.error("timeout")
        return
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        conn.close()
        result.error(type(exc).__name__)
        return
    done = time.perf_counter()
    result.last_done = done
    result.statuses[status] = result.statuses.get(status, 0) + 1
    if 200 <= status < 300:
        result.latencies.append(done - scheduled)
        if collect_ids:
            match = _ID.search(body)
            if match:
                result.ids.append(match.group(1).decode())
    else:
        result.error("http_{}".format(status))


async def closed_loop(host, port, requests, concurrency, duration, timeout, collect_ids):
    result = Result()
    counter = [0]
    start = time.perf_counter()
    result.first_send = start
    deadline = start + duration

    async def worker():
        conn = Connection(host, port)
        while time.perf_counter() < deadline:
            raw = requests[counter[0] % len(requests)]
            counter[0] += 1
            await one(conn, raw, time.perf_counter(), result, timeout, collect_ids)
        conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return result, start


async def open_loop(host, port, requests, rate, duration, timeout, collect_ids, max_connections):
    """Send at ``rate``/s on schedule; latency counts from the scheduled time."""
    result = Result()
    idle = []
    busy = [0]
    tasks = set()
    start = time.perf_counter()
    result.first_send = start
    total = int(rate * duration)
    waiting = asyncio.Queue()  # scheduled requests for which no connection was free

    async def run(raw, scheduled):
        conn = idle.pop() if idle else Connection(host, port)
        busy[0] += 1
        try:
            await one(conn, raw, scheduled, result, timeout, collect_ids)
            while not waiting.empty():  # serve the backlog on this connection first
                raw_next, scheduled_next = waiting.get_nowait()
                await one(conn, raw_next, scheduled_next, result, timeout, collect_ids)
        finally:
            busy[0] -= 1
            idle.append(conn)

    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        raw = requests[i % len(requests)]
        if busy[0] >= max_connections:
            waiting.put_nowait((raw, scheduled))
            continue
        task = asyncio.ensure_future(run(raw, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(set(tasks), timeout=timeout + 5)
    # whatever is still unanswered (or never got a connection) counts as failed
    for task in list(tasks):
        task.cancel()
        result.error("unfinished")
    while not waiting.empty():
        waiting.get_nowait()
        result.error("unfinished")
    if tasks:
        await asyncio.wait(set(tasks), timeout=1)
    for conn in idle:
        conn.close()
    return result, start


def percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(q / 100.0 * len(ordered) + 0.5)) - 1))
    return ordered[index]


def _peak_rss_mb():
    # VmHWM, not ru_maxrss: the latter keeps the high-water mark of the
    # (much larger) process this one was exec'd from.
    with open("/proc/self/status") as stream:
        for line in stream:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    return None


def summarise(result, start, duration):
    # until the last answer: an overloaded server that answers late is not
    # credited with the rate it was offered
    elapsed = max(duration, (result.last_done or start) - start)
    ok = len(result.latencies)
    ms = [value * 1000 for value in result.latencies]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "ok": ok,
        "elapsed_s": round(elapsed, 3),
        "ok_per_s": round(ok / elapsed, 1),
        "statuses": {str(key): value for key, value in sorted(result.statuses.items())},
        "errors": result.errors,
        "error_count": sum(result.errors.values()),
        "latency_ms": {"p50": percentile(ms, 50), "p95": percentile(ms, 95),
                       "p99": percentile(ms, 99), "max": max(ms) if ms else None},
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "peak_rss_mb": _peak_rss_mb(),
        "ids": result.ids,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--mode", choices=["closed", "open"], required=True)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--timeout", type=float, default=10)
    parser.add_argument("--max-connections", type=int, default=256)
    parser.add_argument("--collect-ids", action="store_true")
    parser.add_argument("--header", action="append", default=[], help='an extra "Name: value" header')
    args = parser.parse_args(argv)
    with open(args.body_file) as stream:
        bodies = [line.strip() for line in stream if line.strip()]
    host, port, requests = build_requests(args.url, bodies, headers=args.header)
    loop = asyncio.new_event_loop()
    if args.mode == "closed":
        result, start = loop.run_until_complete(closed_loop(
            host, port, requests, args.concurrency, args.duration, args.timeout, args.collect_ids))
    else:
        result, start = loop.run_until_complete(open_loop(
            host, port, requests, args.rate, args.duration, args.timeout, args.collect_ids,
            args.max_connections))
    summary = summarise(result, start, args.duration)
    summary.update({"mode": args.mode, "concurrency": args.concurrency if args.mode == "closed" else None,
                    "rate": args.rate if args.mode == "open" else None, "duration_s": args.duration})
    json.dump(summary, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
