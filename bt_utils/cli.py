"""The ``bt`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

DEMO_NOTEBOOKS = ("00_data", "01_brain_tuning")
"""Notebooks that ``bt demo`` runs, in order, for each subject."""


def _demo_data(args: argparse.Namespace) -> None:
    from .demo_data import DemoConfig, build_demo_dataset

    started = time.perf_counter()
    out = build_demo_dataset(args.out, DemoConfig(seed=args.seed), overwrite=args.overwrite)
    print(f"demo dataset ready in {out} ({time.perf_counter() - started:.1f} s)")


def _demo(args: argparse.Namespace) -> None:
    from .demo_data import DemoConfig, build_demo_dataset
    from .notebooks import execute_notebook

    out = Path(args.out).resolve()
    data_root = build_demo_dataset(out / "data", DemoConfig(seed=args.seed))
    for subject in args.subjects:
        for notebook in DEMO_NOTEBOOKS:
            started = time.perf_counter()
            executed = execute_notebook(
                notebook, out / "runs" / subject / notebook,
                {"data_root": str(data_root), "subject": subject, "build_demo_if_missing": False},
            )
            print(f"{executed} and its HTML written ({time.perf_counter() - started:.1f} s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bt", description="Brain-tuning suite: data, runs and reports.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    demo_data = commands.add_parser("demo-data", help="build the embedded demo dataset (ds003020 layout)")
    demo_data.add_argument("--out", required=True, help="destination folder (the data_root)")
    demo_data.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo_data.add_argument("--overwrite", action="store_true", help="replace a non-empty folder")
    demo_data.set_defaults(run=_demo_data)

    demo = commands.add_parser("demo", help="build the demo data and run the demo notebooks end to end")
    demo.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--subjects", nargs="+", default=["DEMO01"], help="demo participants to run")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.run(args)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as error:
        print(f"bt {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
