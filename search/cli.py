"""The `search` command: parse, call one library function, print.

A `SearchError` (or a bad flag) prints one line and exits 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import signal
import sys
import traceback
from pathlib import Path

from search import study as studies
from search.errors import SearchError, SettingsError
from search.progress import format_params
from search.summary import best_value, list_studies, show, state_counts

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line, naming the flag it probably meant."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        kwargs.setdefault("allow_abbrev", False)  # every flag spelled out, so typos are caught
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        # A mistyped flag (--tirals) should be named as such, not reported as a missing --trials:
        # argparse checks required flags first, so check unknown ones before it does.
        argv = sys.argv[1:] if args is None else list(args)
        known = set(self._option_string_actions)
        subcommands = {
            name
            for action in self._actions
            if isinstance(action, argparse._SubParsersAction)
            for name in action.choices
        }
        if not subcommands:
            for arg in argv:
                flag = arg.split("=", 1)[0]
                if flag.startswith("--") and flag not in known:
                    close = difflib.get_close_matches(flag, known, n=1)
                    hint = f"; did you mean {close[0]}?" if close else ""
                    self.error(f"unrecognized argument {flag}{hint}")
        return super().parse_known_args(args, namespace)


def _gpu_list(text: str) -> tuple[int, ...]:
    try:
        gpus = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of GPU numbers like 0,1"
        ) from None
    if any(g < 0 for g in gpus):
        raise argparse.ArgumentTypeError(f"{text!r}: GPU numbers start at 0")
    return gpus


def _jobs(text: str) -> int | str:
    return _count_or_auto(text, "processes")


def _fuse(text: str) -> int | str:
    return _count_or_auto(text, "trials")


def _count_or_auto(text: str, what: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of {what} or auto") from None


def _add_speed(parser: argparse.ArgumentParser) -> None:
    """How a worker trains: processes, threads, the captured step, fused trials."""
    parser.add_argument(
        "--jobs",
        type=_jobs,
        default=1,
        help="worker processes on this machine, or auto: as many as a measured trial says fit "
        "(default: 1)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads per worker process (default: the usable cores split between them)",
    )
    parser.add_argument(
        "--step",
        choices=("auto", "eager", "captured"),  # search.step.STEP_MODES, without importing torch
        default="auto",
        help="train each batch eagerly, or replay a captured step (a CUDA graph; torch.compile "
        "on the CPU); auto: captured on CUDA (default: auto)",
    )
    parser.add_argument(
        "--fuse",
        type=_fuse,
        default=1,
        metavar="K",
        help="train up to K trials of one model shape and batch size together as one batched "
        "model, each its own trial; auto: as many as a measured trial says fill the GPU "
        "(default: 1, one at a time)",
    )


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and Optuna's log")
    parser = _Parser(prog="search", description="Hyperparameter search for PyTorch, on Optuna.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", parents=[common], help="run or resume a study")
    run.add_argument(
        "--trials", type=int, required=True, help="target number of finished trials in the study"
    )
    run.add_argument("--study", help="study name (default: the space's name)")
    run.add_argument("--space", help="space file or shipped space name (default: digits)")
    run.add_argument("--storage", help="Optuna storage URL (default: sqlite:///studies/STUDY.db)")
    run.add_argument("--sampler", choices=studies.SAMPLERS, help="default: tpe")
    run.add_argument("--pruner", choices=studies.PRUNERS, help="default: sha")
    run.add_argument("--epochs", type=int, help="most epochs per trial (default: the space's)")
    run.add_argument(
        "--reports-per-epoch",
        type=int,
        metavar="K",
        help="validate and let the pruner decide K times per epoch (default: 4)",
    )
    run.add_argument(
        "--objectives",
        help=(
            "what to optimize, accuracy first: accuracy (default), accuracy,train-seconds or "
            "accuracy,params (a Pareto search, without pruning)"
        ),
    )
    run.add_argument("--seed", type=int, help="study seed; each trial derives its own (default: 0)")
    run.add_argument(
        "--warm-start",
        action="append",
        default=[],
        metavar="STUDY",
        help="begin a new study with the best configurations of STUDY (repeatable)",
    )
    run.add_argument(
        "--warm-start-storage",
        metavar="URL",
        help="where the --warm-start studies are (default: each one's sqlite:///studies/STUDY.db)",
    )
    run.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    run.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    run.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="dataset folder (default: ./data)"
    )
    run.add_argument(
        "--download", action="store_true", help="download missing torchvision datasets"
    )
    _add_speed(run)
    run.add_argument(
        "--gpus",
        type=_gpu_list,
        default=(),
        help="spread the workers over these CUDA devices, e.g. 0,1 (several per GPU allowed)",
    )
    run.add_argument(
        "--heartbeat",
        type=int,
        default=10,
        help="seconds between a running trial's heartbeats; one silent for 3 is retried (default: 10)",
    )
    _add_checkpoint_dir(run)
    _add_data_mode(run)
    _add_trackers(run)

    worker = commands.add_parser(
        "worker",
        parents=[common],
        help="join an existing study (e.g. on PostgreSQL) and run trials until it has --trials",
    )
    worker.add_argument("--study", required=True, help="the study to join (search run creates it)")
    worker.add_argument(
        "--trials", type=int, required=True, help="the study's target of finished trials, in all"
    )
    worker.add_argument("--storage", help="storage URL shared by all workers (or SEARCH_STORAGE)")
    _add_speed(worker)
    worker.add_argument(
        "--gpus", type=_gpu_list, default=(), help="spread the processes over these CUDA devices"
    )
    worker.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    worker.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="dataset folder (default: ./data)"
    )
    worker.add_argument(
        "--heartbeat", type=int, default=10, help="seconds between trial heartbeats (default: 10)"
    )
    worker.add_argument(
        "--timeout", type=float, help="stop starting trials after this many seconds"
    )
    _add_checkpoint_dir(worker)
    _add_data_mode(worker)
    _add_trackers(worker)

    listing = commands.add_parser(
        "list", parents=[common], help="list studies with trial counts and best value"
    )
    listing.add_argument("--storage", help="storage URL (default: every studies/*.db)")

    report = commands.add_parser(
        "report", parents=[common], help="write an HTML report of one or more studies"
    )
    report.add_argument("studies", nargs="+", metavar="STUDY")
    report.add_argument("--storage", help="storage URL (default: sqlite:///studies/STUDY.db each)")
    report.add_argument("--out", type=Path, help="output file (default: reports/STUDY.html)")

    dashboard = commands.add_parser(
        "dashboard", parents=[common], help="serve optuna-dashboard on a study's storage"
    )
    dashboard.add_argument("study", nargs="?", help="open this study (default: the storage's list)")
    dashboard.add_argument("--storage", help="storage URL (default: the study's studies/*.db)")
    dashboard.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)"
    )
    dashboard.add_argument(
        "--port", type=int, default=8080, help="port (default: 8080; 0: any free)"
    )

    _add_bench(commands, common)

    best = commands.add_parser(
        "best", parents=[common], help="a study's best trials and how to reproduce each"
    )
    best.add_argument("study")
    best.add_argument("--top", type=int, default=1, help="how many trials (default: 1)")
    best.add_argument("--json", action="store_true", help="print JSON instead of text")
    best.add_argument("--storage", help="storage URL (default: sqlite:///studies/STUDY.db)")

    export = commands.add_parser(
        "export",
        parents=[common],
        help="retrain a trial, score it on the test set, write model, config and metrics",
    )
    export.add_argument("study")
    export.add_argument("--out", type=Path, required=True, help="a new folder for the files")
    export.add_argument("--trial", type=int, help="trial number (default: the best trial)")
    export.add_argument(
        "--epochs", type=int, help="epochs to train (default: the trial's, or its best epoch)"
    )
    export.add_argument(
        "--full-train",
        action="store_true",
        help="train on training + validation data, keeping the last epoch",
    )
    export.add_argument("--storage", help="storage URL (default: sqlite:///studies/STUDY.db)")
    export.add_argument(
        "--mlflow",
        metavar="URI",
        help="also log the model, its test accuracy and its files to this MLflow tracking URI",
    )
    export.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    export.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="dataset folder (default: ./data)"
    )
    export.add_argument(
        "--download", action="store_true", help="download missing torchvision datasets"
    )

    predict = commands.add_parser(
        "predict",
        parents=[common],
        help="score images or a tensor file with an exported model, prepared as its study's data",
    )
    predict.add_argument(
        "model", type=Path, metavar="MODEL_DIR", help="a folder search export wrote"
    )
    predict.add_argument(
        "input",
        type=Path,
        metavar="INPUT",
        help="a folder of images, one image, or a .npz/.pt file (x, or x_test; y to score)",
    )
    predict.add_argument(
        "--out", type=Path, help="write the predictions to this CSV file (default: print them)"
    )
    predict.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")

    docs = commands.add_parser(
        "docs",
        parents=[common],
        help="build the documentation site strictly (or serve it); needs the docs extra",
    )
    docs.add_argument(
        "--serve", action="store_true", help="serve the site, rebuilt as it is edited, instead"
    )
    docs.add_argument(
        "--site", type=Path, default=Path("site"), help="where to build it (default: ./site)"
    )
    docs.add_argument(
        "--address",
        default="127.0.0.1:8000",
        help="where --serve listens (default: 127.0.0.1:8000)",
    )

    show = commands.add_parser(
        "show", parents=[common], help="show a study's settings and best trial"
    )
    show.add_argument("study")
    show.add_argument("--storage", help="storage URL (default: sqlite:///studies/STUDY.db)")
    return parser


def _add_checkpoint_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=studies.STUDIES_DIR / "checkpoints",
        help=(
            "where running trials keep per-epoch checkpoints; on several machines, a folder they "
            "all mount, so a trial of a dead worker resumes anywhere (default: studies/checkpoints)"
        ),
    )


def _add_trackers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tensorboard",
        type=Path,
        metavar="DIR",
        help="write a TensorBoard run per trial to DIR/STUDY/trial-N (kept for resumes; none: "
        "stop; pip install 'search[tensorboard]')",
    )
    parser.add_argument(
        "--mlflow",
        metavar="URI",
        help="log the study and a nested run per trial to this MLflow tracking URI (a server URL "
        "or sqlite:///FILE; kept for resumes; none: stop; pip install 'search[mlflow]')",
    )


def _add_data_mode(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-mode",
        choices=("auto", "resident", "stream"),
        default="auto",
        help=(
            "keep the data on the device (resident) or stream batches from host memory (stream); "
            "default auto: resident when it takes at most half the device's free memory"
        ),
    )


def _counts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of counts like 1,2,4,8") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _add_bench(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    bench = commands.add_parser("bench", help="benchmarks: compare search strategies")
    kinds = bench.add_subparsers(dest="bench", required=True, parser_class=_Parser)
    hpo = kinds.add_parser(
        "hpo",
        parents=[common],
        help="every sampler × pruner × seed as its own study; IQM curves with bootstrap CIs",
    )
    hpo.add_argument(
        "--space", default="mnist1d", help="space file or shipped space name (default: mnist1d)"
    )
    hpo.add_argument(
        "--samplers",
        type=_names,
        default=("random", "tpe"),
        help=f"comma-separated, from {','.join(studies.SAMPLERS)} (default: random,tpe)",
    )
    hpo.add_argument(
        "--pruners",
        type=_names,
        default=("none", "median"),
        help=f"comma-separated, from {','.join(studies.PRUNERS)} (default: none,median)",
    )
    hpo.add_argument(
        "--strategies",
        type=_names,
        default=(),
        help=(
            "comma-separated SAMPLER+PRUNER[:Kx][@N] (K reports per epoch, N trials), "
            "instead of --samplers × --pruners; e.g. random+none,tpe+sha:4x@60"
        ),
    )
    hpo.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per strategy (default: 3)")
    hpo.add_argument(
        "--trials", type=int, default=30, help="finished trials per study (default: 30)"
    )
    hpo.add_argument("--epochs", type=int, help="most epochs per trial (default: the space's)")
    hpo.add_argument("--jobs", type=int, default=1, help="studies run at once (default: 1)")
    hpo.add_argument(
        "--storage",
        help="storage URL for all the studies (default: sqlite:///studies/bench-SPACE.db)",
    )
    hpo.add_argument("--out", type=Path, help="report file (default: reports/bench-SPACE.html)")
    hpo.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    hpo.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="dataset folder (default: ./data)"
    )
    hpo.add_argument(
        "--heartbeat", type=int, default=10, help="seconds between trial heartbeats (default: 10)"
    )

    loop = kinds.add_parser(
        "loop",
        parents=[common],
        help="the harness's training loop against a tutorial-style PyTorch loop, side by side",
    )
    loop.add_argument("--task", default="mnist", help="an image task (default: mnist)")
    loop.add_argument(
        "--space",
        help="a space file's data and model instead of --task/--model/--depth (your own data)",
    )
    loop.add_argument("--model", default="cnn", help="model family (default: cnn)")
    loop.add_argument("--depth", type=int, default=2, help="model depth (default: 2)")
    loop.add_argument(
        "--batch-sizes", type=_counts, default=(64, 256, 1024), help="default: 64,256,1024"
    )
    loop.add_argument(
        "--workers", type=_counts, default=(), help="also run N harness processes at once, e.g. 4,8"
    )
    loop.add_argument(
        "--captured",
        action="store_true",
        help="also time the captured step (a CUDA graph; torch.compile on the CPU), and fuse with it",
    )
    loop.add_argument(
        "--fuse",
        type=_counts,
        default=(),
        help="also train K trials fused into one model, e.g. 4,8",
    )
    loop.add_argument(
        "--auto", action="store_true", help="also run as many processes as --jobs auto picks"
    )
    loop.add_argument("--epochs", type=int, default=1, help="timed epochs per loop (default: 1)")
    loop.add_argument("--examples", type=int, help="train on the first N images (default: all)")
    loop.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    loop.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="dataset folder (default: ./data)"
    )
    loop.add_argument("--json", type=Path, help="also write the results to this JSON file")

    whole = kinds.add_parser(
        "study",
        parents=[common],
        help="a whole study on the harness's loop and again on the reference loop",
    )
    whole.add_argument("--space", default="digits", help="space file or name (default: digits)")
    whole.add_argument("--trials", type=int, default=100, help="trials per study (default: 100)")
    whole.add_argument("--epochs", type=int, help="most epochs per trial (default: the space's)")
    whole.add_argument("--seed", type=int, default=0, help="study seed (default: 0)")
    whole.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    whole.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="dataset folder (default: ./data)"
    )
    whole.add_argument(
        "--step",
        choices=("auto", "eager", "captured"),  # search.step.STEP_MODES, without importing torch
        default="auto",
        help="the harness's steps: eager, or replayed from a capture (default: auto)",
    )
    whole.add_argument(
        "--fuse", type=int, default=1, metavar="K", help="the harness's trials fused K at a time"
    )
    whole.add_argument(
        "--harness-only",
        action="store_true",
        help="run only the harness's study: its bookkeeping, without the comparison",
    )
    whole.add_argument("--json", type=Path, help="also write the results to this JSON file")

    scaling = kinds.add_parser(
        "workers",
        parents=[common],
        help="trial throughput of 1..N worker processes on one study (synthetic sleeping trials)",
    )
    scaling.add_argument(
        "--storage", help="a server storage to measure beside SQLite, e.g. postgresql://..."
    )
    scaling.add_argument(
        "--workers",
        type=_counts,
        default=(1, 2, 4, 8),
        help="worker counts, comma-separated (default: 1,2,4,8)",
    )
    scaling.add_argument(
        "--trials", type=int, default=32, help="trials per worker count (default: 32)"
    )
    scaling.add_argument(
        "--trial-seconds",
        type=float,
        default=1.0,
        help="how long each synthetic trial sleeps (default: 1.0)",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "storage", "") is None:
        # Every command that takes --storage takes it from the environment too (set it once
        # per shell or job script instead of repeating a URL that may hold a password).
        args.storage = os.environ.get("SEARCH_STORAGE") or None
    _configure_logging(args.debug)
    try:
        return _COMMANDS[args.command](args)
    except SearchError as e:
        if args.debug:
            traceback.print_exc()
        print(f"search {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"\nsearch {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as other commands do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:
        if args.debug:
            raise
        print(
            f"search {args.command}: internal error: {type(e).__name__}: {e} (--debug shows the traceback)",
            file=sys.stderr,
        )
        return 1


def _run(args: argparse.Namespace) -> int:
    from search.runner import RunSettings, run, study_name  # imports torch: only `run` trains

    settings = RunSettings(
        trials=args.trials,
        study=args.study,
        space=args.space,
        storage=args.storage,
        sampler=args.sampler,
        pruner=args.pruner,
        epochs=args.epochs,
        seed=args.seed,
        timeout=args.timeout,
        device=args.device,
        data_dir=args.data_dir.expanduser(),
        download=args.download,
        heartbeat=args.heartbeat,
        jobs=args.jobs,
        threads=args.threads,
        step=args.step,
        fuse=args.fuse,
        gpus=args.gpus,
        objectives=args.objectives,
        reports_per_epoch=args.reports_per_epoch,
        checkpoint_dir=args.checkpoint_dir.expanduser(),
        data_mode=args.data_mode,
        tensorboard=args.tensorboard,
        mlflow=args.mlflow,
        warm_start=tuple(args.warm_start),
        warm_start_storage=args.warm_start_storage,
    )
    # SIGTERM (a scheduler, `kill`) stops the run the way Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        result = run(settings)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C exits at once
        print(
            "\ninterrupted; finished trials are saved and the interrupted one resumes from its "
            "last epoch. Resume with: "
            f"search run --study {study_name(settings)} --trials {args.trials}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    study = result.study
    print(f"{study.study_name}: {state_counts(study)} in {result.seconds:.1f} s")
    print(f"best: {best_value(study)}")
    best = studies.best_trial(study)
    if best is not None:
        print(f"      {format_params(best.params)}")
    print(f"database: {studies.describe(result.storage_url)}")
    return 0


def _worker(args: argparse.Namespace) -> int:
    from search.runner import RunSettings, join

    settings = RunSettings(
        trials=args.trials,
        study=args.study,
        storage=args.storage,
        device=args.device,
        data_dir=args.data_dir.expanduser(),
        heartbeat=args.heartbeat,
        jobs=args.jobs,
        threads=args.threads,
        step=args.step,
        fuse=args.fuse,
        gpus=args.gpus,
        timeout=args.timeout,
        checkpoint_dir=args.checkpoint_dir.expanduser(),
        data_mode=args.data_mode,
        tensorboard=args.tensorboard,
        mlflow=args.mlflow,
    )
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        result = join(settings)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        print(
            "\ninterrupted; the trial this worker ran is retried by another worker (or the next "
            "one started) from its last epoch",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    study = result.study
    print(
        f"{study.study_name}: {state_counts(study)}; {result.finished_before} → "
        f"{result.finished} finished while this worker ran ({result.seconds:.1f} s)"
    )
    print(f"best: {best_value(study)}")
    return 0


def _list(args: argparse.Namespace) -> int:
    urls = [args.storage] if args.storage else studies.local_urls()
    lines = list_studies(urls)
    print("\n".join(lines) if lines else f"no studies in {args.storage or studies.STUDIES_DIR}")
    return 0


def _show(args: argparse.Namespace) -> int:
    url = args.storage or studies.default_url(args.study)
    print(show(studies.load_existing(args.study, url), url))
    return 0


def _report(args: argparse.Namespace) -> int:
    from search import reporting

    loaded = reporting.load(args.studies, args.storage)
    out = reporting.write(loaded, args.out or reporting.default_path(args.studies))
    print(out)
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from search.dashboard import serve

    try:
        serve(args.study, args.storage, args.host, args.port)
    except KeyboardInterrupt:
        print("dashboard stopped", file=sys.stderr)
    return 0


def _bench_loop(args: argparse.Namespace) -> int:
    from search.bench import loop

    settings = loop.LoopSettings(
        task=args.task,
        model=args.model,
        depth=args.depth,
        batch_sizes=args.batch_sizes,
        workers=args.workers,
        epochs=args.epochs,
        examples=args.examples,
        device=args.device,
        data_dir=args.data_dir.expanduser(),
        space=args.space,
        captured=args.captured,
        fuse=args.fuse,
        auto=args.auto,
    )
    device, rows = loop.run(settings)
    if args.json:
        loop.write_json(args.json, device, settings, rows)
        print(f"wrote {args.json}")
    return 0


def _bench_study(args: argparse.Namespace) -> int:
    from search.bench import study

    timings = study.run(
        study.StudySettings(
            space=args.space,
            trials=args.trials,
            epochs=args.epochs,
            seed=args.seed,
            device=args.device,
            data_dir=args.data_dir.expanduser(),
            reference=not args.harness_only,
            step=args.step,
            fuse=args.fuse,
        )
    )
    if args.json:
        study.write_json(args.json, timings)
        print(f"wrote {args.json}")
    return 0


def _bench_workers(args: argparse.Namespace) -> int:
    from search.bench import workers

    results = workers.run(
        workers.WorkersSettings(
            storage=args.storage,
            workers=args.workers,
            trials=args.trials,
            trial_seconds=args.trial_seconds,
        )
    )
    print("\n".join(workers.table(results)))
    return 0


def _best(args: argparse.Namespace) -> int:
    from search.summary import best_listing

    if args.top < 1:
        raise SettingsError(f"--top must be at least 1, got {args.top}")
    url = args.storage or studies.default_url(args.study)
    study = studies.load_existing(args.study, url)
    print(best_listing(study, args.top, storage=args.storage, as_json=args.json))
    return 0


def _export(args: argparse.Namespace) -> int:
    from search.exporting import ExportSettings, export

    exported = export(
        ExportSettings(
            study=args.study,
            out=args.out.expanduser(),
            storage=args.storage,
            trial=args.trial,
            epochs=args.epochs,
            full_train=args.full_train,
            device=args.device,
            data_dir=args.data_dir.expanduser(),
            download=args.download,
            mlflow=args.mlflow,
        )
    )
    metrics = exported.metrics
    metric = metrics["metric"]
    if "train" in metrics:  # the model a training function of the user's returned
        print(
            f"val {metric} {metrics[f'val_{metric}']:.4f} (the trial had "
            f"{metrics[f'trial_val_{metric}']:.4f})"
        )
        print(
            f"wrote {exported.out}/ (model.pt: the state dict; module.pt: the whole module, "
            "torch.load(path, weights_only=False); metrics.json)"
        )
        return 0
    if metrics[f"val_{metric}"] is not None:
        print(
            f"val {metric} {metrics[f'val_{metric}']:.4f} at epoch {metrics['best_epoch']} "
            f"(the trial had {metrics[f'trial_val_{metric}']:.4f})"
        )
    print(f"test {metric} {metrics[f'test_{metric}']:.4f}")
    for name, check in metrics["files"].items():
        if isinstance(check, dict):
            print(f"  {name}: reloaded, outputs within {check['max_abs_difference']:.1e}")
        else:
            print(f"  {name}: {check}")
    print(
        f"wrote {exported.out}/ (model.pt, model.json, config.toml, metrics.json and the files "
        f"above); search predict {exported.out} INPUT scores new data with it"
    )
    if "mlflow_run" in metrics:
        print(f"logged to mlflow {args.mlflow}: run {metrics['mlflow_run']} (files under files/)")
        if metrics["mlflow_model"]:
            print(f"  mlflow.pytorch.load_model({metrics['mlflow_model']!r}) loads the TorchScript")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from search.predict import predict, summary, write_csv
    from search.train import pick_device

    predictions = predict(
        args.model.expanduser(), args.input.expanduser(), str(pick_device(args.device))
    )
    if args.out is None:
        sys.stdout.write(predictions.csv())
        print(summary(predictions), file=sys.stderr)  # beside the CSV, not in it
    else:
        out = write_csv(predictions, args.out.expanduser())
        print(f"{summary(predictions)}; wrote {out}")
    return 0


def _docs(args: argparse.Namespace) -> int:
    from search import docs

    status = docs.run(args.serve, args.site.expanduser(), args.address)
    if status == 0 and not args.serve:
        print(f"built {args.site}/index.html")
    return status


def _bench(args: argparse.Namespace) -> int:
    if args.bench == "workers":
        return _bench_workers(args)
    if args.bench == "loop":
        return _bench_loop(args)
    if args.bench == "study":
        return _bench_study(args)
    from search import reporting
    from search.bench import hpo, hpo_report

    settings = hpo.HpoSettings(
        space=args.space,
        samplers=args.samplers,
        pruners=args.pruners,
        strategies=args.strategies,
        seeds=args.seeds,
        trials=args.trials,
        epochs=args.epochs,
        jobs=args.jobs,
        storage=args.storage,
        device=args.device,
        data_dir=args.data_dir.expanduser(),
        heartbeat=args.heartbeat,
    )
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        comparison = hpo.run(settings)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        print("\ninterrupted; finished trials are saved. Run the same command again to resume.")
        return EXIT_INTERRUPTED
    print("\n".join(hpo_report.table_lines(comparison)))
    out = reporting.write_page(
        hpo_report.render(comparison), args.out or reporting.REPORTS_DIR / f"{settings.prefix}.html"
    )
    print(comparison.headline())
    print(f"report: {out}")
    return 0


_COMMANDS = {
    "run": _run,
    "list": _list,
    "show": _show,
    "report": _report,
    "dashboard": _dashboard,
    "bench": _bench,
    "worker": _worker,
    "best": _best,
    "export": _export,
    "predict": _predict,
    "docs": _docs,
}


def _configure_logging(debug: bool) -> None:
    import optuna

    # The run prints its own line per trial; Optuna's per-trial log would repeat it.
    optuna.logging.set_verbosity(logging.INFO if debug else logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
