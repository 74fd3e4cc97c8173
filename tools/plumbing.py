"""The shared plumbing of algorithms/*.py: check that every file carries the same copy, copy it,
count lines.

Each algorithm file is self-contained (a user copies one file), so the plumbing every file needs
(data, replay buffer, evaluation, checkpoints, run loop, CLI) is repeated in all six. Two parts of
each file must read the same everywhere:
  - the shared config fields: from the ``# ---- data, evaluation and run`` line of ``TrainConfig``
    to the end of the class;
  - the shared block: from the ``SHARED PLUMBING`` banner to the end of the file.
Everything else (the docstring, the algorithm's config fields, check_config, preprocessing,
the networks, the losses and Agent) is the algorithm's own.

    python tools/plumbing.py              # exit 1 and name the files whose copy drifted
    python tools/plumbing.py --write      # copy algorithms/iac_cpe.py's parts into the others
    python tools/plumbing.py --count      # lines per file: algorithm part vs shared plumbing
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALGORITHMS = ROOT / "algorithms"
REFERENCE = "iac_cpe"
BANNER = "# " + "=" * 94 + "\n# SHARED PLUMBING"
FIELDS = "    # ---- data, evaluation and run: the same fields in every algorithm file\n"


def split(text: str, name: str = "?") -> dict:
    """A file's text -> {"fields": shared config fields, "block": shared block, "algorithm": the
    rest}. Raises ValueError naming the file when a marker is missing."""
    for marker in (BANNER, FIELDS):
        if marker not in text:
            raise ValueError(f"algorithms/{name}.py lacks the marker {marker.splitlines()[-1].strip()!r}")
    block_at, fields_at = text.index(BANNER), text.index(FIELDS)
    fields_end = text.index("\n\n\n", fields_at) + 1
    return {"fields": text[fields_at:fields_end], "block": text[block_at:],
            "algorithm": text[:fields_at] + text[fields_end:block_at]}


def files() -> dict:
    return {p.stem: p.read_text() for p in sorted(ALGORITHMS.glob("*.py"))}


def drifted() -> list:
    """Names of the algorithm files whose shared parts differ from the reference file's."""
    texts = files()
    ref = split(texts[REFERENCE], REFERENCE)
    return [name for name, text in texts.items()
            if any(split(text, name)[k] != ref[k] for k in ("fields", "block"))]


def write() -> list:
    """Copy the reference file's shared parts into every other file; returns the files changed."""
    texts = files()
    ref = split(texts[REFERENCE], REFERENCE)
    changed = []
    for name, text in texts.items():
        parts = split(text, name)
        new = text.replace(parts["fields"], ref["fields"], 1)
        new = new[:new.index(BANNER)] + ref["block"]
        if new != text:
            (ALGORITHMS / f"{name}.py").write_text(new)
            changed.append(name)
    return changed


def count() -> str:
    """A markdown table: lines of each file, its algorithm part and its shared plumbing."""
    rows = ["| file | lines | algorithm (docstring, config, networks, losses, Agent) | shared plumbing | shared % |",
            "|---|---|---|---|---|"]
    for name, text in files().items():
        parts = split(text, name)
        shared = parts["fields"].count("\n") + parts["block"].count("\n")
        total = text.count("\n")
        rows.append(f"| {name}.py | {total} | {total - shared} | {shared} | {100 * shared / total:.0f}% |")
    return "\n".join(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--write", action="store_true",
                   help=f"copy algorithms/{REFERENCE}.py's shared parts into the others")
    p.add_argument("--count", action="store_true", help="print lines per file, algorithm part vs shared plumbing")
    args = p.parse_args(argv)
    if args.count:
        print(count())
    elif args.write:
        print("updated: " + (", ".join(write()) or "nothing"))
    elif bad := drifted():
        sys.exit(f"shared plumbing differs from algorithms/{REFERENCE}.py in: {', '.join(bad)} "
                 "(python tools/plumbing.py --write copies it)")
    else:
        print("shared plumbing identical in all algorithm files")


if __name__ == "__main__":
    main()
