"""The resident site worker: a ClientApp that forwards to it gives the same run as one that trains in-process.

The worker runs in a thread of the test process (same handlers, same model cache); every message and context still
crosses the Unix socket as Flower protobuf, so FedSA's private B, the error-feedback residual and the round state
make the round trip the Deployment Engine relies on.
"""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from tinymodel import build_tiny_world, tiny_federation_config

SITES = ["alpha", "beta", "gamma"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return build_tiny_world(tmp_path_factory.mktemp("workerworld"), SITES, [2, 3, 4])


@pytest.fixture()
def worker(tmp_path: Path):
    """A worker thread on a socket; yields (path, served-request counter)."""
    from fedmedlora.federation import site_worker

    path = tmp_path / "w.sock"
    stop, ready = threading.Event(), threading.Event()
    served: list[str] = []
    base = site_worker._default_handlers()
    handlers = {k: (lambda m, c, h=h, k=k: (served.append(k), h(m, c))[1]) for k, h in base.items()}
    thread = threading.Thread(
        target=site_worker.serve, args=(path,), kwargs={"handlers": handlers, "stop": stop, "ready": ready.set}
    )
    thread.start()
    assert ready.wait(10)
    yield path, served
    stop.set()
    thread.join(10)
    assert not path.exists(), "the worker removes its socket when it stops"


def _cfg(world: Path, *extra: str):
    return tiny_federation_config(world, "sim", SITES, *extra)


def _via(path: Path | str):
    from fedmedlora.federation import client_app as client_module

    def app(msg, ctx):
        ctx.node_config["site-worker"] = str(path)
        return client_module.app(msg, ctx)

    return app


def _final(out: Path) -> dict[str, np.ndarray]:
    from fedmedlora.lm.adapter_io import load_adapter_arrays

    return load_adapter_arrays(out / "adapters" / "final")


@pytest.mark.slow
@pytest.mark.parametrize("extra", [("federation.strategy=fedsa",), ("federation.compression=int8",)])
def test_a_run_through_the_worker_equals_the_in_process_run(world: Path, tmp_path: Path, worker, extra) -> None:
    from fedmedlora.federation.simulation import run_federation

    path, served = worker
    cfg = _cfg(world, *extra)
    run_federation(cfg, tmp_path / "local", data_dir=world / "bench")
    run_federation(cfg, tmp_path / "worker", data_dir=world / "bench", client_app=_via(path))
    assert served.count("train") == 2 * len(SITES)
    local, remote = _final(tmp_path / "local"), _final(tmp_path / "worker")
    assert local.keys() == remote.keys()
    for k in local:
        np.testing.assert_array_equal(remote[k], local[k], err_msg=k)


@pytest.mark.slow
def test_without_a_worker_the_client_app_trains_itself_and_says_so(world: Path, tmp_path: Path, caplog) -> None:
    from fedmedlora.federation.simulation import run_federation

    cfg = _cfg(world, "federation.rounds=1")
    run_federation(cfg, tmp_path / "local", data_dir=world / "bench")
    with caplog.at_level("WARNING", logger="fedmedlora.federation.client_app"):
        run_federation(cfg, tmp_path / "fallback", data_dir=world / "bench", client_app=_via(tmp_path / "none.sock"))
    assert "no site worker at" in caplog.text and "running the train handler in the ClientApp process" in caplog.text
    local, fallback = _final(tmp_path / "local"), _final(tmp_path / "fallback")
    for k in local:
        np.testing.assert_array_equal(fallback[k], local[k], err_msg=k)


@pytest.fixture(autouse=True)
def _server_identity(server_identity):
    """Every test here builds messages by hand (``tests/conftest.py``)."""


def _message_and_context():
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    msg = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=1, message_type="train")
    ctx = Context(run_id=1, node_id=1, node_config={"site": "alpha"}, state=RecordDict(), run_config={})
    return msg, ctx


def test_an_error_in_the_worker_is_raised_in_the_client_app_with_its_message(tmp_path: Path) -> None:
    from fedmedlora.federation import site_worker

    def broken(msg, ctx):
        raise ValueError("site alpha: train.jsonl line 3 is not JSON")

    def keeps_state(msg, ctx):
        from flwr.app import ConfigRecord, Message, RecordDict

        ctx.state["kept"] = ConfigRecord({"n": 7})
        return Message(RecordDict({"info": ConfigRecord({"site": "alpha"})}), reply_to=msg)

    path, stop, ready = tmp_path / "w.sock", threading.Event(), threading.Event()
    handlers = {"train": broken, "evaluate": keeps_state}
    thread = threading.Thread(
        target=site_worker.serve, args=(path,), kwargs={"handlers": handlers, "stop": stop, "ready": ready.set}
    )
    thread.start()
    try:
        assert ready.wait(10)
        msg, ctx = _message_and_context()
        with pytest.raises(site_worker.WorkerError, match=r"ValueError: site alpha: train\.jsonl line 3 is not JSON"):
            site_worker.forward(path, "train", msg, ctx)
        reply = site_worker.forward(path, "evaluate", msg, ctx)  # the worker survived the failure
        assert reply.content.config_records["info"]["site"] == "alpha"
        assert reply.metadata.reply_to_message_id == msg.metadata.message_id
        assert ctx.state.config_records["kept"]["n"] == 7  # the state the handler wrote comes back
        assert path.stat().st_mode & 0o777 == 0o600
        # garbage on the socket is refused with a reason, and the worker keeps serving
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.connect(str(path))
            raw.sendall(b"GET / HTTP/1.1\r\n\r\n")
            header, _ = site_worker.recv_frame(raw)
        assert header == {"ok": False, "error": header["error"]} and "not a fedmedlora worker frame" in header["error"]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.connect(str(path))
            raw.sendall(site_worker.MAGIC + struct.pack("<I", 1 << 30))
            header, _ = site_worker.recv_frame(raw)
        assert "exceeds" in header["error"]
        assert site_worker.forward(path, "evaluate", msg, ctx).content.config_records["info"]["site"] == "alpha"
    finally:
        stop.set()
        thread.join(10)


def test_a_second_worker_on_the_same_socket_is_refused_and_a_stale_socket_replaced(tmp_path: Path) -> None:
    from fedmedlora.federation import site_worker

    path = tmp_path / "w.sock"
    live = site_worker.bind(path)
    try:
        with pytest.raises(OSError, match="already listening"):
            site_worker.bind(path)
    finally:
        live.close()  # the socket file stays behind, as after a SIGKILL
    assert path.is_socket()
    site_worker.bind(path).close()  # stale: replaced
    (tmp_path / "plain").write_text("x")
    with pytest.raises(OSError, match="is not a socket"):
        site_worker.bind(tmp_path / "plain")
