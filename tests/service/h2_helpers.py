"""A raw HTTP/2 client over a plain socket (the ``h2`` package) for the connection-abuse tests: it
sends what a gRPC client never would (floods of HEADERS + RST_STREAM, SETTINGS, PING) and reports
how the server ended the connection. Every loop is bounded and every read has a timeout."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import h2.config
import h2.connection
import h2.events
import h2.exceptions

GRPC_HEADERS = (
    (":method", "POST"),
    (":scheme", "http"),
    (":path", "/grpc.health.v1.Health/Check"),
    (":authority", "127.0.0.1"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
)


class RawH2:
    """One client connection to 127.0.0.1:``port``; ``ended`` says how the server ended it (None:
    still open): "GOAWAY <error code> <debug data>" or "closed"."""

    def __init__(self, port: int, timeout_s: float = 10.0, preface: bool = True, rcvbuf: int = 0) -> None:
        """``rcvbuf``: a small receive buffer (bytes) for a client that does not read its answers."""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout_s)
        self.sock.connect(("127.0.0.1", port))
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.ended: str | None = None
        self.events: list[h2.events.Event] = []
        self.next_stream = 1
        if preface:
            self.conn.initiate_connection()
            self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.ended is None:
            try:
                self.sock.sendall(data)
            except OSError as exc:
                self.ended = f"closed ({type(exc).__name__})"

    def pump(self, wait_s: float = 0.0) -> None:
        """Read what the server sent (waiting up to ``wait_s`` for the first bytes), answer it."""
        self.sock.settimeout(wait_s if wait_s > 0 else 0.0)
        try:
            while self.ended is None:
                data = self.sock.recv(1 << 16)
                if not data:
                    self.ended = self.ended or "closed"
                    break
                for event in self.conn.receive_data(data):
                    self.events.append(event)
                    if isinstance(event, h2.events.ConnectionTerminated):
                        self.ended = f"GOAWAY {event.error_code!s} {event.additional_data!r}"
                self.sock.settimeout(0.0)
        except (BlockingIOError, TimeoutError):
            pass
        except h2.exceptions.ProtocolError as exc:
            # h2 refuses frames that follow a GOAWAY and drops that read's events with it
            closed = self.conn.state_machine.state == h2.connection.ConnectionState.CLOSED
            self.ended = self.ended or ("GOAWAY (then more frames)" if closed else f"closed ({exc!r})")
        except OSError as exc:
            self.ended = self.ended or f"closed ({type(exc).__name__})"
        self.flush()

    def wait_ended(self, timeout_s: float) -> str | None:
        """How the server ended the connection, waiting up to ``timeout_s``; None if it is still open."""
        deadline = time.monotonic() + timeout_s
        while self.ended is None and time.monotonic() < deadline:
            self.pump(min(0.2, max(0.001, deadline - time.monotonic())))
        return self.ended

    def flood(
        self, frame: Callable[[RawH2, int], None], count: int, batch: int = 100, read: bool = True
    ) -> int:
        """Send ``frame(self, i)`` ``count`` times in batches, reading the answers between batches
        unless not ``read``; stops early when the server ends the connection (or, not reading, stops
        reading). Returns how many were sent."""
        sent = 0
        while sent < count and self.ended is None:
            for i in range(sent, min(count, sent + batch)):
                frame(self, i)
            self.flush()
            sent = min(count, sent + batch)
            if read:
                self.pump()
        return sent

    def open_stream(self) -> int:
        stream = self.next_stream
        self.next_stream += 2
        self.conn.send_headers(stream, GRPC_HEADERS)
        return stream

    def close(self) -> None:
        self.sock.close()


def headers_then_reset(client: RawH2, i: int) -> None:
    """Rapid reset (CVE-2023-44487's pattern): open a call and cancel it at once."""
    client.conn.reset_stream(client.open_stream())


def settings_frame(client: RawH2, i: int) -> None:
    client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535 + i % 1000})


def ping_frame(client: RawH2, i: int) -> None:
    client.conn.ping(i.to_bytes(8, "big"))


def silent_connection_end(port: int, timeout_s: float) -> tuple[bytes, float]:
    """Connect and send nothing: what the server sent until it closed the connection, and after how
    many seconds (``timeout_s`` when it did not close it)."""
    started = time.monotonic()
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        while time.monotonic() - started < timeout_s:
            sock.settimeout(max(0.01, timeout_s - (time.monotonic() - started)))
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                break
            except ConnectionResetError:
                return received, time.monotonic() - started
            if not data:
                return received, time.monotonic() - started
            received += data
    return received, timeout_s
