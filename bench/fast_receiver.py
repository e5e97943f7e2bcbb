"""A fast webhook receiver for the benchmarks: several processes, asyncio, HTTP/1.1 keep-alive, 204.

``bench/receiver.py`` (one JSON log line per webhook, thread per connection)
is for people; this one is for throughput: each of ``processes`` forked
processes accepts on one shared listening socket, parses only the request
line and ``Content-Length``, answers ``204 No Content`` on the same connection,
and records the arrival:

* per process, in shared memory: how many requests arrived and the epoch
  seconds of the last one (cheap to poll while a run is going on);
* per process, in a file of the current *epoch* (see :meth:`FastReceiver.reset`):
  one line ``<last path segment> <arrival epoch seconds>`` per request, flushed
  every :data:`FLUSH_INTERVAL_S`. The last path segment is the timer id of a
  product webhook (``POST <url>/<id>``).

Usage::

    receiver = FastReceiver(directory, processes=2).start()
    receiver.reset()            # new epoch: counts to zero, new files
    ...                         # POST receiver.url + "/hook/<id>"
    receiver.total(), receiver.last_arrival(), receiver.arrivals()
    receiver.stop()
"""

import asyncio
import glob
import logging
import multiprocessing
import os
import signal
import socket
import time

log = logging.getLogger("bench.receiver")

FLUSH_INTERVAL_S = 0.1
_RESPONSE = b"HTTP/1.1 204 No Content\r\n\r\n"
_FORK = multiprocessing.get_context("fork")


class _Slot:
    """What one receiver process shares with the parent."""

    def __init__(self, counts, last, epoch, directory, index):
        self.counts = counts
        self.last = last
        self.epoch = epoch
        self.directory = directory
        self.index = index
        self.file_epoch = None
        self.file = None

    def record(self, timer_id, at):
        """Count one arrival at ``at`` (epoch seconds) and log it to this epoch's file."""
        epoch = self.epoch.value
        if epoch != self.file_epoch:
            if self.file:
                self.file.close()
            self.file = open(_path(self.directory, epoch, self.index), "a", buffering=1 << 16)
            self.file_epoch = epoch
        self.counts[self.index] += 1
        self.last[self.index] = at
        self.file.write(f"{timer_id} {at:.6f}\n")

    def flush(self):
        """Write buffered arrival lines to disk."""
        if self.file:
            self.file.flush()


def _path(directory, epoch, index):
    return os.path.join(directory, f"arrivals-{epoch}-{index}.txt")


class _Protocol(asyncio.Protocol):
    """Minimal HTTP/1.1 server side: request line + headers + Content-Length body, answer 204."""

    def __init__(self, slot):
        self.slot = slot
        self.buffer = b""
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            length = 0
            lower = head.lower()
            at = lower.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = lower.find(b"\r\n", at + 2)
                length = int(lower[at + 17:stop if stop >= 0 else len(lower)].strip() or 0)
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            self.buffer = self.buffer[total:]
            arrived = time.time()
            request_line = head.split(b"\r\n", 1)[0].split(b" ")
            path = request_line[1] if len(request_line) > 1 else b"/"
            timer_id = path.split(b"?", 1)[0].rstrip(b"/").rsplit(b"/", 1)[-1].decode("latin-1") or "-"
            self.slot.record(timer_id, arrived)
            self.transport.write(_RESPONSE)
            if b"\r\nconnection: close" in lower:
                self.transport.close()
                return


def _serve(sock, slot):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loop = asyncio.new_event_loop()

    def flush():
        slot.flush()
        loop.call_later(FLUSH_INTERVAL_S, flush)

    loop.run_until_complete(loop.create_server(lambda: _Protocol(slot), sock=sock, backlog=1024))
    loop.call_later(FLUSH_INTERVAL_S, flush)
    loop.run_forever()


class FastReceiver:
    """The multi-process receiver (see the module docstring).

    Args:
        directory: where the per-epoch arrival files go.
        processes: receiver processes sharing the listening socket.
    """

    def __init__(self, directory, processes=2):
        self.directory = directory
        self.processes = processes
        self._counts = _FORK.Array("q", processes, lock=False)
        self._last = _FORK.Array("d", processes, lock=False)
        self._epoch = _FORK.Value("i", 0, lock=False)
        self._children = []
        self.url = None

    def start(self):
        """Bind 127.0.0.1 on a free port, fork the processes; sets ``url`` (``http://127.0.0.1:<port>``)."""
        os.makedirs(self.directory, exist_ok=True)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        sock.setblocking(False)
        for index in range(self.processes):
            slot = _Slot(self._counts, self._last, self._epoch, self.directory, index)
            child = _FORK.Process(target=_serve, args=(sock, slot), name=f"bench-receiver-{index}",
                                  daemon=True)
            child.start()
            self._children.append(child)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        sock.close()
        log.info("fast receiver listening", extra={"url": self.url, "processes": self.processes})
        return self

    def reset(self):
        """Start a new epoch: counts and last arrival back to zero, arrivals go to new files."""
        self._epoch.value += 1
        for index in range(self.processes):
            self._counts[index] = 0
            self._last[index] = 0.0

    def total(self):
        """Requests received in this epoch (duplicates included)."""
        return sum(self._counts)

    def last_arrival(self):
        """Epoch seconds of the latest request of this epoch (0.0 when none)."""
        return max(self._last)

    def wait_for(self, count, timeout_s, settle_s=0.3):
        """Wait until ``count`` requests arrived in this epoch or ``timeout_s`` seconds passed.

        Returns:
            the number received. Waits ``settle_s`` more seconds so files are flushed.
        """
        deadline = time.monotonic() + timeout_s
        while self.total() < count and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(max(settle_s, FLUSH_INTERVAL_S * 2))
        return self.total()

    def arrivals(self):
        """Every request of this epoch as (last path segment, arrival epoch seconds), in file order."""
        out = []
        for path in glob.glob(os.path.join(self.directory, f"arrivals-{self._epoch.value}-*.txt")):
            with open(path) as f:
                for line in f:
                    key, _, at = line.partition(" ")
                    if at:
                        out.append((key, float(at)))
        return out

    def stop(self):
        """Stop the receiver processes."""
        for child in self._children:
            if child.is_alive():
                child.terminate()
        for child in self._children:
            child.join(5)
        self._children.clear()
