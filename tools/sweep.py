"""Run a grid of training runs (algorithm x config x seed) as Ray tasks, then tabulate them.

Every run is its own process, exactly as a user would start it by hand:
    python algorithms/<algo>.py --config configs/<algo>/<config>.yaml --seed <k>
        --output_dir <out> --name <algo>-<config with '/' as '_'>-seed<k> --progress_bar false
        --torch_threads <cpus per run> [--<key> <value> for each --set]
and writes its log to <out>/<name>.log. By default the sweep starts a local Ray instance on this
machine (``--num-cpus`` caps how many cores it may use); ``--address`` joins an existing Ray cluster
instead (``auto`` or ``ray://host:10001``), with nothing else changed. ``--cpus-per-run`` and
``--gpus-per-run`` (fractions allowed: 0.25 packs four runs on one GPU) are the Ray resources of
each run. On a cluster, every node needs this repository at the same path.

Re-running the same command continues the sweep: a run whose ``sweep.json`` says finished is
skipped, a run with a checkpoint but no ``sweep.json`` (interrupted) is resumed from it. A run that
fails is reported with the tail of its log and retried once (resumed if it left a checkpoint); a run
that fails twice is listed at the end and does not stop the others. Ctrl-C stops the runs in flight
(each keeps its last checkpoint) and leaves every finished run as it is.

Usage (the Hopper sweep in results/hopper_local.md):
    python tools/sweep.py --algorithms iac_cpe td3_bc iql awac spot por \
        --configs local/hopper/medium-replay local/hopper/medium --seeds 0 1 2 \
        --set max_timesteps=10000 --set eval_freq=2000 --set spot.vae_steps=10000 \
        --out runs/hopper_local --table results/hopper_local
Exit status: 0 when every run finished, 1 when any failed, 2 on a bad grid.
"""

import argparse
import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TAIL_LINES = 25


class GridError(ValueError):
    """A sweep grid naming a missing algorithm file or config, or a malformed --set."""


def parse_sets(items, algorithms) -> dict:
    """``--set key=value`` (every run) and ``--set algo.key=value`` (one algorithm's runs) ->
    {algo: {key: value}}. Raises GridError naming the bad item."""
    per_algo = {a: {} for a in algorithms}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise GridError(f"--set {item!r}: expected key=value or algorithm.key=value")
        algo, dot, field = key.partition(".")
        if dot and not (ROOT / "algorithms" / f"{algo}.py").exists():
            raise GridError(f"--set {item!r}: no algorithms/{algo}.py")
        if dot and algo not in per_algo:
            continue  # an override for an algorithm not in this sweep (e.g. spot.vae_steps)
        targets = [algo] if dot else algorithms
        for a in targets:
            per_algo[a][field if dot else key] = value
    return per_algo


def expand_grid(args) -> list:
    """The runs of the sweep: list of dicts (algo, config, seed, name, run_dir, overrides).
    Raises GridError when an algorithm file or a config does not exist."""
    overrides = parse_sets(args.set, args.algorithms)
    runs = []
    for algo in args.algorithms:
        if not (ROOT / "algorithms" / f"{algo}.py").exists():
            raise GridError(f"--algorithms {algo}: no algorithms/{algo}.py")
        for config in args.configs:
            path = ROOT / "configs" / algo / f"{config}.yaml"
            if not path.exists():
                raise GridError(f"--configs {config}: no {path.relative_to(ROOT)}")
            for seed in args.seeds:
                name = f"{algo}-{config.replace('/', '_')}-seed{seed}"
                runs.append(dict(algo=algo, config=str(path), seed=seed, name=name,
                                 run_dir=Path(args.out).resolve() / name, overrides=overrides[algo]))
    return runs


def command(run: dict, cpus_per_run: float, resume: bool) -> list:
    """The training command of one run (a fresh start, or ``--resume`` of its run directory)."""
    cmd = [sys.executable, str(ROOT / "algorithms" / f"{run['algo']}.py")]
    if resume:
        cmd += ["--resume", str(run["run_dir"])]
    else:
        cmd += ["--config", run["config"], "--seed", str(run["seed"]),
                "--output_dir", str(run["run_dir"].parent), "--name", run["name"]]
    cmd += ["--progress_bar", "false"]
    fields = {"torch_threads": str(max(1, int(cpus_per_run))), **run["overrides"]}
    for key, value in fields.items():
        cmd += [f"--{key}", value]
    return cmd


def _stop_with_parent() -> None:
    """In the training process (Linux): SIGINT it when the Ray worker that started it dies, which
    is how the driver's Ctrl-C reaches it (ray.cancel(force=True) kills the worker)."""
    ctypes.CDLL(None).prctl(1, signal.SIGINT)  # 1 = PR_SET_PDEATHSIG


def run_process(cmd: list, log_path: str) -> dict:
    """Run one training process with its output appended to ``log_path``; returns rc, seconds and
    the log's last lines. When the driver's Ctrl-C force-cancels this task, the worker dies and
    the process gets SIGINT (``_stop_with_parent``), keeping its last checkpoint."""
    start = time.time()
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "WANDB_SILENT": "true"}, preexec_fn=_stop_with_parent)
        rc = proc.wait()
    tail = Path(log_path).read_text(errors="replace").splitlines()[-TAIL_LINES:]
    return {"rc": rc, "seconds": time.time() - start, "tail": tail}


def state(run: dict) -> str:
    """'finished' (sweep.json says so), 'interrupted' (a checkpoint, no sweep.json) or 'new'."""
    marker = run["run_dir"] / "sweep.json"
    if marker.exists() and json.loads(marker.read_text()).get("status") == "finished":
        return "finished"
    return "interrupted" if (run["run_dir"] / "checkpoint.pt").exists() else "new"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algorithms", nargs="+", required=True, help="file stems under algorithms/")
    p.add_argument("--configs", nargs="+", required=True,
                   help="config paths under configs/<algo>/ without .yaml, e.g. local/hopper/medium")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--set", action="append", default=[], metavar="[ALGO.]KEY=VALUE",
                   help="config override for every run, or for one algorithm's runs")
    p.add_argument("--out", default="runs/sweep", help="directory of the run directories")
    p.add_argument("--table", default=None, help="when done, write tools/table.py output here")
    p.add_argument("--title", default=None, help="title of the table (with --table)")
    p.add_argument("--address", default=None, help="join this Ray cluster instead of starting one")
    p.add_argument("--num-cpus", type=int, default=None, help="local Ray: cores to use (default all)")
    p.add_argument("--cpus-per-run", type=float, default=1.0)
    p.add_argument("--gpus-per-run", type=float, default=0.0)
    args = p.parse_args(argv)

    try:
        runs = expand_grid(args)
    except GridError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep_command.txt").write_text(shlex.join(["python", "tools/sweep.py"] + list(
        sys.argv[1:] if argv is None else argv)) + "\n")
    todo = [r for r in runs if state(r) != "finished"]
    print(f"sweep: {len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to run")

    import ray
    from tqdm import tqdm

    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False,
                 object_store_memory=100 * 2**20)
    remote = ray.remote(num_cpus=args.cpus_per_run, num_gpus=args.gpus_per_run,
                        max_retries=0)(run_process)

    def submit(run, attempt):
        resume = state(run) == "interrupted"
        run["run_dir"].mkdir(parents=True, exist_ok=True)
        ref = remote.remote(command(run, args.cpus_per_run, resume), str(out / f"{run['name']}.log"))
        return ref, (run, attempt)

    pending = dict(submit(r, 1) for r in todo)
    failed = []
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc="sweep", unit="run")
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)  # timeout: Ctrl-C gets through
            if not ready:
                continue
            [ref] = ready
            run, attempt = pending.pop(ref)
            res = ray.get(ref)
            if res["rc"] == 0:
                (run["run_dir"] / "sweep.json").write_text(json.dumps(
                    {"status": "finished", "seconds": round(res["seconds"], 1)}) + "\n")
                bar.write(f"finished {run['name']} in {res['seconds'] / 60:.1f} min")
                bar.update(1)
                continue
            bar.write(f"FAILED {run['name']} (exit {res['rc']}, attempt {attempt}); log tail:\n  "
                      + "\n  ".join(res["tail"]))
            if attempt == 1:
                bar.write(f"retrying {run['name']}")
                pending.update([submit(run, 2)])
            else:
                failed.append(run["name"])
                bar.update(1)
    except KeyboardInterrupt:
        bar.write(f"interrupted: stopping {len(pending)} runs in flight (their checkpoints are kept; "
                  "run the same command to resume them)")
        for ref in pending:
            ray.cancel(ref, force=True)
        ray.wait(list(pending), num_returns=len(pending), timeout=60)
        ray.shutdown()
        return 130
    bar.close()
    ray.shutdown()

    if failed:
        print(f"{len(failed)} runs failed twice (logs in {out}/<name>.log): {', '.join(failed)}")
    if args.table:
        table = [sys.executable, str(ROOT / "tools" / "table.py"), str(out), "--out", args.table]
        table += ["--title", args.title] if args.title else []
        subprocess.run(table, check=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
