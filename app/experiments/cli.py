"""``controlroom ab run FILE.yaml``: an experiment headless, for CI.

Exit codes: 0 the run finished and the gate passed (or there is none); 1 the
gate failed; 3 the experiment file is wrong (every problem printed as
FILE:LINE); 4 the run could not be made (store, unknown target, registry
prompt, every call failed); 130 cancelled (Ctrl-C) — run it again with
``--resume`` to finish without paying twice for what is done.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TextIO

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_FILE_ERROR = 3
EXIT_RUN_ERROR = 4
EXIT_CANCELLED = 130


def add_ab_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ab = sub.add_parser("ab", help="A/B experiments: run an experiment file headless (exit code = its gate)")
    ab_sub = ab.add_subparsers(dest="ab_command", metavar="ACTION", required=True)
    run = ab_sub.add_parser(
        "run",
        help="run an experiment file; prints the analysis; exit 1 when its gate fails, 3 when the file is wrong",
    )
    run.add_argument("file", type=Path, metavar="FILE.yaml")
    run.add_argument("--json", action="store_true", help="print the analysis as JSON on stdout")
    run.add_argument(
        "--store",
        metavar="URL",
        help="store URL (its providers and targets are used, results are kept there); default: "
        "$CONTROLROOM_STORE, else the SQLite file in the data directory",
    )
    run.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="RUN_ID",
        help="finish an interrupted run (the latest of this experiment, or RUN_ID) without calling "
        "again for what it already has",
    )
    run.add_argument("--report", type=Path, metavar="FILE.md", help="also write a Markdown report")
    run.add_argument("--csv", type=Path, metavar="FILE.csv", help="also write every result as CSV")
    run.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


class ProgressBar:
    """A text progress bar on stderr: redrawn in place on a terminal, one line per 10% otherwise."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.tty = stream.isatty()
        self._last_step = -1
        self._last_draw = 0.0
        self._last_done = -1

    def __call__(self, p: object) -> None:
        from app.experiments.runner import Progress

        assert isinstance(p, Progress)
        frac = p.fraction
        step = int(frac * 10)
        now = time.monotonic()
        if self.tty:
            if p.running and now - self._last_draw < 0.1 and p.done < p.total:
                return
        elif step == self._last_step and (p.running or self._last_done == p.done):
            return
        self._last_done = p.done
        self._last_draw, self._last_step = now, step
        filled = int(frac * self.width)
        eta = "--:--" if p.eta_s is None else _clock(p.eta_s)
        errors = f"  {p.errors} error{'s' if p.errors != 1 else ''}" if p.errors else ""
        line = (
            f"[{'#' * filled}{'.' * (self.width - filled)}] {p.done}/{p.total} {frac * 100:3.0f}%"
            f"  ETA {eta}  ${p.cost_usd:.4f}{errors}"
        )
        if self.tty:
            self.stream.write("\r" + line + ("\n" if not p.running else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def run_ab_command(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib
    import signal

    from app.experiments import report
    from app.experiments.runner import ExperimentRunError, ExperimentRunner, resolve_prompts
    from app.experiments.spec import (
        ExperimentError,
        experiment_from_data,
        experiment_to_data,
        load_experiment,
    )
    from app.experiments.stats import analyse
    from app.gateway.engine import Gateway
    from storage.engine import StoreError, open_store
    from storage.queries import experiments as q

    err = sys.stderr
    try:
        exp = load_experiment(args.file)
    except ExperimentError as exc:
        for problem in exc.problems:
            print(problem, file=err)
        n = len(exc.problems)
        print(
            f"controlroom ab: {args.file} has {n} problem{'s' if n != 1 else ''}; nothing was run", file=err
        )
        return EXIT_FILE_ERROR
    try:
        store = open_store(args.store)
    except StoreError as exc:
        print(f"controlroom ab: {exc}", file=err)
        return EXIT_RUN_ERROR
    with store:
        try:
            exp = resolve_prompts(store, exp)
        except ExperimentRunError as exc:
            print(f"controlroom ab: {exc}", file=err)
            return EXIT_RUN_ERROR
        run_id: str | None = None
        if args.resume:
            info = (
                q.latest_unfinished_run(store.engine, exp.name)
                if args.resume == "latest"
                else q.get_run(store.engine, args.resume)
            )
            if info is None:
                what = (
                    "no unfinished run of " + exp.name if args.resume == "latest" else f"no run {args.resume}"
                )
                print(f"controlroom ab: {what} to resume", file=err)
                return EXIT_RUN_ERROR
            stored = experiment_from_data(info.spec)
            if _comparable(experiment_to_data(stored)) != _comparable(experiment_to_data(exp)):
                print(
                    f"controlroom ab: run {info.run_id} ran a different version of {exp.name} (prompts, targets, "
                    "cases or checks changed); start a new run instead of resuming it",
                    file=err,
                )
                return EXIT_RUN_ERROR
            run_id = info.run_id
        q.save_experiment(store.engine, exp.name, experiment_to_data(exp))
        bar = None if args.no_progress else ProgressBar(err)

        async def go() -> object:
            async with Gateway(store) as gw:
                runner = ExperimentRunner(gw, store, exp, run_id=run_id, on_progress=bar)
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    with contextlib.suppress(NotImplementedError, RuntimeError):
                        loop.add_signal_handler(sig, runner.cancel)
                return await runner.run()

        try:
            outcome = asyncio.run(go())
        except ExperimentRunError as exc:
            print(f"controlroom ab: {exc}", file=err)
            return EXIT_RUN_ERROR
        except KeyboardInterrupt:
            print("controlroom ab: cancelled", file=err)
            return EXIT_CANCELLED
        from app.experiments.runner import RunOutcome

        assert isinstance(outcome, RunOutcome)
        results = q.fetch_results(store.engine, outcome.run_id)
    gate = exp.gate
    an = analyse(
        results,
        exp.baseline,
        variants=[v.name for v in exp.variants],
        gate=(gate.variant, gate.not_worse_than, gate.metric, gate.alpha, gate.margin) if gate else None,
    )
    if args.json:
        sys.stdout.write(
            report.report_json(an, experiment=exp.name, run_id=outcome.run_id, status=outcome.status)
        )
    else:
        sys.stdout.write(report.format_text(an))
    if args.report:
        args.report.write_text(
            report.report_markdown(
                an, exp=exp, run_id=outcome.run_id, status=outcome.status, results=results
            ),
            encoding="utf-8",
        )
    if args.csv:
        args.csv.write_text(report.results_csv(results, exp), encoding="utf-8")
    print(
        f"controlroom ab: run {outcome.run_id} {outcome.status}: {outcome.done}/{outcome.total} results, "
        f"{outcome.calls} call(s) this time, ${outcome.cost_usd:.4f}"
        + (f" ({outcome.skipped} were already done)" if outcome.skipped else ""),
        file=err,
    )
    if outcome.status == "failed":
        print(f"controlroom ab: {outcome.error}", file=err)
        return EXIT_RUN_ERROR
    if outcome.status == "cancelled":
        print(
            f"controlroom ab: finish it with: controlroom ab run {args.file} --resume {outcome.run_id}",
            file=err,
        )
        return EXIT_CANCELLED
    if results and all(r.status != "ok" for r in results):
        print("controlroom ab: every call failed; see the errors with --csv", file=err)
        return EXIT_RUN_ERROR
    if an.gate is not None and not an.gate.passed:
        return EXIT_GATE_FAILED
    return EXIT_OK


def _comparable(data: dict[str, object]) -> dict[str, object]:
    d = dict(data)
    d.pop("source", None)
    d.pop("description", None)
    d.pop("concurrency", None)
    cases = d.get("cases")
    if isinstance(cases, list):
        d["cases"] = [{k: v for k, v in c.items() if k != "where"} for c in cases if isinstance(c, dict)]
    return d
