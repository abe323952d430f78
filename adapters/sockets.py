"""Listening sockets for the edges: a port in use is a clear error, never a shared port."""

from __future__ import annotations

import socket

from broker.model.errors import AdapterError

BACKLOG = 128


def listen(host: str, port: int, *, service: str, hint: str) -> socket.socket:
    """A socket listening on ``host:port`` (plain bind, no SO_REUSEPORT).

    Raises :class:`AdapterError` saying what could not listen (``service``)
    and what to do about it (``hint``).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise AdapterError(
            f"cannot listen for {service} on {host}:{port}: {exc.strerror}; {hint}"
        ) from exc
    return sock
