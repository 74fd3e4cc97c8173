"""Results tables and learning curves from training runs' ``metrics.jsonl``.

Reads every run directory under the given paths (a run directory holds ``config.yaml`` and
``metrics.jsonl``, as every file in ``algorithms/`` writes them), groups runs by algorithm and
dataset, and writes, for ``--out results/<name>``:
  <name>.md   markdown table: per dataset, algorithm and online budget, the normalised score (x 100
              success rate on maze tasks) mean ± std over seeds at the last evaluation ("last") and
              the maximum over evaluations ("best"), as CORL reports them; for runs fine-tuned online
              also the score at the end of the offline phase ("offline end"); the behaviour data's
              mean normalised return (Minari data found locally; for the shipped mazes, x 100 the
              behaviour policy's success rate from the maker's summary.json); the papers' scores where
              the dataset is a D4RL -v2 one (paper_scores.csv: offline, or start -> end of fine-tuning);
              with ``--provenance`` a list of the runs with their git commit, package versions,
              device and dataset checksum (each run's run_info.json)
  <name>.csv  the same, one row per dataset x algorithm x online budget, plain numbers
  <name>.png  learning curves, one panel per dataset, mean ± std band over seeds per algorithm and
              online budget; a dotted line where fine-tuned runs go online

The algorithm of a run is the start of its directory name up to the first '-' (``iac_cpe-...``,
``td3_bc-...``: the default names the algorithm files give), checked against ``algorithms/``.
std is the population std over seeds (numpy's default, as CORL's tables).

Usage: python tools/table.py runs/sweep --out results/hopper_local [--title "..."] [--notes notes.md] [--provenance]
"""

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
ALGORITHMS = sorted(p.stem for p in (ROOT / "algorithms").glob("*.py"))
PAPER_SCORES = ROOT / "results" / "paper_scores.csv"


def find_runs(paths) -> list:
    """Run directories (holding metrics.jsonl and config.yaml) under ``paths``, sorted."""
    runs = set()
    for p in map(Path, paths):
        if not p.exists():
            raise SystemExit(f"error: {p} does not exist")
        runs.update(m.parent for m in ([p / "metrics.jsonl"] if (p / "metrics.jsonl").exists()
                                       else p.rglob("metrics.jsonl")))
    return sorted(r for r in runs if (r / "config.yaml").exists())


def dataset_folder(cfg: dict) -> Path:
    """The run's dataset_path; a relative one is read from the repository root when it is not
    found from the working directory (runs started by tools/sweep.py run from the root)."""
    path = Path(cfg["dataset_path"]).expanduser()
    return path if path.is_absolute() or path.exists() else ROOT / path


def dataset_name(cfg: dict) -> str:
    """The dataset a run trained on: its Minari id, or the D4RL file's stem (hopper-medium-v2)."""
    if cfg.get("dataset_id"):
        return cfg["dataset_id"]
    path = dataset_folder(cfg)
    meta = next((m for m in (path / "data" / "metadata.json", path / "metadata.json") if m.exists()), None)
    return json.loads(meta.read_text())["dataset_id"] if meta else path.stem


def load_run(run: Path) -> dict:
    """One run: algorithm, dataset, seed, online budget, and its evaluations as a DataFrame (step,
    score); pre-training records (no evaluation) are left out."""
    algo = run.name.split("-")[0]
    if algo not in ALGORITHMS:
        raise SystemExit(f"error: run {run} is not named <algorithm>-...; expected one of "
                         f"{', '.join(ALGORITHMS)} before the first '-'")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    evals = pd.DataFrame(rows)
    if evals.empty or evals["normalized_score"].isna().all():
        raise SystemExit(f"error: run {run} has no normalised scores (no evaluation yet, or a "
                         "dataset without reference returns)")
    info = run / "run_info.json"
    return {"algorithm": algo, "dataset": dataset_name(cfg), "seed": cfg["seed"], "run": run, "config": cfg,
            "online": int(cfg.get("online_steps") or 0), "offline": int(cfg.get("max_timesteps") or 0),
            "info": json.loads(info.read_text()) if info.exists() else {},
            "evals": evals.dropna(subset=["normalized_score"])[["step", "normalized_score"]]}


def data_mean_score(cfg: dict):
    """Mean normalised episode return of a Minari dataset found locally; for a maze dataset with the
    maker's summary.json (tools/make_maze_dataset.py) 100 x its behaviour policy's success rate; else None."""
    try:
        import gymnasium as gym
        import minari
        if cfg.get("dataset_path"):
            folder = dataset_folder(cfg)
            ds = minari.MinariDataset(folder / "data" if (folder / "data").is_dir() else folder)
        else:
            ds = minari.load_dataset(cfg["dataset_id"])
    except Exception:  # D4RL files, data not on this machine
        return None
    if isinstance(ds.observation_space, gym.spaces.Dict):
        summary = Path(ds.storage.data_path).parent / "summary.json"
        return 100 * json.loads(summary.read_text())["behaviour_success_rate"] if summary.exists() else None
    meta = ds.storage.metadata
    lo, hi = meta.get("ref_min_score"), meta.get("ref_max_score")
    if lo is None or hi is None:
        return None
    returns = np.array([ep.rewards.sum() for ep in ds.iterate_episodes()])
    return float(100 * (returns.mean() - lo) / (hi - lo))


def paper_score(algo: str, dataset: str, online: bool):
    """The papers' scores (paper_scores.csv) of a D4RL -v2 dataset as one string: "score (source)"
    per source, for a fine-tuned run "start -> end (source)"; None when there is none."""
    if not dataset.endswith("-v2") or not PAPER_SCORES.exists():
        return None
    paper = pd.read_csv(PAPER_SCORES, comment="#")
    hit = paper[(paper.algorithm == algo) & (paper.task == dataset[:-len("-v2")])]
    if not online:
        hit = hit[hit.protocol == "offline"]
        return "; ".join(f"{r.score:.1f} ({r.source})" for r in hit.itertuples()) or None
    ends = {(r.source, r.protocol): r.score for r in hit.itertuples()}
    return "; ".join(f"{ends[s, 'finetune_start']:.1f} → {ends[s, 'finetune_end']:.1f} ({s})"
                     for s in dict.fromkeys(src for src, _ in ends) if (s, "finetune_end") in ends) or None


def summarise(runs: list) -> pd.DataFrame:
    """One row per (dataset, algorithm, online budget): seeds, updates, last/best (and for fine-tuned
    runs offline-end) mean and std over seeds, the data's mean, the papers' scores."""
    rows = []
    key = lambda r: (r["dataset"], r["algorithm"], r["online"])
    for (dataset, algo, online) in sorted({key(r) for r in runs}):
        group = [r for r in runs if key(r) == (dataset, algo, online)]
        last = np.array([r["evals"].normalized_score.iloc[-1] for r in group])
        best = np.array([r["evals"].normalized_score.max() for r in group])
        offline_end = np.array([r["evals"][r["evals"].step <= r["offline"]].normalized_score.iloc[-1]
                                for r in group]) if online else None
        steps = sorted({int(r["evals"].step.iloc[-1]) for r in group})
        rows.append({"dataset": dataset, "algorithm": algo, "online_steps": online, "seeds": len(group),
                     "updates": steps[0] if len(steps) == 1 else "/".join(map(str, steps)),
                     "offline_end_mean": offline_end.mean() if online else None,
                     "offline_end_std": offline_end.std() if online else None,
                     "last_mean": last.mean(), "last_std": last.std(),
                     "best_mean": best.mean(), "best_std": best.std(),
                     "data_mean": data_mean_score(group[0]["config"]),
                     "paper": paper_score(algo, dataset, bool(online))})
    return pd.DataFrame(rows)


def fmt(mean, std=None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def markdown(table: pd.DataFrame, title: str, command: str) -> str:
    online = bool(table.online_steps.any())
    head = "| dataset | algorithm | online steps | seeds | updates | offline end " if online else \
        "| dataset | algorithm | seeds | updates "
    lines = [f"# {title}", "", f"Made by `{command}`.", "", head + "| last | best | data mean | paper |",
             "|---" * (head.count("|") + 4) + "|"]
    for r in table.itertuples():
        updates = f"{r.updates:,}" if isinstance(r.updates, (int, np.integer)) else r.updates
        several = r.seeds > 1  # one seed: its value alone, no std
        cells = [r.dataset, r.algorithm] + ([f"{r.online_steps:,}"] if online else []) + [str(r.seeds), updates]
        if online:
            cells.append(fmt(r.offline_end_mean, r.offline_end_std if several else None) if r.online_steps else "–")
        cells += [fmt(r.last_mean, r.last_std if several else None), fmt(r.best_mean, r.best_std if several else None),
                  fmt(r.data_mean), r.paper if isinstance(r.paper, str) else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "last: normalised score (x 100 success rate on maze tasks) at the final evaluation; best: the "
              "maximum over evaluations" + ("; offline end: at the last evaluation before the online steps" if online
                                            else "") + "; each the mean ± population std over seeds (one seed: its "
              "value alone). data mean: the behaviour data's mean normalised episode return (maze data: x 100 the "
              "success rate of the policy that made it)."]
    return "\n".join(lines) + "\n"


def provenance(runs: list) -> str:
    """A markdown list of the runs and how each was made (its run_info.json)."""
    lines = ["", "## Runs", "", "| run | git commit | versions | device | dataset sha256 |", "|---|---|---|---|---|"]
    for r in runs:
        info = r["info"]
        commit = (info.get("git_commit") or "–")[:10] + (" (local changes)" if info.get("git_dirty") else "")
        versions = ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items()) or "–"
        sha = ", ".join(f"{Path(k).name} {v[:12]}" for k, v in info.get("dataset_sha256", {}).items()) or "–"
        lines.append(f"| {r['run'].name} | {commit} | {versions} | {info.get('device', '–')} | {sha} |")
    return "\n".join(lines) + "\n"


def plot(runs: list, path: Path) -> None:
    """Learning curves: one panel per dataset, mean ± std band over seeds per algorithm and online
    budget; a dotted line at the end of the offline phase of fine-tuned runs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    datasets = sorted({r["dataset"] for r in runs})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for algo, online in sorted({(r["algorithm"], r["online"]) for r in runs if r["dataset"] == dataset}):
            group = [r for r in runs if (r["dataset"], r["algorithm"], r["online"]) == (dataset, algo, online)]
            curves = pd.concat([r["evals"].set_index("step").normalized_score.rename(r["seed"]) for r in group], axis=1)
            mean, std = curves.mean(axis=1), curves.std(axis=1, ddof=0)
            label = f"{algo}{' + online' if online else ''} ({curves.shape[1]} seeds)"
            line, = ax.plot(mean.index, mean, label=label)
            ax.fill_between(mean.index, mean - std, mean + std, alpha=0.2, color=line.get_color())
            if online:
                ax.axvline(group[0]["offline"], color=line.get_color(), linestyle=":", alpha=0.6)
        ax.set(title=dataset, xlabel="updates", ylabel="score (mazes: success rate x 100)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="run directories or folders holding them")
    parser.add_argument("--out", required=True, help="output prefix, e.g. results/hopper_local")
    parser.add_argument("--title", default="Offline RL results")
    parser.add_argument("--notes", help="markdown file appended below the table (commands, remarks)")
    parser.add_argument("--provenance", action="store_true", help="list each run's commit, versions, device, data")
    args = parser.parse_args(argv)
    runs = [load_run(r) for r in find_runs(args.paths)]
    if not runs:
        raise SystemExit(f"error: no run directories (config.yaml + metrics.jsonl) under {args.paths}")
    table = summarise(runs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python tools/table.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    notes = "\n" + Path(args.notes).read_text() if args.notes else ""
    out.with_suffix(".md").write_text(markdown(table, args.title, command) + notes
                                      + (provenance(runs) if args.provenance else ""))
    table.to_csv(out.with_suffix(".csv"), index=False, float_format="%.2f")
    plot(runs, out.with_suffix(".png"))
    print(f"{len(runs)} runs -> {out}.md, {out}.csv, {out}.png")


if __name__ == "__main__":
    main()
