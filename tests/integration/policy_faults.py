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
    """

    def __init__(self, database_url: str) -> None:
        url = make_url(libpq_database_url(database_url))
        self._database_url = url
        self._upstream = (url.host or "127.0.0.1", url.port or 5432)
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
                    upstream = socket.create_connection(self._upstream, timeout=5)
                except OSError:
                    client.close()
                    continue
                upstream.settimeout(None)
                self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
