"""Download the D4RL -v2 HDF5 files the configs under configs/*/d4rl/ and configs/*/finetune/antmaze/ read.

Files come from the D4RL authors' server (the URLs D4RL's own ``infos.py`` lists) and are saved as
``<dir>/<env>-<level>-v2.hdf5`` (e.g. ~/.d4rl/datasets/hopper-medium-v2.hdf5) for the MuJoCo
locomotion data and ``<dir>/antmaze-<maze>-v2.hdf5`` (e.g. antmaze-medium-play-v2.hdf5) for the six
AntMaze datasets, the names our configs use. Each download goes to a ``.part`` file, is checked
with h5py (the keys the algorithms read, equal lengths) and only then renamed, so an interrupted
download never looks finished; files already present and valid are skipped. ``--base-url``
points at a mirror with the same file names. Needs network access; without it, it says so and
exits 1.

Usage: python tools/fetch_d4rl.py [--envs hopper antmaze ...] [--levels medium ...] [--mazes umaze ...]
                                 [--dir ~/.d4rl/datasets]
The 15 locomotion files (3 envs x 5 levels) are about 3.4 GB; the 6 AntMaze files were never fetched here
(no network), so their size is not given.
"""

import argparse
import sys
import urllib.error
import urllib.request
from pathlib import Path

import h5py
from tqdm import tqdm

BASE_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl"
ENVS = ["halfcheetah", "hopper", "walker2d", "antmaze"]
LEVELS = ["random", "medium", "medium-replay", "medium-expert", "expert"]
# AntMaze -v2 dataset -> the server's file under ant_maze_v2/ (d4rl/locomotion/__init__.py)
MAZES = {"umaze": "Ant_maze_u-maze_noisy_multistart_False_multigoal_False_sparse_fixed.hdf5",
         "umaze-diverse": "Ant_maze_u-maze_noisy_multistart_True_multigoal_True_sparse_fixed.hdf5",
         "medium-play": "Ant_maze_big-maze_noisy_multistart_True_multigoal_False_sparse_fixed.hdf5",
         "medium-diverse": "Ant_maze_big-maze_noisy_multistart_True_multigoal_True_sparse_fixed.hdf5",
         "large-play": "Ant_maze_hardest-maze_noisy_multistart_True_multigoal_False_sparse_fixed.hdf5",
         "large-diverse": "Ant_maze_hardest-maze_noisy_multistart_True_multigoal_True_sparse_fixed.hdf5"}
KEYS = ["observations", "actions", "rewards", "terminals", "timeouts"]


def remote_name(env: str, level: str) -> str:
    """The server's path below BASE_URL: hopper + medium-replay -> gym_mujoco_v2/hopper_medium_replay-v2.hdf5,
    antmaze + umaze -> ant_maze_v2/Ant_maze_u-maze_..._sparse_fixed.hdf5 (MAZES)."""
    if env == "antmaze":
        return f"ant_maze_v2/{MAZES[level]}"
    return f"gym_mujoco_v2/{env}_{level.replace('-', '_')}-v2.hdf5"


def check_file(path: Path) -> int:
    """Number of transitions of a D4RL file; raises ValueError when a key the algorithms read is
    missing or the arrays' lengths differ (a truncated or wrong file)."""
    with h5py.File(path, "r") as f:
        missing = [k for k in KEYS if k not in f]
        if missing:
            raise ValueError(f"{path} lacks {missing}: not a D4RL -v2 file")
        lengths = {k: len(f[k]) for k in KEYS}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{path}: arrays of different lengths {lengths}")
    return lengths["observations"]


def fetch(url: str, dest: Path, timeout: float) -> int:
    """Download ``url`` to ``dest`` through ``dest.part``, check it, rename; returns transitions."""
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
        n = check_file(part)
    except BaseException:  # a failed or interrupted download leaves nothing behind
        part.unlink(missing_ok=True)
        raise
    part.replace(dest)
    return n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--envs", nargs="+", default=ENVS, choices=ENVS)
    p.add_argument("--levels", nargs="+", default=LEVELS, choices=LEVELS, help="locomotion levels")
    p.add_argument("--mazes", nargs="+", default=list(MAZES), choices=list(MAZES), help="AntMaze datasets")
    p.add_argument("--dir", default="~/.d4rl/datasets", help="where to save the files")
    p.add_argument("--base-url", default=BASE_URL, help="a mirror holding the same file names")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the server")
    args = p.parse_args(argv)

    folder = Path(args.dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    wanted = [(env, level) for env in args.envs for level in (args.mazes if env == "antmaze" else args.levels)]
    failed = []
    for env, level in wanted:
        dest = folder / f"{env}-{level}-v2.hdf5"
        if dest.exists():
            try:
                print(f"{dest}: present ({check_file(dest)} transitions), skipped")
                continue
            except (OSError, ValueError) as e:
                print(f"{dest}: present but unreadable ({e}); downloading again")
        url = f"{args.base_url.rstrip('/')}/{remote_name(env, level)}"
        try:
            print(f"{dest}: {fetch(url, dest, args.timeout)} transitions from {url}")
        except (urllib.error.URLError, OSError, ValueError) as e:
            failed.append(dest.name)
            print(f"error: could not fetch {url}: {e}. This needs network access to the D4RL "
                  f"server (or --base-url of a mirror); nothing was saved as {dest}.", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(wanted)} files missing: "
              f"{', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
