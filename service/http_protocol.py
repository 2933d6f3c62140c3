"""The HTTP protocol of ``python -m service``: uvicorn's httptools protocol with a bound on the request head.

uvicorn's httptools protocol reads a request line and headers of any size (httptools joins
the pieces as they come, and h11's bound answers 400, not 431), so one client could make the
process read and join a 100 MB header while everyone else waited (issue 20). This protocol
counts each request head's bytes as they arrive; past ``max_head_bytes`` it answers 431,
half-closes, and discards whatever else the client sends until it closes the connection
``LINGER_S`` later: the rest of the head is never parsed or kept. Behind a proxy, the
proxy's own header limit applies first.
"""

from __future__ import annotations

import functools
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.errors import error_json

LINGER_S = 2.0  # how long a refused client may go on sending (discarded) before the connection is closed


class HeadLimitedProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that answers 431 once a request's line and headers pass ``max_head_bytes``."""

    def __init__(self, *args: Any, max_head_bytes: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_head_bytes = max_head_bytes
        self._head_bytes = 0  # of the request head being received
        self._tail = b""  # the last bytes of it, where its blank line may have begun
        self._in_head = True
        self._refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            # up to the blank line that ends the head: the rest of the read is body (or a pipelined request)
            end = (self._tail + data).find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else end + 4 - len(self._tail)
            self._tail = (self._tail + data[-3:])[-3:]
            if self._head_bytes > self.max_head_bytes:
                self._refuse()
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes, self._tail = False, 0, b""
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # the next request on this connection starts with its head

    def _refuse(self) -> None:
        self._refused = True
        body = error_json("headers_too_large", f"the request line and headers are over {self.max_head_bytes} bytes",
                          {"max_bytes": self.max_head_bytes})
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body
        )
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the client reads the answer to its end while it may still be sending
        self.loop.call_later(LINGER_S, self.transport.close)


def head_limited(max_head_bytes: int) -> functools.partial:
    """The protocol for ``uvicorn.run(..., http=...)``, with its bound."""
    return functools.partial(HeadLimitedProtocol, max_head_bytes=max_head_bytes)
