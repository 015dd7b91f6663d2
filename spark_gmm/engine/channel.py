"""The resident engine's message channel between the driver's coordinator and its barrier
tasks: TCP, mutually authenticated with the fit's key, every message authenticated (and
encrypted where Spark's own traffic is), bounded in size and in time. No pyspark here: the
tasks import it.

Handshake (at most ``HANDSHAKE_SECONDS`` per read): the server sends a magic string, whether
the channel is encrypted and a random nonce; the client answers with its own nonce and
``HMAC(key, "client" | nonces | flags)``; the server checks it before reading anything else
and proves the key back with ``HMAC(key, "server" | nonces | flags)``. Each direction then
gets its own key derived from the fit's key and both nonces, so no message of one connection
is valid on another.

Messages: an 8-byte little-endian length, then the body. Each direction numbers its messages;
the body is the payload and ``HMAC-SHA256(direction key, number | length | payload)``, or,
encrypted, ``AES-256-GCM(direction key, nonce = number, aad = length)(payload)``. A tampered,
replayed, reordered or dropped message fails its check, and the receiver raises
:class:`ChannelError`: never a wrong model.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import select
import socket
import struct
import time
from typing import Optional, Tuple

MAGIC = b"spark_gmm-resident-1"
HANDSHAKE_SECONDS = 5.0  # each read of a handshake, at most
NONCE_BYTES = 32
MAC_BYTES = 32  # HMAC-SHA256
GCM_TAG_BYTES = 16
_LENGTH = struct.Struct("<Q")
_NUMBER = struct.Struct("<Q")
# TCP keepalive: a peer whose host vanished (no FIN, no RST) is found in about
# KEEPALIVE_IDLE + KEEPALIVE_COUNT * KEEPALIVE_INTERVAL seconds of silence.
KEEPALIVE_IDLE = 10
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3


class ChannelError(ConnectionError):
    """A peer that failed the handshake or sent a message that fails its check."""


def encryption_available() -> Optional[str]:
    """None when the channel can encrypt (the ``cryptography`` package), else why not."""
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: F401
    except ImportError as exc:
        return f"the 'cryptography' package is not installed ({exc})"
    return None


def tune(sock: socket.socket) -> None:
    """TCP_NODELAY (small messages go at once) and short keepalive probes."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
    ):
        if hasattr(socket, name):  # Linux; macOS has only some of them
            try:
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
            except OSError:
                pass


def _recv_exact(sock: socket.socket, n: int, deadline: Optional[float]) -> bytes:
    """n bytes, or EOFError when the peer closes, socket.timeout past ``deadline``."""
    parts, got = [], 0
    while got < n:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("timed out")
            sock.settimeout(remaining)
        else:
            sock.settimeout(None)
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise EOFError("the peer closed the connection")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _derive(key: bytes, label: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.digest(key, label + server_nonce + client_nonce, hashlib.sha256)


class Channel:
    """One authenticated connection over a blocking socket. ``send`` and ``recv`` are for one
    thread at a time each; ``poll`` reads without blocking (the driver's multiplexed loop)."""

    def __init__(self, sock: socket.socket, send_key: bytes, recv_key: bytes, encrypt: bool):
        self.sock = sock
        self.encrypt = encrypt
        self._send_number = 0
        self._recv_number = 0
        self._buffer = bytearray()
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)
        if encrypt:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            self._send_aead, self._recv_aead = AESGCM(send_key), AESGCM(recv_key)
        else:
            self._send_key, self._recv_key = send_key, recv_key

    def fileno(self) -> int:
        """The socket's file descriptor, so that a channel can be polled or selected on."""
        return self.sock.fileno()

    def close(self) -> None:
        """Closes the socket, ignoring errors from one that is closed already."""
        try:
            self.sock.close()
        except OSError:
            pass

    # ------------------------------------------------------------------ sending

    def _seal(self, payload: bytes) -> bytes:
        number = _NUMBER.pack(self._send_number)
        self._send_number += 1
        if self.encrypt:
            size = len(payload) + GCM_TAG_BYTES
            header = _LENGTH.pack(size)
            return header + self._send_aead.encrypt(number + b"\0" * 4, payload, header)
        header = _LENGTH.pack(len(payload) + MAC_BYTES)
        mac = hmac.digest(self._send_key, number + header + payload, hashlib.sha256)
        return header + payload + mac

    def send(self, payload: bytes, timeout: Optional[float] = None) -> None:
        """Sends one message (``timeout`` seconds at most when given)."""
        data = self._seal(payload)
        if timeout is None:
            self.sock.sendall(data)
            return
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.settimeout(None)

    # ------------------------------------------------------------------ receiving
    # The socket stays blocking; reads take what has arrived (MSG_DONTWAIT) into a buffer,
    # and a message is opened once all of it is there: one read per message in the common
    # case, and a message cut halfway never blocks a reader.

    def _open(self, header: bytes, body: bytes) -> bytes:
        number = _NUMBER.pack(self._recv_number)
        self._recv_number += 1
        if self.encrypt:
            from cryptography.exceptions import InvalidTag

            try:
                return self._recv_aead.decrypt(number + b"\0" * 4, body, header)
            except InvalidTag:
                raise ChannelError(
                    "a message failed its authentication (tampered, replayed or out of order)"
                ) from None
        payload, mac = body[:-MAC_BYTES], body[-MAC_BYTES:]
        expected = hmac.digest(self._recv_key, number + header + payload, hashlib.sha256)
        if not hmac.compare_digest(mac, expected):
            raise ChannelError(
                "a message failed its authentication (tampered, replayed or out of order)"
            )
        return payload

    def _overhead(self) -> int:
        return GCM_TAG_BYTES if self.encrypt else MAC_BYTES

    def _take(self, limit: int) -> Optional[bytes]:
        """The buffered message's payload when all of it is here (at most ``limit`` bytes,
        else ChannelError), else None."""
        if len(self._buffer) < _LENGTH.size:
            return None
        (size,) = _LENGTH.unpack_from(self._buffer)
        if size < self._overhead() or size - self._overhead() > limit:
            raise ChannelError(f"a message of {size} bytes, beyond the {limit} expected")
        end = _LENGTH.size + size
        if len(self._buffer) < end:
            return None
        header, body = bytes(self._buffer[: _LENGTH.size]), bytes(self._buffer[_LENGTH.size : end])
        del self._buffer[:end]
        return self._open(header, body)

    def has_message(self) -> bool:
        """Whether a whole message is buffered already (read with an earlier one): a poll of
        the socket would not show it."""
        if len(self._buffer) < _LENGTH.size:
            return False
        return len(self._buffer) >= _LENGTH.size + _LENGTH.unpack_from(self._buffer)[0]

    def _fill(self) -> None:
        """Buffers what has arrived, without blocking; EOFError when the peer closed."""
        try:
            chunk = self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        if not chunk:
            raise EOFError("the peer closed the connection")
        self._buffer += chunk

    def poll(self, limit: int) -> Optional[bytes]:
        """A complete message's payload if one has arrived, else None, without blocking;
        EOFError when the peer closed before a whole message."""
        message = self._take(limit)
        if message is None:
            self._fill()
            message = self._take(limit)
        return message

    def recv(self, limit: int, timeout: Optional[float] = None) -> bytes:
        """The next message's payload (at most ``limit`` bytes), waiting for it to arrive
        whole at most ``timeout`` seconds (socket.timeout past it)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = self._take(limit)
            if message is not None:
                return message
            wait_ms = (
                None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            )
            if wait_ms == 0 or not self._poller.poll(wait_ms):
                raise socket.timeout("timed out")
            self._fill()


# ---------------------------------------------------------------------- handshakes


def _flags(encrypt: bool) -> bytes:
    return b"E" if encrypt else b"A"


def accept(sock: socket.socket, key: bytes, encrypt: bool) -> Channel:
    """The server's side of the handshake on an accepted socket (each read bounded by
    ``HANDSHAKE_SECONDS``): ChannelError for a peer without the key."""
    tune(sock)
    server_nonce = os.urandom(NONCE_BYTES)
    flags = _flags(encrypt)
    sock.settimeout(HANDSHAKE_SECONDS)
    sock.sendall(MAGIC + flags + server_nonce)
    deadline = time.monotonic() + HANDSHAKE_SECONDS
    answer = _recv_exact(sock, NONCE_BYTES + MAC_BYTES, deadline)
    client_nonce, mac = answer[:NONCE_BYTES], answer[NONCE_BYTES:]
    expected = hmac.digest(key, b"client" + server_nonce + client_nonce + flags, hashlib.sha256)
    if not hmac.compare_digest(mac, expected):
        raise ChannelError("the peer does not hold the fit's key")
    sock.sendall(hmac.digest(key, b"server" + client_nonce + server_nonce + flags, hashlib.sha256))
    return Channel(
        sock,
        _derive(key, b"server->client", server_nonce, client_nonce),
        _derive(key, b"client->server", server_nonce, client_nonce),
        encrypt,
    )


def connect(address: Tuple[str, int], key: bytes, encrypt: bool, timeout: float) -> Channel:
    """The client's side: connects (IPv4 or IPv6) and runs the handshake within ``timeout``
    seconds per step; ChannelError when the server does not prove the key or disagrees on
    encryption."""
    sock = socket.create_connection(address, timeout=timeout)
    try:
        tune(sock)
        deadline = time.monotonic() + min(timeout, HANDSHAKE_SECONDS)
        hello = _recv_exact(sock, len(MAGIC) + 1 + NONCE_BYTES, deadline)
        flags = _flags(encrypt)
        if hello[: len(MAGIC)] != MAGIC or hello[len(MAGIC) : len(MAGIC) + 1] != flags:
            raise ChannelError("the coordinator speaks another protocol or disagrees on encryption")
        server_nonce = hello[len(MAGIC) + 1 :]
        client_nonce = os.urandom(NONCE_BYTES)
        sock.sendall(
            client_nonce
            + hmac.digest(key, b"client" + server_nonce + client_nonce + flags, hashlib.sha256)
        )
        proof = _recv_exact(sock, MAC_BYTES, deadline)
        expected = hmac.digest(key, b"server" + client_nonce + server_nonce + flags, hashlib.sha256)
        if not hmac.compare_digest(proof, expected):
            raise ChannelError("the coordinator does not hold the fit's key")
        sock.settimeout(None)
        return Channel(
            sock,
            _derive(key, b"client->server", server_nonce, client_nonce),
            _derive(key, b"server->client", server_nonce, client_nonce),
            encrypt,
        )
    except BaseException:
        sock.close()
        raise
