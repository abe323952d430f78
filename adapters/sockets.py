"""Listening sockets for the edges: a port in use is a clear error, never a shared port."""

from __future__ import annotations

import socket

from broker.model.errors import AdapterError

BACKLOG = 128


def listen(host: str, port: int, *, service: str, hint: str) -> socket.socket:
    """A socket listening on ``host:port`` (plain bind, no SO_REUSEPORT), whose accepted
    connections send at once (``TCP_NODELAY``, inherited on Linux, and set by asyncio).

    Raises :class:`AdapterError` saying what could not listen (``service``)
    and what to do about it (``hint``).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not left 0: asyncio sets TCP_NODELAY only on connections whose
    # socket says TCP (without it every kept-alive HTTP answer waited ~40 ms for an ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
