"""Results tables and learning curves from training runs' ``metrics.jsonl``.

Reads every run directory under the given paths (a run directory holds ``config.yaml`` and
``metrics.jsonl``, as every file in ``algorithms/`` writes them), groups runs by algorithm and
dataset, and writes, for ``--out results/<name>``:
  <name>.md   markdown table: per dataset and algorithm, the normalised score mean ± std over seeds
              at the last evaluation ("last") and the maximum over evaluations ("best"), as CORL
              reports them; the behaviour data's mean normalised return (Minari data found
              locally); the paper's score where the dataset is a D4RL -v2 one (paper_scores.csv)
  <name>.csv  the same, one row per dataset x algorithm, plain numbers
  <name>.png  learning curves, one panel per dataset, mean ± std band over seeds per algorithm

The algorithm of a run is the start of its directory name up to the first '-' (``iac_cpe-...``,
``td3_bc-...``: the default names the algorithm files give), checked against ``algorithms/``.
std is the population std over seeds (numpy's default, as CORL's tables).

Usage: python tools/table.py runs/sweep --out results/hopper_local [--title "..."] [--notes notes.md]
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
    """One run: algorithm, dataset, seed and its evaluations as a DataFrame (step, score)."""
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
    return {"algorithm": algo, "dataset": dataset_name(cfg), "seed": cfg["seed"], "run": run,
            "config": cfg, "evals": evals[["step", "normalized_score"]]}


def data_mean_score(cfg: dict):
    """Mean normalised episode return of a Minari dataset found locally, else None."""
    try:
        import minari
        if cfg.get("dataset_path"):
            folder = dataset_folder(cfg)
            ds = minari.MinariDataset(folder / "data" if (folder / "data").is_dir() else folder)
        else:
            ds = minari.load_dataset(cfg["dataset_id"])
    except Exception:  # D4RL files, data not on this machine
        return None
    meta = ds.storage.metadata
    lo, hi = meta.get("ref_min_score"), meta.get("ref_max_score")
    if lo is None or hi is None:
        return None
    returns = np.array([ep.rewards.sum() for ep in ds.iterate_episodes()])
    return float(100 * (returns.mean() - lo) / (hi - lo))


def paper_score(algo: str, dataset: str):
    """(score, source) from paper_scores.csv for a D4RL -v2 dataset, else (None, None)."""
    if not dataset.endswith("-v2") or not PAPER_SCORES.exists():
        return None, None
    paper = pd.read_csv(PAPER_SCORES, comment="#")
    hit = paper[(paper.algorithm == algo) & (paper.task == dataset[:-len("-v2")])]
    return (None, None) if hit.empty else (float(hit.score.iloc[0]), hit.source.iloc[0])


def summarise(runs: list) -> pd.DataFrame:
    """One row per (dataset, algorithm): seeds, updates, last/best mean and std over seeds."""
    rows = []
    key = lambda r: (r["dataset"], r["algorithm"])
    for (dataset, algo) in sorted({key(r) for r in runs}):
        group = [r for r in runs if key(r) == (dataset, algo)]
        last = np.array([r["evals"].normalized_score.iloc[-1] for r in group])
        best = np.array([r["evals"].normalized_score.max() for r in group])
        steps = sorted({int(r["evals"].step.iloc[-1]) for r in group})
        score, source = paper_score(algo, dataset)
        rows.append({"dataset": dataset, "algorithm": algo, "seeds": len(group),
                     "updates": steps[0] if len(steps) == 1 else "/".join(map(str, steps)),
                     "last_mean": last.mean(), "last_std": last.std(),
                     "best_mean": best.mean(), "best_std": best.std(),
                     "data_mean": data_mean_score(group[0]["config"]),
                     "paper": score, "paper_source": source})
    return pd.DataFrame(rows)


def fmt(mean, std=None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def markdown(table: pd.DataFrame, title: str, command: str) -> str:
    lines = [f"# {title}", "", f"Made by `{command}`.", "",
             "| dataset | algorithm | seeds | updates | last | best | data mean | paper |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        updates = f"{r.updates:,}" if isinstance(r.updates, (int, np.integer)) else r.updates
        paper = "–" if r.paper is None or math.isnan(r.paper) else f"{r.paper:.1f} ({r.paper_source})"
        lines.append(f"| {r.dataset} | {r.algorithm} | {r.seeds} | {updates} | "
                     f"{fmt(r.last_mean, r.last_std if r.seeds > 1 else None)} | "
                     f"{fmt(r.best_mean, r.best_std if r.seeds > 1 else None)} | "
                     f"{fmt(r.data_mean)} | {paper} |")
    lines += ["", "last: normalised score at the final evaluation; best: the maximum over evaluations; "
              "each the mean ± population std over seeds (one seed: its value alone). data mean: the "
              "behaviour data's mean normalised episode return."]
    return "\n".join(lines) + "\n"


def plot(runs: list, path: Path) -> None:
    """Learning curves: one panel per dataset, mean ± std band over seeds per algorithm."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    datasets = sorted({r["dataset"] for r in runs})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for algo in sorted({r["algorithm"] for r in runs if r["dataset"] == dataset}):
            curves = pd.concat([r["evals"].set_index("step").normalized_score.rename(r["seed"])
                                for r in runs if (r["dataset"], r["algorithm"]) == (dataset, algo)], axis=1)
            mean, std = curves.mean(axis=1), curves.std(axis=1, ddof=0)
            ax.plot(mean.index, mean, label=f"{algo} ({curves.shape[1]} seeds)")
            ax.fill_between(mean.index, mean - std, mean + std, alpha=0.2)
        ax.set(title=dataset, xlabel="updates", ylabel="normalised score")
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
    args = parser.parse_args(argv)
    runs = [load_run(r) for r in find_runs(args.paths)]
    if not runs:
        raise SystemExit(f"error: no run directories (config.yaml + metrics.jsonl) under {args.paths}")
    table = summarise(runs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python tools/table.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    notes = "\n" + Path(args.notes).read_text() if args.notes else ""
    out.with_suffix(".md").write_text(markdown(table, args.title, command) + notes)
    table.to_csv(out.with_suffix(".csv"), index=False, float_format="%.2f")
    plot(runs, out.with_suffix(".png"))
    print(f"{len(runs)} runs -> {out}.md, {out}.csv, {out}.png")


if __name__ == "__main__":
    main()
