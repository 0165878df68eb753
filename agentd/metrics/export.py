"""Export the dataset: `python -m agentd.metrics.export [--dataset PATH] [--format csv]`.

Reads the daemon's SQLite file (safe while the daemon writes: WAL) and writes JSON
lines (default, one record per line, nested windows kept) or CSV (one column per
window feature, `window_before.psi_cpu_some` and so on) to stdout or `--out`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agentd.metrics.dataset import DATASET_FILE, Dataset, export_csv, export_jsonl


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentd.metrics.export", description=__doc__)
    parser.add_argument("--dataset", type=Path, default=Path("/var/lib/agentd") / DATASET_FILE)
    parser.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    parser.add_argument("--out", type=Path, help="file to write (default: stdout)")
    args = parser.parse_args(argv)
    if not args.dataset.is_file():
        print(f"export: no dataset at {args.dataset}", file=sys.stderr)
        return 1
    dataset = Dataset(args.dataset)
    try:
        records = dataset.records()
    finally:
        dataset.close()
    write = export_csv if args.format == "csv" else export_jsonl
    if args.out:
        with open(args.out, "w", newline="") as f:
            count = write(records, f)
    else:
        count = write(records, sys.stdout)
    print(f"export: {count} records", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
