"""HTTP load generator: several processes, each with several threads on keep-alive connections.

Each thread holds one keep-alive HTTP/1.1 connection, a plain socket that
sends pre-built request bytes (``requests`` and even ``http.client`` cost
too much CPU on 2 cores: ``http.client`` took ~0.5 ms per request, a third
of what the API spends on it), and sends the same ``POST`` again and again
until a fixed deadline. All processes start at one agreed moment,
so the measured window is the same for every connection.

* Closed loop (``rate=None``): as fast as the server answers; the result is
  the count of ``201`` responses received before the deadline.
* Open loop (``rate`` requests per second in total): each thread sends on a
  fixed schedule (catching up without skipping when behind); with
  ``collect=True`` the decoded JSON body of every ``201`` is returned, for
  example to read each timer's ``id`` and ``fire_at``.
"""

import json
import logging
import math
import multiprocessing
import socket
import threading
import time
import urllib.parse

log = logging.getLogger("bench.loadgen")

_FORK = multiprocessing.get_context("fork")
START_DELAY_S = 0.3


class Connection:
    """A keep-alive HTTP/1.1 client connection that sends one fixed request.

    Args:
        host, port: the server.
        request: the whole request (bytes), with ``Content-Length``.
    Responses must carry ``Content-Length`` (Falcon's and gunicorn's do).
    """

    def __init__(self, host, port, request):
        self.address = (host, port)
        self.request = request
        self.sock = None
        self.buffer = b""

    def _recv(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buffer += chunk

    def exchange(self):
        """Send the request, read the response.

        Returns:
            (status code, body bytes).
        Raises:
            OSError: connection failure; ValueError: a response without Content-Length.
        """
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=10)
            self.buffer = b""
        self.sock.sendall(self.request)
        while b"\r\n\r\n" not in self.buffer:
            self._recv()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = dict(line.lower().split(b":", 1) for line in lines[1:])
        length = int(headers[b"content-length"])
        while len(self.buffer) < length:
            self._recv()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        if headers.get(b"connection", b"").strip() == b"close":
            self.close()
        return int(lines[0].split(b" ", 2)[1]), body

    def close(self):
        """Close the socket; the next exchange reconnects."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _request_bytes(host, port, path, body, headers):
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _thread(host, port, path, body, headers, start_at, deadline, interval_s, offset_s, collect, out):
    counts = {"created": 0, "other": 0, "errors": 0, "scheduled": 0}
    bodies = []
    conn = Connection(host, port, _request_bytes(host, port, path, body, headers))
    next_send = start_at + offset_s
    time.sleep(max(0.0, start_at - time.time()))
    while True:
        now = time.time()
        if now >= deadline:
            break  # open loop too: what could not be sent in the window is not sent late
        if interval_s:
            if next_send >= deadline:
                break
            if next_send > now:
                time.sleep(next_send - now)
            next_send += interval_s
        try:
            status, data = conn.exchange()
        except (OSError, ValueError, KeyError):
            counts["errors"] += 1
            conn.close()
            continue
        if time.time() > deadline and not interval_s:
            break  # answered after the window: not counted
        if status == 201:
            counts["created"] += 1
            if collect:
                bodies.append(data)
        else:
            counts["other"] += 1
    conn.close()
    if interval_s:
        counts["scheduled"] = max(0, math.ceil((deadline - start_at - offset_s) / interval_s))
    out.append((counts, bodies))


def _process(host, port, path, bodies, headers, start_at, deadline, threads, interval_s, first_offset_s,
             collect, results):
    out = []
    workers = [threading.Thread(target=_thread, args=(
        host, port, path, bodies[i % len(bodies)], headers, start_at, deadline, interval_s,
        first_offset_s + i * (interval_s / threads if interval_s else 0), collect, out))
        for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    total = {"created": 0, "other": 0, "errors": 0, "scheduled": 0}
    decoded = []
    for counts, got in out:
        for key in total:
            total[key] += counts[key]
        decoded += [json.loads(b) for b in got]
    results.put((total, decoded))


def run(url, path, payloads, duration_s, processes=2, threads=4, rate=None, collect=False, headers=None):
    """Send ``POST path`` with JSON bodies for ``duration_s`` seconds.

    Args:
        url: ``http://host:port`` of the server.
        payloads: a JSON-able dict, or a list of them: thread ``i`` of each
            process sends ``payloads[i % len(payloads)]``.
        processes, threads: load-generator processes and threads per process;
            each thread keeps one connection.
        rate: total requests per second (open loop), or None (closed loop).
        collect: return the decoded JSON body of every 201.
        headers: extra request headers.
    Returns:
        dict: ``created`` (201s answered; closed loop: within the window),
        ``other`` (other statuses), ``errors`` (connection errors),
        ``scheduled`` (open loop: requests the schedule called for; those not
        sent by the deadline because the server was too slow are dropped),
        ``duration_s``, ``rps`` (``created / duration_s``, requests per
        second) and, with ``collect``, ``bodies``.
    """
    parts = urllib.parse.urlsplit(url)
    if isinstance(payloads, dict):
        payloads = [payloads]
    bodies = [json.dumps(p).encode() for p in payloads]
    all_headers = {"Content-Type": "application/json"}
    all_headers.update(headers or {})
    start_at = time.time() + START_DELAY_S
    deadline = start_at + duration_s
    connections = processes * threads
    interval_s = connections / rate if rate else 0.0
    results = _FORK.Queue()
    children = [_FORK.Process(target=_process, args=(
        parts.hostname, parts.port, path, bodies, all_headers, start_at, deadline, threads, interval_s,
        p * (interval_s / connections if interval_s else 0), collect, results))
        for p in range(processes)]
    for child in children:
        child.start()
    total = {"created": 0, "other": 0, "errors": 0, "scheduled": 0}
    collected = []
    for _ in children:
        counts, got = results.get(timeout=duration_s + 60)
        for key in total:
            total[key] += counts[key]
        collected += got
    for child in children:
        child.join(10)
    result = dict(total, duration_s=duration_s, rps=total["created"] / duration_s,
                  start_at=start_at)
    if collect:
        result["bodies"] = collected
    log.info("load run", extra={"url": url + path, "rate": rate, "processes": processes,
                                "threads": threads, "answered_201": total["created"],
                                "answered_other": total["other"], "connection_errors": total["errors"],
                                "scheduled": total["scheduled"],
                                "rps": round(result["rps"], 1)})
    return result
