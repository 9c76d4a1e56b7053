"""Execute the notebooks against the current project store and save them with their outputs.

    python notebooks/execute.py            # in place (what is committed)
    python notebooks/execute.py --out DIR  # elsewhere (the tests: against a tiny temporary store)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def execute(path: Path, out: Path, timeout_s: int = 600) -> None:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout_s, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    nbformat.write(nb, out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write executed copies here instead of in place")
    args = parser.parse_args()
    for path in sorted(HERE.glob("*.ipynb")):
        out = (args.out / path.name) if args.out else path
        out.parent.mkdir(parents=True, exist_ok=True)
        print(f"executing {path.name} -> {out}", flush=True)
        execute(path, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
