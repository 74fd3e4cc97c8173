"""Offline-to-online fine-tuning against more offline training, paired: for each algorithm and
seed, one offline run to ``--offline`` updates, then two continuations of that same checkpoint
(copies of its run directory):
  <algo>-seed<k>-online    --resume with online_steps = --online: env steps with one update each
  <algo>-seed<k>-offline   --resume with max_timesteps = --offline + --online: offline updates only
so both start from the same networks and differ only in what the last ``--online`` updates train
on. Every run is the algorithm file's own CLI with configs/<algo>/finetune/<dataset>.yaml; the
budgets, the evaluation cadence and ``--set`` overrides are passed as flags. ``--jobs`` pairs run
at once (one torch thread each). Finally tools/table.py tabulates and plots the runs.

    python benchmarks/finetune.py --out runs/finetune_local --table results/finetune_local

Re-running continues: a run whose metrics reach its budget is skipped, an interrupted one resumes.
``--summary`` (with the same ``--out``, ``--offline``, ``--online`` and ``--seeds``) trains nothing and
prints the numbers a results page quotes: each arm's mean score over each half of the continuation,
the seed-mean curve of the continuation and the run-minutes spent.
"""
import argparse
import concurrent.futures
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def last_step(run: Path) -> int:
    """The step of the run's last record (0 without one)."""
    path = run / "metrics.jsonl"
    rows = path.read_text().splitlines() if path.exists() else []
    return json.loads(rows[-1])["step"] if rows else 0


def train(args_list: list, log: Path) -> None:
    """One training process, its output appended to ``log``; raises RuntimeError when it fails."""
    cmd = [sys.executable, *args_list]
    with log.open("a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc:
        raise RuntimeError(f"failed ({rc}): {shlex.join(cmd)}; see {log}")


def pair(algo: str, seed: int, args) -> str:
    """The offline run and its two continuations for one algorithm and seed."""
    out, total = Path(args.out).resolve(), args.offline + args.online
    script = f"algorithms/{algo}.py"
    sets = [s.partition("=") for s in args.set]  # key=value for every run, algo.key=value for one algorithm's
    sets = [(k.split(".")[-1], v) for k, _, v in sets if "." not in k or k.split(".")[0] == algo]
    flags = ["--progress_bar", "false", "--torch_threads", "1", "--eval_freq", str(args.eval_freq),
             "--wandb_mode", "disabled"] + [x for k, v in sets for x in (f"--{k}", v)]
    base = out / "base" / f"{algo}-seed{seed}"
    log = out / f"{algo}-seed{seed}.log"
    if last_step(base) < args.offline:
        resume = ["--resume", str(base)] if (base / "checkpoint.pt").exists() else [
            "--config", f"configs/{algo}/finetune/{args.dataset}.yaml", "--seed", str(seed),
            "--output_dir", str(base.parent), "--name", base.name]
        train([script, *resume, "--max_timesteps", str(args.offline), "--online_steps", "0", *flags], log)
    for kind, budget in (("online", ["--online_steps", str(args.online)]),
                         ("offline", ["--max_timesteps", str(total), "--online_steps", "0"])):
        run = out / f"{algo}-seed{seed}-{kind}"
        if last_step(run) >= total:
            continue
        if not (run / "checkpoint.pt").exists():
            shutil.rmtree(run, ignore_errors=True)
            shutil.copytree(base, run, ignore=shutil.ignore_patterns("wandb"))
        train([script, "--resume", str(run), *budget, *flags], log)
    return f"{algo} seed {seed}"


def summary(args) -> str:
    """Markdown for a results page, from the runs' metrics: (1) per algorithm and arm, the mean
    normalised score over the evaluations of each half of the continuation (mean ± population std
    over seeds), and for the online arm the mean return of its training episodes (exploration on);
    (2) the seed-mean score at each evaluation of the continuation; (3) the run-minutes spent (the
    runs' ``elapsed_s``, each continuation counted from the end of its base run)."""
    total, split = args.offline + args.online, args.offline + args.online // 2
    halves = ((args.offline, split), (split, total))
    fmt = lambda v: f"{np.mean(v):.1f} ± {np.std(v):.1f}" if len(v) else "–"  # noqa: E731
    read = lambda run: [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    head = [f"score, steps {a // 1000}k-{b // 1000}k" for a, b in halves]
    means = ["| algorithm | arm | seeds | score at offline end | " + " | ".join(head)
             + " | online episodes' return, 1st half | 2nd half |", "|" + "---|" * (6 + len(head))]
    curves, seconds = [], 0.0
    for algo in args.algorithms:
        for s in args.seeds:
            base = Path(args.out) / "base" / f"{algo}-seed{s}"
            if (base / "metrics.jsonl").exists():
                start = read(base)[-1]["elapsed_s"]
                seconds += start + sum(read(run)[-1]["elapsed_s"] - start for kind in ("offline", "online")
                                       if (run := base.parents[1] / f"{algo}-seed{s}-{kind}").exists())
        for kind in ("offline", "online"):
            runs = [Path(args.out) / f"{algo}-seed{s}-{kind}" for s in args.seeds]
            recs = [[r for r in read(run) if r["step"] >= args.offline] for run in runs if run.exists()]
            if not recs:
                continue
            score = lambda rs, a, b: [r["normalized_score"] for r in rs if a < r["step"] <= b]  # noqa: E731
            start = [rs[0]["normalized_score"] for rs in recs]
            cells = [fmt([np.mean(score(rs, a, b)) for rs in recs]) for a, b in halves]
            online = [fmt([np.mean([r["online_return_mean"] for r in rs if a < r["step"] <= b
                                    and r.get("online_return_mean") is not None]) for rs in recs])
                      if kind == "online" else "–" for a, b in halves]
            means.append(f"| {algo} | {kind} | {len(recs)} | {fmt(start)} | " + " | ".join(cells + online) + " |")
            steps = [r["step"] for r in recs[0]]
            if not curves:
                curves = ["| algorithm | arm | " + " | ".join(f"{x / 1000:g}k" for x in steps) + " |",
                          "|" + "---|" * (2 + len(steps))]
            curves.append(f"| {algo} | {'+ online' if kind == 'online' else 'offline'} | " + " | ".join(
                f"{np.mean([rs[i]['normalized_score'] for rs in recs]):.0f}" for i in range(len(steps))) + " |")
    return "\n".join(means + ["", "Seed-mean score at each evaluation of the continuation:", ""] + curves
                     + ["", f"Run-minutes: {seconds / 60:.1f}"]) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--algorithms", nargs="+", default=["iql", "awac", "iac_cpe", "spot"])
    p.add_argument("--dataset", default="local/hopper/medium", help="configs/<algo>/finetune/<dataset>.yaml")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--offline", type=int, default=20_000, help="offline updates before the two continuations")
    p.add_argument("--online", type=int, default=20_000, help="env steps (= updates) of each continuation")
    p.add_argument("--eval-freq", type=int, default=2000)
    p.add_argument("--set", action="append", default=[], metavar="[ALGO.]KEY=VALUE",
                   help="a config override for every run, or for one algorithm's runs")
    p.add_argument("--jobs", type=int, default=2, help="pairs trained at once")
    p.add_argument("--out", default="runs/finetune")
    p.add_argument("--table", default=None, help="write tools/table.py's table and curves here when done")
    p.add_argument("--summary", action="store_true",
                   help="train nothing: print the runs' scores per half of the continuation, curves, run-minutes")
    args = p.parse_args(argv)
    if args.summary:
        print(summary(args), end="")
        return
    Path(args.out).mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "benchmarks/finetune.py", *(argv or sys.argv[1:])])
    with (Path(args.out) / "commands.txt").open("a") as f:
        f.write(command + "\n")
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(pair, a, s, args) for s in args.seeds for a in args.algorithms]
        for f in concurrent.futures.as_completed(futures):
            print(f"done: {f.result()}", flush=True)
    if args.table:
        runs = sorted(str(r) for r in Path(args.out).glob("*-seed*-o*line") if r.is_dir())
        subprocess.run([sys.executable, "tools/table.py", *runs, "--out", args.table], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
