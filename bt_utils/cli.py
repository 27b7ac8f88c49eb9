"""The ``bt`` command line."""

from __future__ import annotations

import argparse
import logging
import sys

from .registry import COMMANDS



def _resource(text: str) -> tuple[str, float]:
    name, _, amount = text.partition("=")
    try:
        value = float(amount)
    except ValueError:
        value = None
    if not name or value is None:
        raise argparse.ArgumentTypeError(f"resource {text!r} must read NAME=AMOUNT, e.g. GPU=1")
    return name, value


def _print_sweep(table) -> None:
    import pandas as pd

    from .sweeps.state import count_states, describe_failures

    # duration_s holds None (an object column) until a run has finished
    durations = pd.to_numeric(table.duration_s).round(1)
    shown = table[["run_id", "state", "duration_s", "started"]].assign(duration_s=durations)
    print(shown.astype(object).where(shown.notna(), "-").to_string(index=False))
    print(count_states(table))
    for row in table[(table.state == "completed") & table.message.notna()].itertuples():
        print(f"{row.run_id}: {row.message}")  # out of date: the next sweep runs it again
    failures = describe_failures(table)
    if failures:
        print(failures)


def run_sweep_command(args: argparse.Namespace) -> int:
    import distributed  # noqa: F401 - it configures its loggers when imported: quieten them afterwards

    from .sweeps.runner import run_sweep

    logging.getLogger("bt_utils.sweeps.runner").setLevel(logging.INFO)  # progress, one line per finished run
    logging.getLogger("distributed").setLevel(logging.WARNING)
    table = run_sweep(
        args.spec, args.out, cluster=args.scheduler, n_workers=args.workers, notebook_dir=args.notebooks,
        local_resources=dict(args.worker_resources) if args.worker_resources else None, show_code=args.show_code,
    )
    _print_sweep(table)
    return 0 if (table.state == "completed").all() else 1


def _sweep_status(args: argparse.Namespace) -> int:
    from .sweeps.runner import sweep_status

    table = sweep_status(args.spec, args.out, notebook_dir=args.notebooks)
    _print_sweep(table)
    return 1 if table.state.isin(["failed", "skipped", "interrupted"]).any() else 0


def _sweep_parser(actions, name: str, summary: str, handler) -> argparse.ArgumentParser:
    parser = actions.add_parser(name, help=summary)
    parser.add_argument("spec", help="sweep specification (YAML)")
    parser.add_argument("--out", help="sweep folder (default: runs/<spec name>)")
    parser.add_argument("--notebooks", help="notebook folder (default: the suite's notebooks/)")
    parser.set_defaults(run=handler)
    return parser


def _add_sweep_commands(commands) -> None:
    sweep = commands.add_parser("sweep", help="run the notebooks over a parameter grid (papermill_runs/*.yaml)")
    actions = sweep.add_subparsers(dest="action", required=True)
    run = _sweep_parser(actions, "run", "run the runs not completed yet, in parallel on Dask", run_sweep_command)
    run.add_argument("--workers", type=int, default=2, help="local or configured cluster workers (default: 2)")
    run.add_argument("--scheduler", help="Dask scheduler address, or 'local' (default: Dask config, else local)")
    run.add_argument("--worker-resources", nargs="+", type=_resource, metavar="NAME=AMOUNT",
                     help="resources each local worker declares, e.g. GPU=1 (default: ignore stage resources)")
    run.add_argument("--show-code", action="store_true",
                     help="keep the code cells in the HTML reports (default: text, figures and tables only)")
    _sweep_parser(actions, "status", "show the state of every run (exit status 1 if a run failed, was skipped "
                  "or interrupted)", _sweep_status)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bt", description="Brain-tuning suite: data, runs and reports.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    _add_sweep_commands(commands)
    for add_command in COMMANDS.values():  # extensions' commands, e.g. the demo's
        add_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args) or 0
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as error:
        print(f"bt {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
