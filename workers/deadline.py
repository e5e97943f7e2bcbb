"""A wall-clock deadline for each webhook delivery attempt.

``requests`` (urllib3) timeouts apply to each socket operation, so a
receiver that sends one byte a second never times out. A :class:`Watchdog`
thread ends every attempt that outlives its deadline by shutting down the
socket of the connection it uses: the blocked read or write in the sender
thread then fails at once, whatever the receiver does (sending the
request, waiting for the headers, reading the body). Before the socket
exists (the DNS lookup, the TCP connect) and during a TLS handshake each
step is bounded by the per-operation timeout only; an attempt found past
its deadline after them ends at once (:func:`watch`).
"""

import contextlib
import heapq
import itertools
import socket
import threading
import time

# The attempt running in this sender thread, for the connection that serves it (watch()).
_current = threading.local()


class Attempt:
    """One delivery attempt: its deadline (monotonic seconds), the socket it
    uses (None before it has one), and whether the watchdog cut it off (``expired``)."""

    __slots__ = ("deadline", "sock", "expired", "done")

    def __init__(self, deadline):
        self.deadline = deadline
        self.sock = None
        self.expired = False
        self.done = False


def _cut(sock):
    if sock is None:
        return
    try:
        # socket.socket's own shutdown, also for an SSLSocket (whose override
        # would drop its TLS object under the sender thread's feet).
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


class Watchdog:
    """Cuts off delivery attempts at their deadline; one thread for every attempt of a process.

    Usage, in the thread that sends::

        with watchdog.attempt(10.0) as attempt:
            ...  # requests calls; the guarded connection calls watch(its socket)
            if attempt.expired: ...
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._heap = []
        self._order = itertools.count()
        self._thread = None

    @contextlib.contextmanager
    def attempt(self, timeout_s):
        """Run an attempt that ends at ``timeout_s`` seconds from now (wall clock).

        Yields:
            the :class:`Attempt`; ``expired`` is True when the watchdog cut it off.
        """
        attempt = Attempt(time.monotonic() + timeout_s)
        with self._cond:
            if self._thread is None:
                # Started on first use: consumers are forked, and a thread does not survive a fork.
                self._thread = threading.Thread(target=self._run, name="attempt-watchdog", daemon=True)
                self._thread.start()
            first = not self._heap or attempt.deadline < self._heap[0][0]
            heapq.heappush(self._heap, (attempt.deadline, next(self._order), attempt))
            if first:
                self._cond.notify()
        _current.attempt = attempt
        try:
            yield attempt
        finally:
            _current.attempt = None
            with self._cond:
                # Under the lock: once done, the watchdog never touches the
                # socket, whose connection may be back in the pool serving another attempt.
                attempt.done = True

    def _run(self):
        with self._cond:
            while True:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                wait_s = self._heap[0][0] - time.monotonic()
                if wait_s > 0:
                    self._cond.wait(wait_s)
                    continue
                attempt = heapq.heappop(self._heap)[2]
                # expired first, then the socket: watch() sets them the other way
                # round, so either the socket is cut here or watch() raises.
                attempt.expired = True
                _cut(attempt.sock)


def watch(sock=None):
    """Tie ``sock`` (the socket this thread's attempt is about to use, if given) to the attempt.

    Called by the guarded connection (``workers.ssrf``) when it has connected
    and before each request it sends.
    Raises:
        TimeoutError: the attempt's deadline has already passed.
    """
    attempt = getattr(_current, "attempt", None)
    if attempt is None:
        return
    if sock is not None:
        attempt.sock = sock
    if attempt.expired:
        raise TimeoutError("delivery attempt deadline passed")
