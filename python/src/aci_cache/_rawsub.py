"""A lean reader of Pub/Sub pushes for the thread front end.

redis-py's ``PubSub.get_message`` costs tens of microseconds of Python per message, under the
GIL. An eager writer gets each of its own invalidations back on its subscription, so that cost
was paid once per ``set`` and slowed the writing thread (issue 10: eager set at 0.60x a raw SET).
This reader parses the pushes itself from the connection's socket, in bulk: subscribing still
goes through redis-py (it only sends commands there), reading never does.

Used only on a plain TCP/Unix socket of a RESP2/RESP3 connection; otherwise (TLS, fakeredis, a
custom connection) the front end keeps redis-py's ``get_message``.
"""

from __future__ import annotations

import select
import socket
import time
from collections import deque
from typing import Any, Deque, Dict, Optional

_CRLF = b"\r\n"
#: Seconds to wait after a read that brought only our own messages.
OWN_BATCH_DELAY = 0.005
_MSG2 = b"*3\r\n$7\r\nmessage\r\n$"
_MSG3 = b">3\r\n$7\r\nmessage\r\n$"


class RawSub:
    def __init__(self, sock: socket.socket, own_prefix: bytes = b"\0"):
        # Our own messages (every payload of ours starts with own_prefix) are only counted and
        # their last timestamp kept: one {"type": "own"} event per read instead of one dict each.
        self.own = own_prefix
        self.own_count = 0
        self.own_ts = b""
        self.sock = sock
        self.buf = bytearray()
        self.pos = 0
        self.queue: Deque[Dict[str, Any]] = deque()
        self.pause = False

    @staticmethod
    def usable(ps: Any) -> Optional[socket.socket]:
        conn = getattr(ps, "connection", None)
        sock = getattr(conn, "_sock", None)
        if type(sock) is not socket.socket:
            return None
        parser = getattr(conn, "_parser", None)
        buffered = getattr(getattr(parser, "_buffer", None), "unread_bytes", None)
        try:
            if buffered is not None and buffered():
                return None  # redis-py has read ahead: keep reading through it
        except Exception:
            return None
        return sock

    def get(self, timeout: float) -> Optional[Dict[str, Any]]:
        if not self.queue:
            if self.pause:
                # Only our own messages came last time: this instance is writing (eager or
                # batched). Let more arrive before reading again, so that this thread takes the
                # GIL from the writing threads once per batch rather than once per write. The
                # cost: another instance's message may wait this long, far inside every bound.
                self.pause = False
                time.sleep(OWN_BATCH_DELAY)
            if not self._parse():
                r, _, _ = select.select([self.sock], [], [], timeout)
                if not r:
                    return None
                data = self.sock.recv(1 << 16)
                if not data:
                    raise ConnectionError("the Pub/Sub connection was closed by the server")
                if self.pos:
                    del self.buf[: self.pos]
                    self.pos = 0
                self.buf += data
                self._parse()
            if not self.queue:
                return None
        ev = self.queue.popleft()
        # Paused before the next read, not before this event is handled: the lag it measures
        # stays the link's own.
        self.pause = ev["type"] == "own" and not self.queue
        return ev

    def _parse(self) -> bool:
        """Parse every complete push in the buffer into the queue; True if any."""
        got = False
        buf, queue = self.buf, self.queue
        while True:
            # fast path: a message push, RESP2 (*3) or RESP3 (>3)
            pos = self.pos
            if buf.startswith(_MSG2, pos) or buf.startswith(_MSG3, pos):
                a = pos + len(_MSG2)
                e = buf.find(_CRLF, a)
                if e < 0:
                    return got
                c0 = e + 2
                c1 = c0 + int(buf[a:e])
                if c1 + 3 > len(buf) or buf[c1 + 2] != 0x24:
                    if c1 + 3 > len(buf):
                        return got
                else:
                    e2 = buf.find(_CRLF, c1 + 3)
                    if e2 < 0:
                        return got
                    d0 = e2 + 2
                    d1 = d0 + int(buf[c1 + 3:e2])
                    if d1 + 2 > len(buf):
                        return self._own_event() or got
                    if buf.startswith(self.own, d0):
                        t0 = d0 + len(self.own)
                        t1 = buf.find(b",", t0, d1)
                        self.own_count += 1
                        self.own_ts = bytes(buf[t0:t1]) if t1 > 0 else b""
                        self.pos = d1 + 2
                        continue
                    queue.append({"type": "message", "pattern": None, "channel": bytes(buf[c0:c1]),
                                  "data": bytes(buf[d0:d1])})
                    self.pos = d1 + 2
                    got = True
                    continue
            item, at = self._value(self.pos)
            if at < 0:
                return self._own_event() or got
            self.pos = at
            if isinstance(item, list) and len(item) >= 3:
                kind = item[0].decode() if isinstance(item[0], bytes) else str(item[0])
                if kind == "message":
                    self.queue.append({"type": "message", "pattern": None, "channel": item[1], "data": item[2]})
                elif kind in ("subscribe", "unsubscribe"):
                    self.queue.append({"type": kind, "pattern": None, "channel": item[1], "data": item[2]})
                elif kind == "pmessage" and len(item) >= 4:
                    self.queue.append({"type": "pmessage", "pattern": item[1], "channel": item[2], "data": item[3]})
                elif kind == "pong":
                    self.queue.append({"type": "pong", "pattern": None, "channel": None, "data": item[1]})
                got = True
            elif isinstance(item, Exception):
                raise item

    def _own_event(self) -> bool:
        if not self.own_count:
            return False
        self.queue.append({"type": "own", "count": self.own_count, "data": self.own_ts})
        self.own_count = 0
        return True

    def _value(self, at: int) -> Any:
        """(value, position after it), or (None, -1) if incomplete."""
        buf = self.buf
        if at >= len(buf):
            return None, -1
        end = buf.find(_CRLF, at)
        if end < 0:
            return None, -1
        t = buf[at]
        head = bytes(buf[at + 1:end])
        nxt = end + 2
        if t in (0x24, 0x3D):  # $ bulk string, = verbatim
            n = int(head)
            if n < 0:
                return None, nxt
            stop = nxt + n
            if stop + 2 > len(buf):
                return None, -1
            return bytes(buf[nxt:stop]), stop + 2
        if t in (0x2A, 0x3E, 0x7E):  # * array, > push, ~ set
            n = int(head)
            out = []
            for _ in range(max(n, 0)):
                v, nxt = self._value(nxt)
                if nxt < 0:
                    return None, -1
                out.append(v)
            return out, nxt
        if t == 0x3A:  # : integer
            return int(head), nxt
        if t == 0x2B:  # + simple string
            return head, nxt
        if t == 0x2D:  # - error
            return ConnectionError(f"Pub/Sub connection error: {head.decode(errors='replace')}"), nxt
        if t == 0x5F:  # _ null
            return None, nxt
        if t in (0x23, 0x2C, 0x28):  # boolean, double, big number
            return head, nxt
        raise ConnectionError(f"unexpected RESP type byte {t!r} on the Pub/Sub connection")
