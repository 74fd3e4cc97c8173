"""Write every YAML under configs/: one per algorithm x dataset, each holding every field of the
algorithm file's TrainConfig (its defaults, the dataset, and the per-dataset values below, each
with its source), so a config file alone says how a result was made.

    python tools/make_configs.py           # (re)write configs/
    python tools/make_configs.py --check   # exit 1 and name the files that differ from what it writes

Suites (folder under configs/<algorithm>/ -> data):
  local/hopper/<level>   the shipped Minari datasets, datasets/local/hopper/<level>-v0
  minari/<env>/<level>   Minari's mujoco/<env>/<level>-v0 (downloaded when missing: download true)
  d4rl/<env>/<level>     D4RL -v2 files, ~/.d4rl/datasets/<env>-<level>-v2.hdf5 (tools/fetch_d4rl.py)
  local/pointmaze/<maze> the shipped PointMaze datasets, datasets/local/pointmaze/<maze>-v0
  minari/antmaze/<name>  Minari's D4RL/antmaze/<name>-v1 (downloaded when missing)
  d4rl/antmaze/<name>    D4RL AntMaze -v2 files, ~/.d4rl/datasets/antmaze-<name>-v2.hdf5
  finetune/antmaze/<name>, finetune/local/{hopper,pointmaze}/<dataset>   offline then online
                         fine-tuning (the four files that fine-tune: spot, iql, awac, iac_cpe) on D4RL
                         AntMaze files and the shipped Hopper medium, medium-replay and PointMaze data
                         (finetune_values)
The maze values are the official AntMaze ones per algorithm (maze_values); the shipped PointMaze
data take those of the AntMaze dataset nearest in kind: umaze -> antmaze umaze, medium (goals drawn
anew all the time, like the "diverse" data) -> antmaze medium-diverse.
"""
import argparse
import dataclasses
import importlib.util
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ALGORITHMS = ["iac_cpe", "td3_bc", "iql", "awac", "spot", "por"]
ONLINE = ["iac_cpe", "iql", "awac", "spot"]  # the files that fine-tune online
LOCOMOTION = ["halfcheetah", "hopper", "walker2d"]
D4RL_LEVELS = ["random", "medium", "medium-replay", "medium-expert", "expert"]
MINARI_LEVELS = ["simple", "medium", "expert"]
ANTMAZE = ["umaze", "umaze-diverse", "medium-play", "medium-diverse", "large-play", "large-diverse"]
POINTMAZE = {"umaze": "umaze", "medium": "medium-diverse"}  # shipped PointMaze -> the AntMaze values it takes

# SPOT lambda, official configs/offline/<env>-<level>-v2.yml; random and expert (never run by the
# authors) take the env's medium and medium-expert values; Minari simple takes the medium value.
SPOT_LAMBDA = {"halfcheetah": (0.05, 0.05, 1.0), "hopper": (0.1, 0.1, 0.2), "walker2d": (0.2, 0.2, 0.5)}
# POR, official run_mujoco_por.sh: hopper runs por_q; the levels it lacks take the nearest setting
# (algorithms/por.py docstring); halfcheetah and walker2d run the file's defaults (por_r).
POR_HOPPER = {"low": dict(guide="por_q", expectile=0.7, alpha=50.0, layer_norm=False),  # medium(-replay)
              "high": dict(guide="por_q", expectile=0.7, alpha=5.0)}  # medium-expert


def level_values(algo: str, env: str, level: str) -> dict:
    """The per-dataset values of ``algo`` on a locomotion dataset (any suite)."""
    out = {"n_episodes": 10}  # the D4RL protocol: 10 evaluation episodes
    if algo == "spot":
        out["normalize"] = True  # official on locomotion (the file's null means: by task)
    if algo == "awac":
        out["eval_freq"] = 1000  # CORL evaluates AWAC every 1000 steps
    if algo == "spot":
        medium, _, high = SPOT_LAMBDA[env]
        out["lambda_"] = {"random": medium, "simple": medium, "medium": medium, "medium-replay": SPOT_LAMBDA[env][1],
                          "medium-expert": high, "expert": high}[level]
    if algo == "por" and env == "hopper":
        out.update(POR_HOPPER["high" if level in ("medium-expert", "expert") else "low"])
    return out


# SPOT lambda on AntMaze, official configs/offline/antmaze-<name>-v2.yml
SPOT_ANTMAZE_LAMBDA = {"umaze": 0.25, "umaze-diverse": 0.25, "medium-play": 0.05, "medium-diverse": 0.025,
                       "large-play": 0.025, "large-diverse": 0.025}


def maze_values(algo: str, name: str) -> dict:
    """The per-dataset values of ``algo`` on AntMaze dataset ``name`` (and the PointMaze data that
    take its values). Sources: IQL configs/antmaze_config.py and its README command; SPOT
    configs/offline/antmaze-*.yml; POR run_antmaze_por.sh; CORL configs/offline/{td3_bc,awac}/antmaze;
    IAC-CPE has no AntMaze numbers: ours, by analogy (beta 10 = IQL's AntMaze temperature and CORL
    AWAC's 1 / awac_lambda, SPOT's evaluation cadence)."""
    return {
        "iac_cpe": dict(beta=10.0, n_episodes=100, eval_freq=50000),
        "td3_bc": dict(n_episodes=100, eval_freq=5000),
        "iql": dict(expectile=0.9, beta=10.0, n_episodes=100, eval_freq=100000),
        "awac": dict(awac_lambda=0.1, n_episodes=100, eval_freq=1000),
        "spot": dict(lambda_=SPOT_ANTMAZE_LAMBDA[name], actor_lr=1e-4, actor_dropout=0.0, actor_init_w=0.001,
                     critic_init_w=0.003, normalize=False, n_episodes=100, eval_freq=50000),
        "por": dict(guide="por_r", expectile=0.9, alpha=10.0, layer_norm=False,
                    policy_lr=1e-3 if name.startswith("umaze") else 1e-4, n_episodes=50, eval_freq=10000),
    }[algo]


def finetune_values(algo: str, name: str) -> dict:
    """The online settings of ``algo`` for fine-tuning on AntMaze dataset ``name`` (or Hopper data,
    name "hopper"): 1M offline updates, then 1M env steps with one update each, as the official
    fine-tuning runs (IQL train_finetune.py, SPOT main_finetune.py, CORL configs/finetune/*)."""
    out = {"max_timesteps": 1_000_000, "online_steps": 1_000_000}
    if algo == "spot":  # configs/online_finetune/antmaze-*.yml: lambda cooling; 0.995 on the large mazes
        out.update(lambd_cool=True, lambd_end=0.2, online_discount=0.995 if name.startswith("large") else None)
    if algo == "iql":  # configs/antmaze_finetune_config.py: no decay of the actor's learning rate
        out.update(actor_lr_schedule="constant")
    if algo == "awac" and name != "hopper":
        out.update(eval_freq=50000)  # CORL configs/finetune/awac/antmaze
    return out


def suites() -> dict:
    """{relative path under configs/<algo>/: (data fields, env, level)} for every dataset; mazes have
    env "antmaze" and the AntMaze dataset whose values they take as level."""
    out = {}
    for level in D4RL_LEVELS:
        out[f"local/hopper/{level}"] = ({"dataset_path": f"datasets/local/hopper/{level}-v0"}, "hopper", level)
    for env in LOCOMOTION:
        for level in MINARI_LEVELS:
            out[f"minari/{env}/{level}"] = ({"dataset_id": f"mujoco/{env}/{level}-v0", "download": True}, env, level)
        for level in D4RL_LEVELS:
            out[f"d4rl/{env}/{level}"] = ({"dataset_path": f"~/.d4rl/datasets/{env}-{level}-v2.hdf5"}, env, level)
    for maze, like in POINTMAZE.items():
        out[f"local/pointmaze/{maze}"] = ({"dataset_path": f"datasets/local/pointmaze/{maze}-v0"}, "antmaze", like)
    for name in ANTMAZE:
        out[f"minari/antmaze/{name}"] = ({"dataset_id": f"D4RL/antmaze/{name}-v1", "download": True}, "antmaze", name)
        out[f"d4rl/antmaze/{name}"] = ({"dataset_path": f"~/.d4rl/datasets/antmaze-{name}-v2.hdf5"}, "antmaze", name)
    return out


def load_config_class(algo: str):
    spec = importlib.util.spec_from_file_location(algo, ROOT / "algorithms" / f"{algo}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TrainConfig


def configs() -> dict:
    """{path: YAML text} of every config file."""
    out = {}
    for algo in ALGORITHMS:
        config_class = load_config_class(algo)
        defaults = {f.name: f.default for f in dataclasses.fields(config_class)}
        for rel, (data, env, level) in suites().items():
            per_dataset = maze_values(algo, level) if env == "antmaze" else level_values(algo, env, level)
            values = {**defaults, **data, **per_dataset}
            out[ROOT / "configs" / algo / f"{rel}.yaml"] = yaml.safe_dump(values, sort_keys=False)
        if algo in ONLINE:
            for name in ANTMAZE:
                values = {**defaults, "dataset_path": f"~/.d4rl/datasets/antmaze-{name}-v2.hdf5",
                          **maze_values(algo, name), **finetune_values(algo, name)}
                path = ROOT / "configs" / algo / "finetune" / "antmaze" / f"{name}.yaml"
                out[path] = yaml.safe_dump(values, sort_keys=False)
            for level in ("medium", "medium-replay"):
                values = {**defaults, "dataset_path": f"datasets/local/hopper/{level}-v0",
                          **level_values(algo, "hopper", level), **finetune_values(algo, "hopper")}
                out[ROOT / "configs" / algo / "finetune" / "local" / "hopper" / f"{level}.yaml"] = \
                    yaml.safe_dump(values, sort_keys=False)
            for maze, like in POINTMAZE.items():
                values = {**defaults, "dataset_path": f"datasets/local/pointmaze/{maze}-v0",
                          **maze_values(algo, like), **finetune_values(algo, like)}
                out[ROOT / "configs" / algo / "finetune" / "local" / "pointmaze" / f"{maze}.yaml"] = \
                    yaml.safe_dump(values, sort_keys=False)
    # the README's first command: IAC-CPE on the shipped Hopper medium data, short
    quick = yaml.safe_load(out[ROOT / "configs/iac_cpe/local/hopper/medium.yaml"])
    out[ROOT / "configs/iac_cpe/quickstart.yaml"] = yaml.safe_dump({**quick, "max_timesteps": 10000, "eval_freq": 2500},
                                                                   sort_keys=False)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only report the files that differ")
    args = p.parse_args(argv)
    wanted = configs()
    stale = [path for path, text in wanted.items() if not path.exists() or path.read_text() != text]
    extra = sorted(set((ROOT / "configs").rglob("*.yaml")) - set(wanted))
    if args.check:
        if stale or extra:
            sys.exit("configs differ from tools/make_configs.py (run it): "
                     + ", ".join(str(p.relative_to(ROOT)) for p in stale + extra))
        print(f"{len(wanted)} configs up to date")
        return
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(wanted[path])
    for path in extra:
        path.unlink()
    print(f"wrote {len(stale)} of {len(wanted)} configs, removed {len(extra)}")


if __name__ == "__main__":
    main()
