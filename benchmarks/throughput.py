"""Updates per second of each algorithm's real training step (batch sampling + update).

The buffer is synthetic but shaped like D4RL (hopper: obs 11, act 3; halfcheetah: obs 17, act 6;
1M transitions); the networks, sampling and update are the algorithm file's own, imported as a
module. Each repetition times ``--steps`` updates after ``--warmup`` untimed ones; the report
gives min / median / max over ``--reps`` repetitions per torch thread count and step mode
(``--modes``: ``eager``; ``compile``, the step through torch.compile as the files'
``torch_compile: true`` trains; ``compiled-autograd``, the same with the backward traced too,
``torch._dynamo.config.compiled_autograd``, which the files do not offer; compile time is in the
warm-up). Then one call of the file's ``evaluate`` is timed on ``--eval-episodes`` full-length
episodes. ``--profile`` adds, for CPU rows, what bounds the step: the share of a profiled run of
``--steps`` updates spent in matrix multiplies (torch.profiler self time of
aten::mm/addmm/bmm/baddbmm), the rate those multiplies run at (profiler FLOPs over their self time),
the ceiling median / share (the updates/s the step would reach if everything else took no time), and
the rate of a bare 256x256x256 float32 GEMM through torch (MKL) and numpy (OpenBLAS) per thread
count, the speed a matmul can reach on this machine. Each row also gives the hours of 1M updates.

    python benchmarks/throughput.py --threads 1 2

Writes ``results/throughput.md`` and ``results/throughput.json`` (``--out`` to change). Speed on
a 2-core CPU collapses when anything else runs, so the load average is checked and recorded.
"""
import argparse
import functools
import importlib.util
import itertools
import json
import os
import platform
import statistics
import sys
import time
import timeit
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"hopper": (11, 3), "halfcheetah": (17, 6)}
ENV_ID = {"hopper": "Hopper-v5", "halfcheetah": "HalfCheetah-v5"}
MODES = ("eager", "compile", "compiled-autograd")
# benchmark name -> algorithm file; spot_vae is SPOT's phase 1 (the VAE alone)
ALGORITHM_FILE = {"iac_cpe": "iac_cpe", "td3_bc": "td3_bc", "iql": "iql", "awac": "awac", "spot": "spot",
                  "spot_vae": "spot", "por": "por"}


def make_update(algo: str, mod, obs_dim: int, act_dim: int, cfg, device, compile_: bool = False):
    """(agent, the algorithm's own update step as ``update(*batch)``, the iteration counted as the
    run loop counts it); SPOT's VAE phase is its ``pretrain_update``. ``compile_``: the step through
    ``torch.compile``, as ``torch_compile: true`` trains (``torch._dynamo.config.compiled_autograd``,
    when set by the caller, traces its backward too)."""
    agent = mod.Agent(obs_dim, act_dim, cfg, mod.Normalizer(obs_dim), device)
    wrap = torch.compile if compile_ else (lambda f: f)
    if algo == "spot_vae":
        return agent, wrap(agent.pretrain_update)
    update, it = wrap(agent.update), itertools.count(1)
    return agent, lambda *batch: update(*batch, step=next(it))


def time_evaluation(mod, env: str, agent, device: torch.device, n_episodes: int) -> float:
    """Seconds of one call of the file's ``evaluate`` on ``n_episodes`` full-length (1000-step)
    episodes: a vector env of the gymnasium -v5 env with termination off, so an untrained policy
    costs what a good one does."""
    import gymnasium as gym
    kwargs = {"terminate_when_unhealthy": False} if env == "hopper" else {}
    envs = gym.make_vec(ENV_ID[env], num_envs=n_episodes, vectorization_mode="sync", **kwargs)
    t0 = time.perf_counter()
    mod.evaluate(envs, agent, 0, device)
    return time.perf_counter() - t0


MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


PROFILE_NOTE = ("Matmul share: the fraction of a profiled run of the same updates spent inside matrix "
                "multiplies (CPU rows; torch.profiler self time over wall time); matmul GFLOP/s: the profiler's "
                "FLOP count of those multiplies over their self time; ceiling: median / share, the updates/s if "
                "all other work took no time.")
PROFILE_COLUMNS = [("matmul share", lambda r: "–" if r["matmul_share"] is None else f"{r['matmul_share']:.0%}"),
                   ("matmul GFLOP/s", lambda r: "–" if r["matmul_gflops"] is None else f"{r['matmul_gflops']:.0f}"),
                   ("ceiling updates/s",
                    lambda r: "–" if r["matmul_share"] is None else f"{r['median'] / r['matmul_share']:.0f}")]


def matmul_profile(run_updates, steps: int) -> dict:
    """What the matrix multiplies (``MATMULS``) of ``run_updates(steps)`` (``steps`` updates, on CPU)
    cost: ``matmul_share``, their torch.profiler self time over wall time, and ``matmul_gflops``,
    the profiler's FLOP count of them over that self time. Profiling slows the other, shorter ops
    more, so the share errs low and the ceiling it sets errs high."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        t0 = time.perf_counter()
        run_updates(steps)
        wall_us = (time.perf_counter() - t0) * 1e6
    mm = [e for e in prof.key_averages() if e.key in MATMULS]
    self_us = sum(e.self_cpu_time_total for e in mm)
    return {"matmul_share": self_us / wall_us, "matmul_gflops": sum(e.flops for e in mm) / self_us / 1e3}


def profiled_matmuls(args, device: torch.device, run_updates) -> dict:
    """``matmul_profile`` of ``args.steps`` updates when ``--profile`` is set and the device is the
    CPU, else the same keys set to None."""
    if args.profile and device.type == "cpu":
        return matmul_profile(run_updates, args.steps)
    return {"matmul_share": None, "matmul_gflops": None}


def gemm_gflops(threads: int, n: int = 256, reps: int = 300) -> dict:
    """GFLOP/s of a bare (n x n) @ (n x n) float32 product on ``threads`` CPU threads, through torch
    (its BLAS: MKL in the PyPI wheels) and through numpy (OpenBLAS), median of 5 timings of ``reps``
    products (the first is the warm-up): the rate a matmul of the networks' width reaches here."""
    from threadpoolctl import threadpool_limits
    a, b = np.random.default_rng(0).standard_normal((2, n, n), dtype=np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    torch.set_num_threads(threads)
    with threadpool_limits(threads):
        return {name: 2 * n ** 3 * reps / statistics.median(timeit.repeat(mm, number=reps, repeat=5)) / 1e9
                for name, mm in (("torch", lambda: ta @ tb), ("numpy", lambda: a @ b))}


def gemm_note(threads_list) -> tuple:
    """(meta entry, one report sentence) with ``gemm_gflops`` for each thread count."""
    rates = {t: gemm_gflops(t) for t in threads_list}
    return rates, ("Bare 256x256x256 float32 GEMM on this machine, GFLOP/s: " + "; ".join(
        f"{t} thread{'s' * (t > 1)}: torch {r['torch']:.0f}, numpy (OpenBLAS) {r['numpy']:.0f}"
        for t, r in rates.items()) + ".")


def load(name: str):
    name = ALGORITHM_FILE[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "algorithms" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_arrays(obs_dim: int, act_dim: int, n: int) -> dict:
    """D4RL-shaped random transitions (qlearning_dataset keys), the same for every benchmark."""
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    return {"observations": obs, "actions": rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
            "rewards": rng.normal(size=n).astype(np.float32), "next_observations": obs[::-1].copy(),
            "terminals": (rng.random(n) < 0.001).astype(np.float32)}


def synthetic_buffer(mod, obs_dim: int, act_dim: int, n: int, device: torch.device):
    """The file's own replay buffer holding ``synthetic_arrays``, states normalised as in training."""
    d = synthetic_arrays(obs_dim, act_dim, n)
    data = mod.Dataset(d["observations"], d["actions"], d["rewards"], d["next_observations"], d["terminals"],
                       np.zeros(0), None, None, None, "synthetic", [])
    return mod.ReplayBuffer(data, mod.Normalizer(obs_dim, data.states).to(device), 1.0, 0.0, n, device)


def time_updates(update, buffer, batch_size: int, steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        losses = update(*buffer.sample(batch_size))
    float(next(iter(losses.values())))  # wait for the last step
    return steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algos", nargs="+", default=list(ALGORITHM_FILE), choices=list(ALGORITHM_FILE))
    p.add_argument("--envs", nargs="+", default=["hopper"], choices=list(SHAPES))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    p.add_argument("--transitions", type=int, default=1_000_000)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--modes", nargs="+", default=["eager"], choices=list(MODES),
                   help="step modes to time: eager, compile (torch_compile: true), compiled-autograd (compile + "
                        "the backward traced by torch._dynamo's compiled autograd, not offered by the files)")
    p.add_argument("--eval-episodes", type=int, default=10, help="episodes of the timed evaluation (0: none)")
    p.add_argument("--profile", action="store_true", help="add the matmul share of the step, the rate of its "
                   "matmuls, the ceiling they set and a bare-GEMM reference rate (CPU)")
    p.add_argument("--out", default=str(ROOT / "results" / "throughput"))
    args = p.parse_args()
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        print(f"warning: load average {load_before:.2f}; numbers on a busy machine are not comparable")
    rows = []
    for algo in args.algos:
        mod = load(algo)
        for env in args.envs:
            for dev_name in args.devices:
                device = torch.device(dev_name)
                buffer = synthetic_buffer(mod, *SHAPES[env], args.transitions, device)
                for mode, threads in itertools.product(
                        args.modes, args.threads if device.type == "cpu" else [torch.get_num_threads()]):
                    torch.set_num_threads(threads)
                    torch.manual_seed(0)
                    torch._dynamo.reset()
                    torch._dynamo.config.compiled_autograd = mode == "compiled-autograd"
                    cfg = mod.TrainConfig(dataset_id="synthetic", device=dev_name)
                    agent, update = make_update(algo, mod, *SHAPES[env], cfg, device, mode != "eager")
                    time_updates(update, buffer, cfg.batch_size, args.warmup, device)
                    rates = [time_updates(update, buffer, cfg.batch_size, args.steps, device)
                             for _ in range(args.reps)]
                    row = {"algo": algo, "env": env, "device": dev_name, "threads": threads, "mode": mode,
                           "min": min(rates), "median": statistics.median(rates), "max": max(rates),
                           "eval_s": None if algo == "spot_vae" or not args.eval_episodes else
                           time_evaluation(mod, env, agent, device, args.eval_episodes),
                           **profiled_matmuls(args, device, functools.partial(
                               time_updates, update, buffer, cfg.batch_size, device=device))}
                    rows.append(row)
                    print(f"{algo:8s} {env:11s} {dev_name:4s} {mode} threads={threads}: median "
                          f"{row['median']:.0f} updates/s (min {row['min']:.0f}, max {row['max']:.0f})"
                          + (f", evaluation {row['eval_s']:.1f} s" if row["eval_s"] else "")
                          + (f", matmul share {row['matmul_share']:.0%} at {row['matmul_gflops']:.0f} GFLOP/s"
                             if row["matmul_share"] else ""))
    meta = run_meta(args, load_before, eval_episodes=args.eval_episodes, modes=args.modes)
    header = ("Evaluation: seconds of one `evaluate` call on "
              f"{args.eval_episodes} full-length (1000-step) episodes stepped together in a gymnasium vector env."
              if args.eval_episodes else "Evaluation not timed (`--eval-episodes 0`).")
    columns = [("step", lambda r: r["mode"]), ("hours per 1M updates", lambda r: f"{1e6 / r['median'] / 3600:.1f}"),
               ("evaluation (s)", lambda r: "–" if r["eval_s"] is None else f"{r['eval_s']:.1f}")]
    if args.profile and "cpu" in args.devices:
        meta["gemm_gflops"], gemm = gemm_note(args.threads)
        header += " " + PROFILE_NOTE + " " + gemm
        columns += PROFILE_COLUMNS
    write_report(args, meta, rows, "update", header, columns)


def run_meta(args, load_before: float, **extra) -> dict:
    """What a benchmark table records about its run: command, torch, machine, load, sizes."""
    return {"command": "python " + " ".join(sys.argv), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "load_avg_before": load_before, "load_avg_after": os.getloadavg()[0], "warmup": args.warmup,
            "steps": args.steps, "reps": args.reps, "transitions": args.transitions, **extra}


def write_report(args, meta: dict, rows: list, what: str, note: str, columns=(), footer=()) -> None:
    """``<out>.json`` (meta + rows) and ``<out>.md``: the command, the machine, and one table row per
    (algorithm, buffer, device, threads) with updates/s median/min/max plus ``columns`` (title, fn)."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"Command: `{meta['command']}`  ", f"torch {meta['torch']}, {meta['cores']} cores, load average "
             f"{meta['load_avg_before']:.2f} before / {meta['load_avg_after']:.2f} after; {args.warmup} warm-up "
             f"updates, then {args.reps} x {args.steps} timed updates ({what}, batch sampling included).",
             "", note, "",
             "| algorithm | buffer | device | threads | updates/s median | min | max |"
             + "".join(f" {t} |" for t, _ in columns), "|---|---|---|---|---|---|---|" + "---|" * len(columns)]
    size = f"{args.transitions / 1e6:g}M" if args.transitions >= 1e6 else f"{args.transitions}"
    lines += [f"| {r['algo']} | {r['env']} {size} | {r['device']} | {r['threads']} | {r['median']:.0f} | "
              f"{r['min']:.0f} | {r['max']:.0f} |" + "".join(f" {fn(r)} |" for _, fn in columns) for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines + list(footer)) + "\n")
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
