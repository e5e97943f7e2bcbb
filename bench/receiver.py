"""A small webhook receiver: logs every delivery as one JSON line and answers 200.

Each line has the path, the Standard Webhooks headers, the ``Content-Type``,
the body (as text, UTF-8) and every other header the timer was created with.

Run: ``.venv/bin/python -m bench.receiver --port 9000`` (add ``--status 503`` to
watch retries, ``--delay 2`` to answer two seconds late). Used by the README
walkthrough.
"""

import argparse
import http.server
import logging
import time

from sharding import logs

log = logging.getLogger("receiver")
# Logged in fields of their own, or framing only.
_LOGGED = frozenset({"webhook-id", "webhook-timestamp", "user-agent", "content-type", "content-length",
                     "host", "accept", "accept-encoding", "connection"})


def make_handler(status, delay_s=0.0):
    """A request handler class answering every POST with ``status``, ``delay_s`` seconds after it arrives."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802 - http.server's name
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            timestamp = self.headers.get("webhook-timestamp")
            extra = {name: value for name, value in self.headers.items() if name.lower() not in _LOGGED}
            log.info("webhook received", extra={
                "path": self.path, "webhook_id": self.headers.get("webhook-id"),
                "webhook_timestamp": timestamp, "user_agent": self.headers.get("User-Agent"),
                "content_type": self.headers.get("Content-Type"),
                "body": body.decode("utf-8", "backslashreplace"), "headers": extra,
                "received_at": round(time.time(), 3)})
            time.sleep(delay_s)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    return Handler


def main(argv=None):
    """Entry point: ``python -m bench.receiver [--host H] [--port P] [--status S] [--delay SECONDS]``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--status", type=int, default=200, help="HTTP status to answer with")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before answering")
    args = parser.parse_args(argv)
    logs.setup("receiver")
    server = http.server.ThreadingHTTPServer((args.host, args.port), make_handler(args.status, args.delay))
    server.daemon_threads = True
    log.info("receiver listening", extra={"url": f"http://{args.host}:{args.port}"})
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
