"""Round time on the real Deployment Engine against the in-process simulation at equal work.

Runs the same federation three ways, one after the other: ``sim`` (in-process, sites in turn), ``fresh`` (loopback
``LoopbackDeployment``: TLS SuperLink with node authentication, one SuperNode per site, a fresh ClientApp process
per message) and ``resident`` (the same with ``--resident-model`` site workers). Per-round seconds come from the
run folder's ``rounds.jsonl``; round 1 of ``resident`` includes each worker's one model load, so the steady state is
the median of rounds ≥ 2.

    python bench/deployment_round.py --model smollm2 --rounds 3           # the real model, the 4 demo sites
    python bench/deployment_round.py --model tiny --sites 3,10 --modes fresh,resident --out \
        bench/results/deployment_scale.json                                # scale: 10 SuperNodes, tiny model

Threads: the simulation runs with ``--threads`` torch threads; every site process of a deployment with
``--site-threads`` (default 1, so N sites on a 2-core machine do not oversubscribe it). On one machine the sites
of a deployment share its cores; at hospitals each has its own machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # tinymodel: the tiny random Llama world of the tests
from _common import RESULTS_DIR, machine_info, machine_label, print_table, write_json  # noqa: E402


def _rounds(run_dir: Path) -> list[dict]:
    lines = (run_dir / "rounds.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in (json.loads(x) for x in lines if x.strip()) if r["round"] >= 1]


def _config(model: str, world: Path | None, sites: list[str], rounds: int):
    from fedmedlora.config import load_config

    common = [f"federation.rounds={rounds}", f"federation.min_sites={len(sites)}", "federation.round_timeout_s=1800"]
    if model == "tiny":
        from tinymodel import tiny_world_config

        return tiny_world_config(world, "bench", *common)
    return load_config(
        "demo",
        overrides=[*common, "train.max_steps=2", "federation.round_eval_sentences=0", "name=bench"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="smollm2")
    parser.add_argument("--sites", default="4", help="comma-separated site counts (tiny model: any; smollm2: ≤4)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="sim,fresh,resident")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the simulation")
    parser.add_argument("--site-threads", type=int, default=1, help="torch threads of each deployment site process")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "deployment_round.json")
    parser.add_argument(
        "--superlink-state",
        choices=["file", "memory"],
        default="file",
        help="SuperLink state: SQLite file (survives restarts) or Flower's in-memory state",
    )
    parser.add_argument(
        "--tiny-layers", type=int, default=2, help="layers of the tiny model (30: SmolLM2's 240 LoRA tensors)"
    )
    parser.add_argument(
        "--wire",
        choices=["packed", "unpacked"],
        default="packed",
        help="adapter layout on the wire: packed (2 Flower objects) or one Array per tensor (Flower's default)",
    )
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep (logs, run folders)")
    args = parser.parse_args()

    import torch

    from fedmedlora.benchmark import default_benchmark_dir
    from fedmedlora.deploy.loopback import LoopbackDeployment
    from fedmedlora.federation.simulation import run_federation

    torch.set_num_threads(args.threads)
    from fedmedlora.federation.messages import UNPACKED_ENV

    os.environ[UNPACKED_ENV] = "1" if args.wire == "unpacked" else "0"  # inherited by every site process
    modes = args.modes.split(",")
    results = []
    with tempfile.TemporaryDirectory(prefix="fml-deploy-bench-") as tmp:
        root = args.keep.resolve() if args.keep else Path(tmp)
        for n in (int(x) for x in args.sites.split(",")):
            if args.model == "tiny":
                from tinymodel import build_tiny_world

                sites = [f"site{i:02d}" for i in range(n)]
                world = build_tiny_world(
                    root / f"world{n}", sites, [2 + i % 3 for i in range(n)], layers=args.tiny_layers
                )
                data = world / "bench"
            else:
                world, data = None, default_benchmark_dir()
                sites = sorted(p.name for p in data.iterdir() if p.is_dir() and not p.name.startswith("_"))[:n]
            cfg = _config(args.model, world, sites, args.rounds)
            for mode in modes:
                run_dir = root / f"{mode}-{n}"
                started = time.perf_counter()
                if mode == "sim":
                    run_federation(cfg, run_dir, data_dir=data, sites=sites)
                else:
                    dep = LoopbackDeployment(
                        root / f"dep-{mode}-{n}",
                        data,
                        sites,
                        resident_model=mode == "resident",
                        worker_threads=args.site_threads,
                        start_timeout=300,
                        superlink_state=args.superlink_state,
                    )
                    with dep:
                        dep.run(cfg, run_dir, timeout=3600)
                total = time.perf_counter() - started
                per_round = [r["seconds"] for r in _rounds(run_dir)]
                rec = {
                    "sites": n,
                    "mode": mode,
                    "round_seconds": per_round,
                    "steady_round_s": statistics.median(per_round[1:] or per_round),
                    "first_round_s": per_round[0],
                    "total_s": total,
                }
                results.append(rec)
                print(json.dumps(rec), flush=True)

    sim = {r["sites"]: r["steady_round_s"] for r in results if r["mode"] == "sim"}
    rows = []
    for r in results:
        ratio = r["steady_round_s"] / sim[r["sites"]] if r["sites"] in sim else None
        r["vs_sim"] = ratio
        rows.append(
            [
                str(r["sites"]),
                r["mode"],
                f"{r['first_round_s']:.1f}",
                f"{r['steady_round_s']:.1f}",
                "—" if ratio is None else f"{ratio:.2f}×",
            ]
        )
    info = machine_info()
    print_table(
        f"Round time, {args.model}, {args.rounds} rounds (sim {args.threads} threads, sites {args.site_threads} each)",
        ["sites", "mode", "round 1 (s)", "rounds ≥2 median (s)", "vs simulation"],
        rows,
        caption=machine_label(info),
    )
    write_json(
        args.out,
        {
            "machine": info,
            "model": args.model,
            "rounds": args.rounds,
            "threads": args.threads,
            "site_threads": args.site_threads,
            "omp_env": os.environ.get("OMP_NUM_THREADS"),
            "superlink_state": args.superlink_state,
            "wire": args.wire,
            "tiny_layers": args.tiny_layers if args.model == "tiny" else None,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
