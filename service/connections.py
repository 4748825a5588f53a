"""Connections that make no progress are closed: slow headers, slow bodies, idle keep-alive.

uvicorn (which each BentoML worker runs) closes a keep-alive connection only once it has answered on it, and its
timer restarts on every byte received: a client that connects and sends nothing, or one header byte every few
seconds (slowloris), or a body one byte at a time, holds a connection — and a file descriptor and a slot of the
process — for ever. No uvicorn option bounds that, and BentoML passes only `--timeout-keep-alive` on to uvicorn.
So the service installs `GuardedH11Protocol`, uvicorn's own h11 protocol with three deadlines that no trickle of
bytes extends (`connections` in the serving config):

* header_timeout_s — from the connection's start, or from the previous answer on it, to the end of the request's
  headers;
* body_timeout_s — from the end of the headers to the end of the body (the app then sees the client disconnect);
* keep_alive_s — uvicorn's own idle timeout between requests.

The workers of `bentoml serve` share one listening socket, made by its arbiter, and whichever worker woke first
took a load generator's whole burst of connections while the other idled (benchmarks/serve_profile.py before
this change: the workers' CPU seconds of a 15 s run 0.02 + 15.26; asyncio accepts up to the backlog, 2048, per
wake-up). So `install` also:

* gives each worker a listening socket of its own on the same address (SO_REUSEPORT, set on the shared socket too,
  so the kernel lets them share the port), and a classic BPF program on the port's group of sockets that sends
  each new connection to one of the workers' own sockets by its flow hash: connections spread evenly, whatever the
  workers are doing. The shared socket stays served by every worker: the kernel falls back to it if the program's
  choice is gone (a worker restarting), and a worker that cannot make its own socket (not Linux) serves only it;
* makes each event loop accept one waiting connection per wake-up, so what does reach the shared socket goes to a
  worker that is free to take it. (A process with uvloop as its loop keeps uvloop's own accept.)

`install` points uvicorn's "auto" and "h11" protocol names at this class; it runs when the service module is
imported, which BentoML's worker does before it builds its uvicorn.Config. (httptools is not installed here, so
"auto" was h11 already.)
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import socket
import struct
from asyncio.selector_events import BaseSelectorEventLoop
from typing import Any

import h11
from uvicorn.config import HTTP_PROTOCOLS
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.config import Connections

logger = logging.getLogger("specserve.connections")
SETTINGS = Connections()
_PATH = f"{__name__}:GuardedH11Protocol"


class GuardedH11Protocol(H11Protocol):
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = SETTINGS.keep_alive_s
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_for: str | None = None  # "headers" or "body"

    def _arm(self, waiting_for: str, seconds: float) -> None:
        self._disarm()
        self._waiting_for = waiting_for
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._waiting_for = None, None

    def _expired(self) -> None:
        what, self._deadline = self._waiting_for, None
        if self.transport.is_closing():
            return
        client = "%s:%d" % self.client if self.client else "a client"
        logger.info("closed the connection of %s: its request %s took longer than %g s", client, what,
                    SETTINGS.header_timeout_s if what == "headers" else SETTINGS.body_timeout_s)
        if what == "headers" and self.conn.our_state is h11.IDLE:
            self.send_408_and_close()
        else:
            self.transport.close()  # mid-body: the app sees http.disconnect

    def send_408_and_close(self) -> None:
        """A 408 written as raw bytes (h11 will not send an answer to a request it has not seen), then close."""
        body = b'{"error": "request headers not received in time", "status": 408}'
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        self.transport.close()

    def _follow(self) -> None:
        """(Re)arm the deadline that fits where the client's side of the exchange is."""
        state = self.conn.their_state
        if state is h11.IDLE:
            if self._waiting_for != "headers":
                self._arm("headers", SETTINGS.header_timeout_s)
        elif state is h11.SEND_BODY:
            if self._waiting_for != "body":
                self._arm("body", SETTINGS.body_timeout_s)
        else:  # DONE, MUST_CLOSE, CLOSED, ERROR: nothing more is awaited from the client
            self._disarm()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._follow()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.transport.is_closing():
            self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            self._disarm()
        elif self.conn.their_state is h11.IDLE:
            self._disarm()  # between requests uvicorn's keep-alive timer applies; headers get theirs on first byte
        else:
            self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


_accept_connection = BaseSelectorEventLoop._accept_connection


def _accept_one(self: BaseSelectorEventLoop, protocol_factory: Any, sock: Any, sslcontext: Any = None,
                server: Any = None, backlog: int = 100, *args: Any, **kwargs: Any) -> None:
    """asyncio's accept, taking at most one waiting connection per wake-up (its `backlog` is the batch size)."""
    return _accept_connection(self, protocol_factory, sock, sslcontext, server, 1, *args, **kwargs)


SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)  # Linux 4.5+
SKF_AD_RXHASH = 0xFFFFF000 + 32  # classic BPF's "load the packet's flow hash"


def spread_program(workers: int) -> bytes:
    """A reuseport group's classic BPF program: socket index 1 + flow hash mod `workers` (index 0 is the shared
    socket, the group's first member; the workers' own sockets follow)."""
    return b"".join(struct.pack("HBBI", code, 0, 0, k) for code, k in (
        (0x20, SKF_AD_RXHASH),  # A = skb->hash
        (0x94, workers),  # A %= workers
        (0x04, 1),  # A += 1
        (0x16, 0)))  # return A


def own_socket(shared: socket.socket, workers: int) -> socket.socket | None:
    """A listening socket of this worker's own beside the inherited `shared` one, steered by spread_program; None
    where the platform refuses (the worker then serves only the shared socket)."""
    if shared.family not in (socket.AF_INET, socket.AF_INET6) or shared.type != socket.SOCK_STREAM:
        return None
    # proto named: asyncio sets TCP_NODELAY only on sockets that say IPPROTO_TCP (else each answer waits ~40 ms for
    # the client's delayed ACK)
    own = socket.socket(shared.family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        own.bind(shared.getsockname())
        own.listen(2048)  # uvicorn listens again with its backlog
        program = ctypes.create_string_buffer(spread_program(workers))
        own.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF,
                       struct.pack("HP", len(program.raw) // 8, ctypes.addressof(program)))
    except (OSError, AttributeError) as e:
        own.close()
        logger.info("serving the shared listening socket only (no socket of this worker's own: %s)", e)
        return None
    own.setblocking(False)
    return own


def _serve_own_sockets(workers: int) -> None:
    """Make uvicorn serve, beside each listening socket it is given, one of this worker's own (own_socket)."""
    from uvicorn.server import Server

    startup = Server.startup
    if getattr(startup, "specserve_own_sockets", False):
        return

    async def startup_with_own(self: Server, sockets: list[socket.socket] | None = None) -> None:
        if sockets:
            sockets = [*sockets, *filter(None, (own_socket(s, workers) for s in sockets))]
        await startup(self, sockets=sockets)

    startup_with_own.specserve_own_sockets = True  # type: ignore[attr-defined]
    Server.startup = startup_with_own  # type: ignore[method-assign]


def install(settings: Connections, workers: int = 1) -> None:
    """Use GuardedH11Protocol with `settings` for the uvicorn servers this process starts, give each of the
    `workers` a listening socket of its own, and accept one connection per event-loop wake-up."""
    global SETTINGS
    SETTINGS = settings
    HTTP_PROTOCOLS["auto"] = HTTP_PROTOCOLS["h11"] = _PATH
    BaseSelectorEventLoop._accept_connection = _accept_one  # type: ignore[method-assign]
    _serve_own_sockets(workers)
