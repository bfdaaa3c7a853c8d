#!/usr/bin/env python3
"""Small exact HTTP/1.1 load client (stdlib asyncio only) for the harness.

  httpclient.py count --url URL --body FILE [-H 'Name: v']... -n N -c C --mode json|sse
      Sends exactly N POSTs over C keep-alive connections (closed loop) and waits
      for every response to end. Each must be HTTP 200 and complete (json: a
      chat.completion body; sse: ends with `data: [DONE]`). Prints one JSON line:
      {"sent", "ok", "failed", "errors": [...first few...], "seconds"}.

  httpclient.py hold --url URL --body FILE [-H ...] -n N --ready-file F [--timeout S]
      Opens N connections at once, sends one streaming POST on each, and writes
      F (the number of streams open) once every stream has its response headers
      and at least one body chunk. Then it keeps reading until every stream
      ends (the upstream finishes it) or S seconds pass. Prints one JSON line:
      {"opened", "streaming", "completed", "failed", "errors", "seconds"}.
"""
import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["count", "hold"])
    p.add_argument("--url", required=True)
    p.add_argument("--body", required=True)
    p.add_argument("-H", dest="headers", action="append", default=[])
    p.add_argument("-n", type=int, required=True)
    p.add_argument("-c", type=int, default=16)
    p.add_argument("--mode", choices=["json", "sse", "responses", "gemini"], default="json")
    p.add_argument("--ready-file")
    p.add_argument("--timeout", type=float, default=120.0)
    return p.parse_args()


def build_request(url, body, headers):
    u = urlsplit(url)
    path = u.path + ("?" + u.query if u.query else "")
    lines = [f"POST {path} HTTP/1.1", f"Host: {u.netloc}", "Content-Type: application/json",
             f"Content-Length: {len(body)}"]
    lines += headers
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body, u.hostname, u.port or 80


async def read_response(reader, on_first_chunk=None):
    """Returns (status, body bytes, keep_alive)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    hdrs = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()
    keep_alive = hdrs.get("connection", "").lower() != "close"
    body = bytearray()
    if "content-length" in hdrs:
        n = int(hdrs["content-length"])
        if on_first_chunk is not None:
            # read in pieces so a held stream is noticed as soon as bytes flow
            while len(body) < n:
                chunk = await reader.read(n - len(body))
                if not chunk:
                    raise ConnectionError("EOF inside body")
                if not body:
                    on_first_chunk()
                body += chunk
        else:
            body += await reader.readexactly(n)
    elif "chunked" in hdrs.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                # trailers until an empty line
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
            if on_first_chunk is not None and len(body) == size:
                on_first_chunk()
    else:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            if on_first_chunk is not None and not body:
                on_first_chunk()
            body += chunk
        keep_alive = False
    return status, bytes(body), keep_alive


def complete(mode, status, body):
    if status != 200:
        return f"HTTP {status}: {body[:200]!r}"
    if mode == "json" and b"chat.completion" not in body:
        return f"no chat.completion in body: {body[:200]!r}"
    if mode == "sse" and not body.rstrip().endswith(b"data: [DONE]"):
        return f"stream did not end with data: [DONE]: {body[-200:]!r}"
    if mode == "responses" and b"event: response.completed" not in body:
        return f"no response.completed event: {body[-200:]!r}"
    if mode == "gemini" and b'"finishReason"' not in body:
        return f"no finishReason: {body[-200:]!r}"
    return None


async def count(a):
    body = open(a.body, "rb").read()
    req, host, port = build_request(a.url, body, a.headers)
    state = {"sent": 0, "ok": 0, "failed": 0, "errors": []}

    def fail(msg):
        state["failed"] += 1
        if len(state["errors"]) < 5:
            state["errors"].append(msg)

    async def worker():
        reader = writer = None
        while state["sent"] < a.n:
            state["sent"] += 1
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                writer.write(req)
                await writer.drain()
                status, rbody, keep = await read_response(reader)
                err = complete(a.mode, status, rbody)
                if err:
                    fail(err)
                else:
                    state["ok"] += 1
                if not keep:
                    writer.close()
                    writer = None
            except Exception as e:  # noqa: BLE001 - every failure is counted
                fail(f"{type(e).__name__}: {e}")
                if writer is not None:
                    writer.close()
                writer = None
        if writer is not None:
            writer.close()

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(a.c)))
    state["seconds"] = round(time.monotonic() - t0, 3)
    print(json.dumps(state))
    return 0 if state["ok"] == a.n else 1


async def hold(a):
    body = open(a.body, "rb").read()
    req, host, port = build_request(a.url, body, a.headers)
    state = {"opened": 0, "streaming": 0, "completed": 0, "failed": 0, "errors": []}
    all_streaming = asyncio.Event()
    ready_written = False

    def fail(msg):
        state["failed"] += 1
        if len(state["errors"]) < 5:
            state["errors"].append(msg)
        check_ready()

    def check_ready():
        if state["streaming"] + state["failed"] >= a.n:
            all_streaming.set()

    async def one():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except Exception as e:  # noqa: BLE001
            fail(f"connect: {type(e).__name__}: {e}")
            return
        state["opened"] += 1
        first = [False]

        def on_first():
            if not first[0]:
                first[0] = True
                state["streaming"] += 1
                check_ready()
        try:
            writer.write(req)
            await writer.drain()
            status, rbody, _ = await read_response(reader, on_first)
            if not first[0]:
                on_first()  # (an empty or one-piece body)
            err = complete("sse", status, rbody)
            if err:
                fail(err)
            else:
                state["completed"] += 1
        except Exception as e:  # noqa: BLE001
            fail(f"{type(e).__name__}: {e}")
        finally:
            writer.close()

    t0 = time.monotonic()
    tasks = []
    for i in range(a.n):
        tasks.append(asyncio.create_task(one()))
        if i % 50 == 49:
            await asyncio.sleep(0.01)  # do not overflow the listen backlog
    try:
        await asyncio.wait_for(all_streaming.wait(), timeout=a.timeout)
    except asyncio.TimeoutError:
        pass
    state["open_s"] = round(time.monotonic() - t0, 3)
    with open(a.ready_file, "w") as f:
        f.write(f"{state['streaming']}\n")
    ready_written = True
    done, pending = await asyncio.wait(tasks, timeout=a.timeout)
    for t in pending:
        t.cancel()
    if pending:
        state["errors"].append(f"{len(pending)} streams still open after {a.timeout}s")
    state["seconds"] = round(time.monotonic() - t0, 3)
    print(json.dumps(state))
    return 0 if ready_written and state["completed"] == a.n else 1


def main():
    a = parse_args()
    fn = count if a.cmd == "count" else hold
    sys.exit(asyncio.run(fn(a)))


if __name__ == "__main__":
    main()
