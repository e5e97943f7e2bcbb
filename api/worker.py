"""The gunicorn worker class of the API: gevent, with a deadline on every request.

gunicorn's ``gthread`` worker gives each connection a thread while it reads
the request, so a few clients that send their headers or body slowly (or
never) hold every thread and freeze the API (gunicorn docs, "Design": sync
and threaded workers need a buffering proxy in front of them). In gunicorn's
``gevent`` worker a connection costs a greenlet, so a waiting connection
holds up no one else (up to ``worker_connections`` per worker), and gunicorn
already bounds the wait for a request's headers by ``keepalive`` seconds
(``AsyncWorker.handle``: ``timeout_ctx``). This class adds the missing
bound on the rest of a request: its body must arrive and its answer be
written within :data:`REQUEST_DEADLINE_S` of its headers, or the connection
is closed.
"""

import select

import gevent
from gevent import monkey
from gunicorn.workers.ggevent import GeventWorker

# Seconds from a request's headers to the end of its answer (body read included).
REQUEST_DEADLINE_S = 10


class DeadlineWorker(GeventWorker):
    """gunicorn's ``gevent`` worker, closing a request that is not done within its deadline."""

    def patch(self):
        """gunicorn's monkey-patching, except ``select.poll``.

        redis-py polls every pooled connection with a zero timeout before
        each command (``_parsers/hiredis.py``, ``_socket_can_read``); gevent's
        cooperative ``poll`` makes that a trip through the event loop, which
        cost a third of the API's CPU per create. The original returns at
        once and never blocks with a zero timeout.
        """
        super().patch()
        select.poll = monkey.get_original("select", "poll")

    def handle_request(self, listener_name, req, sock, addr):
        """Handle ``req`` as gunicorn does, within :data:`REQUEST_DEADLINE_S`.

        Returns:
            gunicorn's keep-alive flag (True: read the next request).
        Raises:
            StopIteration: the deadline passed; gunicorn's ``AsyncWorker.handle``
                then closes the connection.
        """
        with gevent.Timeout(REQUEST_DEADLINE_S, False):
            return super().handle_request(listener_name, req, sock, addr)
        self.log.info("request deadline passed, closing the connection",
                      extra={"deadline_s": REQUEST_DEADLINE_S, "path": req.path})
        raise StopIteration()
