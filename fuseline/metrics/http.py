"""``MetricsServer``: ``/metrics`` over HTTP, in the text format Prometheus scrapes.

The socket is bound when the server is built, so a port in use is an error
before any worker starts; requests are served from :meth:`MetricsServer.start`
on, by daemon threads. A supervisor binds before forking its worker
processes and starts serving after, so no serving thread exists at a fork;
the children close their copy of the listening socket.
"""

from __future__ import annotations

import os
import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, make_wsgi_app
from prometheus_client.registry import Collector

#: Every interface, as exporters do: Prometheus scrapes from another host or container, and the
#: series name workflows and steps, nothing more. ``--metrics-host 127.0.0.1`` keeps it local.
DEFAULT_HOST = "0.0.0.0"  # noqa: S104


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Scrapes come every few seconds: no log line each."""


class MetricsServer:
    """Serves ``registry`` at ``http://host:port/metrics`` (``port`` 0: a free port, see :attr:`port`).

    Raises ``OSError`` when the address cannot be bound (in use, not this
    host's).
    """

    def __init__(self, registry: Collector = REGISTRY, host: str = DEFAULT_HOST, port: int = 9100) -> None:
        server_class = _Server6 if ":" in host else _Server
        self._httpd = make_server(host, port, make_wsgi_app(registry), server_class, _QuietHandler)
        self.host = host
        self._thread: threading.Thread | None = None
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._forget_in_child)

    @property
    def port(self) -> int:
        return int(self._httpd.server_port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> None:
        """Serve requests from now on, on daemon threads."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, name="fuseline-metrics", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        """Stop serving and free the port."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def _forget_in_child(self) -> None:
        """A forked worker process does not serve: it lets go of the listening socket."""
        self._thread = None
        self._httpd.socket.close()
