"""A site's resident worker: the model stays loaded between rounds; each round's ClientApp only forwards to it.

Why: on Flower's Deployment Engine every message starts a fresh ``flwr-clientapp`` process (Flower 1.41, both
isolation modes), and the SuperNode has no way to keep a model resident. A fresh process that imports torch and
transformers and loads the base model pays seconds per site per round with a 135M model and far more with an 8B
one. With ``deploy supernode --resident-model`` the hospital runs one long-lived worker beside its SuperNode; the
ClientApp process of each round then imports only flwr and this module, hands the message and its context to the
worker over a Unix socket, and returns the worker's reply. The worker runs exactly the handlers the ClientApp would
run in-process (``fedmedlora.federation.site_handlers``), with the process-wide model cache, so the results are the
same; the measurement is in docs/performance.md.

Wire format (local only, never the network): ``MAGIC`` + one JSON header + the Flower protobuf of the ``Message``
and of the ``Context`` (tensors as ``.npy`` bytes inside Flower's ``ArrayRecord``s, plain metadata; no pickles), each
length-prefixed. The reply carries the reply ``Message`` and the updated ``Context`` (the site's state), which the
ClientApp writes back into its own context so the SuperNode keeps it as usual. The socket is created mode 0600 and,
on Linux, the worker refuses peers of another user (``SO_PEERCRED``).

If the worker is not reachable the ClientApp logs a warning and runs the handler in its own process (slower, same
result); an error inside the worker is raised in the ClientApp with the worker's message, as an in-process error
would be.

Layer: adapter. This module imports only the standard library, flwr and the message contract at import time (the
ClientApp process must stay light); the worker loop imports the handlers (torch, transformers) when it starts.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.common.serde import context_from_proto, context_to_proto, message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Context as ProtoContext
from flwr.proto.message_pb2 import Message as ProtoMessage

from fedmedlora.federation.messages import replace_contents

log = logging.getLogger(__name__)

#: Node config key: the Unix socket of this node's resident worker (set by ``deploy supernode --resident-model``).
WORKER_NODE_KEY = "site-worker"
MAGIC = b"FMLW\x01"
_MAX_HEADER = 1 << 20  # a JSON header of plain metadata
_MAX_BLOB = 1 << 36  # 64 GiB: far above any adapter, refuses garbage lengths
_MAX_SOCKET_PATH = 103  # sun_path is 104 bytes on macOS/BSD, 108 on Linux, NUL included


class WorkerUnavailable(ConnectionError):
    """Nothing listens on the worker socket (not started, stopped, or a stale socket file)."""


class WorkerError(RuntimeError):
    """The worker ran the handler and it failed; the message is the worker's."""


class ProtocolError(ValueError):
    """A frame on the worker socket is not what this module writes (wrong magic, absurd length, bad JSON)."""


# ---- frames ---------------------------------------------------------------------------------------------------


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 22))
        if not chunk:
            raise ProtocolError(f"connection closed with {left} of {n} bytes still to read")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def send_frame(sock: socket.socket, header: dict[str, Any], *blobs: bytes) -> None:
    """One frame: magic, the JSON header, then each blob, every part length-prefixed."""
    head = json.dumps(header).encode()
    parts = [MAGIC, struct.pack("<I", len(head)), head, struct.pack("<I", len(blobs))]
    for blob in blobs:
        parts += [struct.pack("<Q", len(blob)), blob]
    sock.sendall(b"".join(parts))


def recv_frame(sock: socket.socket) -> tuple[dict[str, Any], list[bytes]]:
    """Read one frame written by ``send_frame``.

    Raises:
        ProtocolError: wrong magic, a length beyond the limits, or a header that is not a JSON object.
    """
    magic = _recv_exact(sock, len(MAGIC))
    if magic != MAGIC:
        raise ProtocolError(f"not a fedmedlora worker frame (starts with {magic!r})")
    (n_head,) = struct.unpack("<I", _recv_exact(sock, 4))
    if n_head > _MAX_HEADER:
        raise ProtocolError(f"header of {n_head} bytes exceeds {_MAX_HEADER}")
    try:
        header = json.loads(_recv_exact(sock, n_head))
    except json.JSONDecodeError as err:
        raise ProtocolError(f"header is not JSON: {err}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    (n_blobs,) = struct.unpack("<I", _recv_exact(sock, 4))
    if n_blobs > 8:
        raise ProtocolError(f"{n_blobs} blobs in one frame (at most 8)")
    blobs = []
    for _ in range(n_blobs):
        (size,) = struct.unpack("<Q", _recv_exact(sock, 8))
        if size > _MAX_BLOB:
            raise ProtocolError(f"blob of {size} bytes exceeds {_MAX_BLOB}")
        blobs.append(_recv_exact(sock, size))
    return header, blobs


def _encode(msg: Message, context: Context) -> tuple[bytes, bytes]:
    return message_to_proto(msg).SerializeToString(), context_to_proto(context).SerializeToString()


def _decode(msg_blob: bytes, ctx_blob: bytes) -> tuple[Message, Context]:
    return (
        message_from_proto(ProtoMessage.FromString(msg_blob)),
        context_from_proto(ProtoContext.FromString(ctx_blob)),
    )


# ---- the ClientApp side -----------------------------------------------------------------------------------------


def forward(path: str | Path, kind: str, msg: Message, context: Context, *, connect_timeout: float = 5.0) -> Message:
    """Have the worker at ``path`` run handler ``kind`` on ``msg``; update ``context.state`` in place; return the reply.

    Raises:
        WorkerUnavailable: nothing accepts connections at ``path``.
        WorkerError: the handler failed inside the worker.
        ProtocolError: the worker answered with something that is not a reply frame.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(connect_timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError, TimeoutError) as err:
            raise WorkerUnavailable(f"no site worker at {path}: {err}") from None
        sock.settimeout(None)  # a round's training takes as long as it takes; the round timeout bounds it
        send_frame(sock, {"kind": kind}, *_encode(msg, context))
        header, blobs = recv_frame(sock)
    finally:
        sock.close()
    if not header.get("ok"):
        raise WorkerError(f"site worker at {path}: {header.get('error', 'failed without a message')}")
    if len(blobs) != 2:
        raise ProtocolError(f"a reply has 2 blobs, got {len(blobs)}")
    reply, new_context = _decode(*blobs)
    replace_contents(context.state, new_context.state)
    return reply


# ---- the worker side --------------------------------------------------------------------------------------------


Handler = Callable[[Message, Context], Message]


def _default_handlers() -> dict[str, Handler]:
    from fedmedlora.federation import site_handlers

    return {"train": site_handlers.train, "evaluate": site_handlers.evaluate}


def _peer_is_us(conn: socket.socket) -> bool:
    if not hasattr(socket, "SO_PEERCRED"):  # not Linux: the socket's 0600 mode is the only check
        return True
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid == os.getuid()


def handle_connection(conn: socket.socket, handlers: dict[str, Handler]) -> None:
    """Serve one request on an accepted connection: run the handler, reply ok + message + context, or the error."""
    try:
        header, blobs = recv_frame(conn)
        kind = header.get("kind")
        if kind not in handlers or len(blobs) != 2:
            raise ProtocolError(f"unknown request kind {kind!r} or {len(blobs)} blobs (want one of {list(handlers)})")
        msg, context = _decode(*blobs)
    except (ProtocolError, ValueError) as err:  # protobuf's DecodeError is a ValueError
        log.warning("site worker: refused a request: %s", err)
        send_frame(conn, {"ok": False, "error": f"bad request: {err}"})
        return
    started = time.perf_counter()
    try:
        reply = handlers[kind](msg, context)
    except Exception as err:  # the ClientApp re-raises it, as if the handler had failed in its own process
        log.exception("site worker: %s handler failed", kind)
        send_frame(conn, {"ok": False, "error": f"{type(err).__name__}: {err}"})
        return
    seconds = time.perf_counter() - started
    send_frame(conn, {"ok": True, "seconds": seconds}, *_encode(reply, context))
    log.info("site worker: %s handled in %.2f s", kind, seconds)


def bind(path: str | Path) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600; a stale socket file left by a killed worker is replaced.

    Raises:
        OSError: ``path`` exists and is not a socket, or another worker is listening on it.
    """
    path = Path(path)
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        raise OSError(
            f"socket path {path} is {len(os.fsencode(path))} bytes; Unix sockets allow {_MAX_SOCKET_PATH} "
            "(choose a shorter --socket or --state-dir)"
        )
    if path.exists() or path.is_symlink():
        if not path.is_socket():
            raise OSError(f"{path} exists and is not a socket; refusing to replace it")
        try:
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.connect(str(path))
            probe.close()
            raise OSError(f"another site worker is already listening on {path}")
        except ConnectionRefusedError:
            path.unlink()  # stale: its worker is gone
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(8)
    return sock


def serve(
    path: str | Path,
    *,
    handlers: dict[str, Handler] | None = None,
    stop: threading.Event | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """Serve requests one at a time until ``stop`` is set (or SIGTERM / Ctrl+C in the main thread).

    Args:
        path: the Unix socket to create (give the same path to the SuperNode as node config ``site-worker``).
        handlers: kind → handler; default the site's ``train`` and ``evaluate`` (``site_handlers``).
        stop: an event that ends the loop (tests run the worker in a thread).
        ready: called once the socket listens.
    """
    handlers = handlers or _default_handlers()
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sock = bind(path)
    sock.settimeout(0.5)
    log.info("site worker listening on %s (pid %d)", path, os.getpid())
    if ready is not None:
        ready()
    try:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(None)
                if not _peer_is_us(conn):
                    log.warning("site worker: refused a connection from another user")
                    continue
                try:
                    handle_connection(conn, handlers)
                except (ProtocolError, OSError) as err:  # the ClientApp went away mid-request
                    log.warning("site worker: connection lost: %s", err)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        Path(path).unlink(missing_ok=True)
        log.info("site worker on %s stopped", path)


def main(argv: list[str] | None = None) -> None:
    """``python -m fedmedlora.federation.site_worker SOCKET [THREADS]``: what ``deploy site-worker`` starts."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        raise SystemExit("usage: python -m fedmedlora.federation.site_worker SOCKET [TORCH_THREADS]")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(args) > 1 and int(args[1]) > 0:
        import torch

        torch.set_num_threads(int(args[1]))
    serve(args[0])


if __name__ == "__main__":
    main()
