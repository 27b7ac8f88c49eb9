"""The demo's ``bt`` commands: ``bt demo-data`` and ``bt demo``."""

from __future__ import annotations

import argparse
import time

from ..data.timing import DS003020_TR_S


def _demo_data(args: argparse.Namespace) -> None:
    from .simulation import DemoConfig, build_demo_dataset

    started = time.perf_counter()
    out = build_demo_dataset(args.out, DemoConfig(seed=args.seed, tr=args.tr), overwrite=args.overwrite)
    print(f"demo dataset ready in {out} ({time.perf_counter() - started:.1f} s)")


def _demo(args: argparse.Namespace) -> int:
    from ..cli import run_sweep_command
    from ..sweeps.notebooks import default_notebook_dir
    from .simulation import prepare_demo_outputs

    checkout = default_notebook_dir().parent  # a clear error where bt_utils was installed without its checkout
    spec = checkout / "papermill_runs" / "demo.yaml"
    started = time.perf_counter()
    data_root, sweep_dir = prepare_demo_outputs(checkout / "demo_output")
    print(f"demo dataset ready in {data_root} ({time.perf_counter() - started:.1f} s)")
    args.spec, args.out = str(spec), str(sweep_dir)
    args.scheduler, args.notebooks, args.worker_resources = None, None, None
    status = run_sweep_command(args)
    print(f"demo finished in {time.perf_counter() - started:.0f} s; reports: {args.out}/*/*/*.html "
          f"(summary: {args.out}/summary/all-*/summary.html)")
    return status


def add_demo_data_command(commands) -> None:
    """Add ``bt demo-data`` to the ``bt`` sub-parsers ``commands``."""
    parser = commands.add_parser("demo-data", help="build the embedded demo dataset (ds003020 layout)")
    parser.add_argument("--out", required=True, help="destination folder (the data_root)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--tr", type=float, default=DS003020_TR_S,
                        help=f"TR of the simulated grid in seconds (default: {DS003020_TR_S}, as ds003020's)")
    parser.add_argument("--overwrite", action="store_true",
                        help="rebuild even an intact demo, and replace a folder that holds something else")
    parser.set_defaults(run=_demo_data)


def add_demo_command(commands) -> None:
    """Add ``bt demo`` to the ``bt`` sub-parsers ``commands``."""
    parser = commands.add_parser(
        "demo", help="build the demo data in demo_output/data and run papermill_runs/demo.yaml into demo_output/sweep")
    parser.add_argument("--workers", type=int, default=2, help="Dask workers (default: 2)")
    parser.add_argument("--show-code", action="store_true",
                        help="keep the code cells in the HTML reports (default: text, figures and tables only)")
    parser.set_defaults(run=_demo)


COMMANDS = {"demo-data": add_demo_data_command, "demo": add_demo_command}
