"""Faults for the policy authority's tests: a database connection that can be cut."""

from __future__ import annotations

import contextlib
import socket
import threading

from sqlalchemy.engine import make_url

from govmesh.runtime.db import libpq_database_url


class PostgresProxy:
    """A TCP proxy to one Postgres on an ephemeral port of 127.0.0.1.

    `cut()` drops every connection through it and refuses new ones, as a lost
    network would, until `restore()`; the Postgres behind it is never touched.
    The Postgres may listen on TCP or, like the embedded server the tests use
    without GOVMESH_TEST_DATABASE_URL, only on a Unix socket.
    """

    def __init__(self, database_url: str) -> None:
        url = make_url(libpq_database_url(database_url))
        # libpq reads the server from the host, or from a `host` query
        # parameter; a host that is a path names the socket's directory.
        host = url.query.get("host") or url.host or "127.0.0.1"
        if not isinstance(host, str):
            raise ValueError(f"one Postgres host expected, got {host!r}")
        port = url.port or 5432
        self._upstream: str | tuple[str, int] = (
            f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)
        )
        # The proxy is the only way in: nothing in the URL may name the server itself.
        self._database_url = url.difference_update_query(["host", "hostaddr", "port"])
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._cut = False
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        """The database URL, through the proxy."""
        return self._database_url.set(host="127.0.0.1", port=self.port).render_as_string(
            hide_password=False
        )

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        with self._lock:
            self._cut = True
            self._drop()

    def restore(self) -> None:
        """Let connections through again."""
        with self._lock:
            self._cut = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()
        self._listener.close()

    def _drop(self) -> None:
        for sock in self._open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._open.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._cut or self._closed:
                    client.close()
                    continue
                try:
                    upstream = self._connect_upstream()
                except OSError:
                    client.close()
                    continue
                upstream.settimeout(None)
                self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _connect_upstream(self) -> socket.socket:
        if isinstance(self._upstream, tuple):
            return socket.create_connection(self._upstream, timeout=5)
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.settimeout(5)
            upstream.connect(self._upstream)
        except OSError:
            upstream.close()
            raise
        return upstream

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
