"""Client workloads for tests/incidents_pools.rs, written the way the services in the incidents
were: redis-py's asyncio client and psycopg 3, a task per message.

Every mode first takes on the identity the test gave it (cgroup, process name, optionally a
network namespace), then works and prints one JSON line of figures every 0.25 s on stdout:
  {"t": unix time, "ok": n, "errors": {kind: n}, "first_error": {kind: unix time}, ...}
It stops when stdin reaches end of file (the test closes it or dies) or after --secs.

Modes:
  redis-unbounded  redis.asyncio.Redis with its default pool (max_connections 2**31): one task per
                   message (--rate per second), each a BLPOP that holds its connection for --hold s
                   once --fast-secs have passed (handlers slow down).
  redis-bounded    the fixed twin: max_connections=--limit, a semaphore of the same size around
                   each task, and retries with full-jitter exponential backoff.
  pg-unbounded     psycopg.AsyncConnection per task (no pool): SELECT pg_sleep(--hold).
  pg-bounded       the same behind a semaphore of --limit, with jittered backoff.
  health           a readiness check: PING over redis-py every --period s (pooled client,
                   1 s connect and socket timeouts).
  pending          --count non-blocking connects to HOST:PORT, left in flight.
"""
import argparse
import asyncio
import ctypes
import json
import os
import random
import socket
import sys
import threading
import time


def take_identity(a):
    if a.cgroup_procs:
        with open(a.cgroup_procs, "w") as f:
            f.write(str(os.getpid()))
    with open("/proc/self/comm", "w") as f:
        f.write(a.name)
    if a.netns:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(a.netns, os.O_RDONLY)
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), "setns " + a.netns)
        os.close(fd)


class Figures:
    def __init__(self):
        self.ok = 0
        self.errors = {}
        self.first_error = {}
        self.extra = {}

    def error(self, e):
        text = str(e)
        for known in ("max number of clients reached", "too many clients", "Connection refused",
                      "Too many connections", "Timeout"):
            if known.lower() in text.lower():
                kind = known
                break
        else:
            kind = type(e).__name__ + ": " + text.splitlines()[0][:80] if text else type(e).__name__
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.first_error.setdefault(kind, time.time())

    def line(self):
        d = {"t": time.time(), "ok": self.ok, "errors": self.errors, "first_error": self.first_error}
        d.update(self.extra)
        return json.dumps(d)


def stdin_closed(flag):
    """Sets flag when stdin ends (the test is done with us)."""
    def watch():
        sys.stdin.read()
        flag.set()
    threading.Thread(target=watch, daemon=True).start()


async def report(fig, stop, extra=None):
    while not stop.is_set():
        if extra:
            extra()
        print(fig.line(), flush=True)
        await asyncio.sleep(0.25)


async def backoff(attempt, base=0.05, cap=2.0):
    await asyncio.sleep(random.uniform(0, min(cap, base * 2 ** attempt)))


async def redis_mode(a, fig, stop):
    import redis.asyncio as aioredis
    from redis.exceptions import ConnectionError as RedisConnectionError

    bounded = a.mode == "redis-bounded"
    r = aioredis.Redis(host=a.host, port=a.port, **({"max_connections": a.limit} if bounded else {}))
    pool = r.connection_pool
    fig.extra["max_connections"] = pool.max_connections
    sem = asyncio.Semaphore(a.limit) if bounded else None
    started = time.time()

    def pool_figures():
        fig.extra["in_use"] = len(getattr(pool, "_in_use_connections", ()))
        fig.extra["available"] = len(getattr(pool, "_available_connections", ()))
        fig.extra["created"] = getattr(pool, "_created_connections", -1)

    async def handle(i):
        hold = a.hold if time.time() - started >= a.fast_secs else 0.05
        for attempt in range(6 if bounded else 1):
            try:
                await r.blpop([f"cm:none:{i}"], timeout=hold)
                fig.ok += 1
                return
            except (RedisConnectionError, OSError) as e:
                fig.error(e)
                if not bounded:
                    return
                await backoff(attempt)

    async def guarded(i):
        async with sem:
            await handle(i)

    tasks = set()
    reporter = asyncio.create_task(report(fig, stop, pool_figures))
    i = 0
    while not stop.is_set() and time.time() - started < a.secs:
        i += 1
        t = asyncio.create_task(guarded(i) if bounded else handle(i))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        await asyncio.sleep(1.0 / a.rate)
    stop.set()
    await reporter
    print(fig.line(), flush=True)


async def pg_mode(a, fig, stop):
    import psycopg

    bounded = a.mode == "pg-bounded"
    sem = asyncio.Semaphore(a.limit) if bounded else None
    conninfo = f"host={a.host} port={a.port} user=postgres dbname=postgres application_name={a.name} connect_timeout=5"
    started = time.time()
    held = [0]

    async def handle(i):
        hold = a.hold if time.time() - started >= a.fast_secs else 0.05
        for attempt in range(6 if bounded else 1):
            try:
                async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                    held[0] += 1
                    try:
                        await conn.execute("SELECT pg_sleep(%s)", [hold])
                    finally:
                        held[0] -= 1
                fig.ok += 1
                return
            except psycopg.OperationalError as e:
                fig.error(e)
                if not bounded:
                    return
                await backoff(attempt)

    async def guarded(i):
        async with sem:
            await handle(i)

    def figures():
        fig.extra["in_use"] = held[0]

    tasks = set()
    reporter = asyncio.create_task(report(fig, stop, figures))
    i = 0
    while not stop.is_set() and time.time() - started < a.secs:
        i += 1
        t = asyncio.create_task(guarded(i) if bounded else handle(i))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        await asyncio.sleep(1.0 / a.rate)
    stop.set()
    await reporter
    print(fig.line(), flush=True)


async def health_mode(a, fig, stop):
    import redis.asyncio as aioredis

    r = aioredis.Redis(host=a.host, port=a.port, socket_connect_timeout=1, socket_timeout=1)
    reporter = asyncio.create_task(report(fig, stop))
    started = time.time()
    while not stop.is_set() and time.time() - started < a.secs:
        try:
            await r.ping()
            fig.ok += 1
        except Exception as e:  # a readiness check fails on anything
            fig.error(e)
        await asyncio.sleep(a.period)
    stop.set()
    await reporter


async def pending_mode(a, fig, stop):
    socks = []
    for _ in range(a.count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        rc = s.connect_ex((a.host, a.port))
        fig.extra.setdefault("connect_rc", []).append(rc)
        socks.append(s)
    fig.extra["in_flight"] = len(socks)
    await report(fig, stop)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode")
    p.add_argument("--name", required=True)
    p.add_argument("--cgroup-procs")
    p.add_argument("--netns")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rate", type=float, default=4.0)
    p.add_argument("--hold", type=float, default=8.0)
    p.add_argument("--fast-secs", type=float, default=3.0)
    p.add_argument("--limit", type=int, default=8)
    p.add_argument("--period", type=float, default=1.0)
    p.add_argument("--count", type=int, default=5)
    p.add_argument("--secs", type=float, default=120.0)
    a = p.parse_args()
    take_identity(a)
    stop = asyncio.Event()
    done = threading.Event()
    stdin_closed(done)
    loop = asyncio.get_running_loop()
    threading.Thread(target=lambda: (done.wait(), loop.call_soon_threadsafe(stop.set)), daemon=True).start()
    fig = Figures()
    modes = {"redis-unbounded": redis_mode, "redis-bounded": redis_mode, "pg-unbounded": pg_mode,
             "pg-bounded": pg_mode, "health": health_mode, "pending": pending_mode}
    await modes[a.mode](a, fig, stop)


if __name__ == "__main__":
    asyncio.run(main())
