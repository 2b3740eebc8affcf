"""Per-round start-up cost of a site on Flower's Deployment Engine, with the real small model, before and after the
resident site worker.

On the Deployment Engine every message runs the ClientApp in a fresh ``flwr-clientapp`` process (peers.md §2.2).
This script times, in fresh subprocesses and one after the other (never two torch processes at once):

* ``fresh``: the ClientApp process handles the message itself: interpreter start, imports (torch, transformers,
  peft, flwr), loading SmolLM2-135M + LoRA from the cached converted folder, then the handler.
* ``resident``: ``deploy supernode --resident-model``: a long-lived worker (started once, warmed by one message)
  holds the model; the fresh ClientApp process imports flwr and ``fedmedlora.federation.client_app`` only and
  forwards the message over the worker's Unix socket.

The message is a real ``evaluate`` instruction (the initial adapter, scored on the first two documents, one
sentence each, of the PHEE site's dev split, so the handler is short next to the start-up), the same bytes for
both. Start-up overhead = (process start → reply ready) − the handler's own time with the model already loaded
(measured in the same child as a second call). Prints a table and writes JSON.

    python bench/clientapp_startup.py --repeats 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_info, machine_label, print_table, write_json

PREPARE = r"""
import sys, torch
from pathlib import Path
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity
from fedmedlora.benchmark import default_benchmark_dir
from fedmedlora.config import load_config
from fedmedlora.federation.messages import ARRAYS_KEY, CONFIG_KEY, ROUND, to_record
from fedmedlora.federation.site_worker import _encode
from fedmedlora.lm.session import Session

cfg = load_config("demo")
site = "phee"  # one sentence per document: a short handler
session = Session.load(cfg)
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SUPERLINK_NODE_ID, 1
content = RecordDict({ARRAYS_KEY: to_record(session.init_arrays), CONFIG_KEY: ConfigRecord({ROUND: 1})})
msg = Message(content, dst_node_id=7, message_type="evaluate")
msg.metadata.__dict__["_message_id"] = "bench"
import shutil
out = Path(sys.argv[1])
data = out / "data"
shutil.copytree(default_benchmark_dir() / site, data / site)
dev = (data / site / "dev.jsonl").read_text(encoding="utf-8").splitlines()
(data / site / "dev.jsonl").write_text("\n".join(dev[:2]) + "\n", encoding="utf-8")  # a cheap handler
node_config = {"site": site, "data-dir": str(data)}
ctx = Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=cfg.to_flower_run_config())
m, c = _encode(msg, ctx)
(out / "msg.pb").write_bytes(m)
(out / "ctx.pb").write_bytes(c)
print(site, session.model.num_parameters())
"""

CHILD = r"""
import json, sys, time
t0 = time.time()
from pathlib import Path
import fedmedlora.federation.client_app as client_app
from fedmedlora.federation.site_worker import _decode
t1 = time.time()
d, worker = Path(sys.argv[1]), sys.argv[2]
msg, ctx = _decode((d / "msg.pb").read_bytes(), (d / "ctx.pb").read_bytes())
if worker:
    ctx.node_config["site-worker"] = worker
reply = client_app.app(msg, ctx)
t2 = time.time()
rec = {"imports_s": t1 - t0, "first_call_s": t2 - t1, "reply_at": t2, "torch_imported": "torch" in sys.modules}
if not worker:  # the handler's own time with the model loaded: a second call in the same process
    msg, ctx = _decode((d / "msg.pb").read_bytes(), (d / "ctx.pb").read_bytes())
    t3 = time.time()
    client_app.app(msg, ctx)
    rec["warm_call_s"] = time.time() - t3
rec["val_loss"] = float(reply.content.metric_records["metrics"]["val-loss"])
print(json.dumps(rec))
"""


def _child(req: Path, worker: str, env: dict[str, str]) -> dict:
    start = time.time()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(req), worker], check=True, capture_output=True, text=True, env=env
    )
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    rec["process_to_reply_s"] = rec.pop("reply_at") - start
    return rec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every process (set explicitly)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "clientapp_startup.json")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}

    with tempfile.TemporaryDirectory(prefix="fml-startup-") as tmp:
        req = Path(tmp)
        prep = subprocess.run(
            [sys.executable, "-c", PREPARE, str(req)], check=True, capture_output=True, text=True, env=env
        )
        site, n_params = prep.stdout.split()[-2:]
        fresh = [_child(req, "", env) for _ in range(args.repeats)]

        sock = req / "w.sock"
        worker = subprocess.Popen(
            [sys.executable, "-m", "fedmedlora.federation.site_worker", str(sock), str(args.threads)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while not sock.is_socket():
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the site worker did not start")
                time.sleep(0.1)
            warmup = _child(req, str(sock), env)  # the worker loads the model on its first message
            resident = [_child(req, str(sock), env) for _ in range(args.repeats)]
        finally:
            worker.terminate()
            worker.wait(30)

    warm = statistics.median(r["warm_call_s"] for r in fresh)
    assert len({round(r["val_loss"], 6) for r in [*fresh, *resident]}) == 1, "the two paths disagree"
    summary = {
        "handler_s": warm,
        "fresh": {
            "imports_s": statistics.median(r["imports_s"] for r in fresh),
            "process_to_reply_s": statistics.median(r["process_to_reply_s"] for r in fresh),
        },
        "resident": {
            "imports_s": statistics.median(r["imports_s"] for r in resident),
            "process_to_reply_s": statistics.median(r["process_to_reply_s"] for r in resident),
            "first_message_s": warmup["process_to_reply_s"],
        },
    }
    for mode in ("fresh", "resident"):
        summary[mode]["startup_overhead_s"] = summary[mode]["process_to_reply_s"] - warm
    summary["overhead_ratio"] = summary["fresh"]["startup_overhead_s"] / summary["resident"]["startup_overhead_s"]
    from fedmedlora.lm.model import DEFAULT_MODEL_CACHE_NAME, default_cache_dir  # the children are done

    weights = sum(p.stat().st_size for p in (default_cache_dir() / DEFAULT_MODEL_CACHE_NAME).glob("*.safetensors"))
    summary["model_bytes_read_per_round"] = {"fresh": weights, "resident": 0}
    info = machine_info()
    print_table(
        f"Per-round ClientApp start-up, SmolLM2-135M + LoRA (site {site}, median of {args.repeats}, "
        f"{args.threads} torch threads)",
        ["mode", "imports (s)", "start → reply (s)", "handler (s)", "start-up overhead (s)", "torch in ClientApp"],
        [
            [
                mode,
                f"{summary[mode]['imports_s']:.2f}",
                f"{summary[mode]['process_to_reply_s']:.2f}",
                f"{warm:.2f}",
                f"{summary[mode]['startup_overhead_s']:.2f}",
                str(runs[0]["torch_imported"]),
            ]
            for mode, runs in (("fresh", fresh), ("resident", resident))
        ],
        caption=f"{machine_label(info)}; overhead ratio fresh/resident {summary['overhead_ratio']:.1f}×",
    )
    write_json(
        args.out,
        {
            "machine": info,
            "threads": args.threads,
            "model_parameters": int(n_params),
            "fresh": fresh,
            "resident_warmup": warmup,
            "resident": resident,
            "median": summary,
        },
    )


if __name__ == "__main__":
    main()
