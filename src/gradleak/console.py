"""What gradleak's commands show: progress (rich bars on a terminal, one plain line per event
otherwise, as logs want), result tables, and the handling of user errors (one line, exit 2) and
Ctrl-C (what was kept, exit 130). Shared by ``gradleak`` (:mod:`gradleak.cli`) and
``python -m gradleak.flower.demo``.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager

from rich.console import Console
from rich.table import Table

from gradleak.errors import GradleakError

console = Console()
err_console = Console(stderr=True)


# ---------------------------------------------------------------------- progress
class _Shown:
    """A run's progress (see :class:`gradleak.experiments.runner.Progress`): rich bars on a
    terminal, one plain line per event otherwise."""

    def __init__(self, bar=None):
        self.bar = bar
        self.task = None

    def case_started(self, case, position: int, total: int):
        if self.bar is None:
            return _plain_steps(f"[{position}/{total}] {case.id}")
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(f"[{position}/{total}] {case.id}", total=None)

        def callback(done: int, total_: int, value: float) -> None:
            self.bar.update(self.task, completed=done, total=total_)

        return callback

    def case_finished(self, case, record: dict, position: int, total: int) -> None:
        if self.task is not None:  # an attack that stopped early: its bar goes, clock and all
            self.bar.remove_task(self.task)
            self.task = None
        line = _case_line(case.id, record, position, total)
        (self.bar.console if self.bar is not None else console).print(
            line, highlight=False, soft_wrap=True
        )

    def training(self, name: str, steps: int):
        self.note(f"training {name} ({steps} steps; resumes if interrupted)")
        if self.bar is None:
            return _plain_training(name)
        task = self.bar.add_task(name, total=steps)

        def callback(done: int, total_: int, values: dict) -> None:
            self.bar.update(task, completed=done, total=total_)

        return callback

    def note(self, text: str) -> None:
        (self.bar.console if self.bar is not None else console).print(text, highlight=False)


@contextmanager
def stages(what: str):
    """Yield ``stage(name)`` announcing each stage of a long computation: a spinner on a
    terminal, one plain line per stage otherwise."""
    if not console.is_terminal:
        yield lambda name: console.print(f"{what}: {name}", highlight=False)
        return
    with console.status(f"{what} ...") as status:
        yield lambda name: status.update(f"{what}: {name} ...")


@contextmanager
def _progress():
    """A :class:`_Shown` with a live bar on a terminal, plain lines otherwise."""
    if not console.is_terminal:
        yield _Shown()
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        yield _Shown(bar)


def _case_line(case_id: str, record: dict, position: int, total: int) -> str:
    status = record.get("status", "done")
    if status != "done":
        return f"[{position}/{total}] {case_id}: {status}: {record.get('error', '')}"
    facts = []
    if isinstance(record.get("psnr"), float):
        facts.append(f"PSNR {record['psnr']:.2f} dB")
    if isinstance(record.get("label_accuracy"), float):
        facts.append(f"label acc. {record['label_accuracy']:.2f}")
    if "estimate" in record:
        facts.append(f"batch size {record['estimate']}")
    facts.append(f"{record.get('wall_seconds', 0.0):.1f} s")
    return f"[{position}/{total}] {case_id}: {', '.join(facts)}"


def _plain_steps(name: str):
    """A progress callback printing a line at every tenth of the steps (for logs)."""
    step = {"next": 0.1}

    def callback(done: int, total: int, value: float) -> None:
        if total > 1 and done < total and done / total >= step["next"]:
            step["next"] = (int(done / total * 10) + 1) / 10
            console.print(f"{name}: step {done}/{total}, distance {value:.4g}", highlight=False)

    return callback


def _plain_training(name: str):
    step = {"next": 0.0}

    def callback(done: int, total: int, values: dict) -> None:
        if done / total >= step["next"] or done == total:
            step["next"] += 0.1
            text = "  ".join(f"{k} {float(v):.4g}" for k, v in values.items())
            console.print(f"{name}: {done}/{total}  {text}", highlight=False)

    return callback


def _print_results(results: dict) -> None:
    from gradleak.experiments.store import finest_groups

    summary = results["summary"]
    title = f"{results['preset']}: {summary['n_cases']} cases"
    not_run = summary["n_cases"] - summary["n_done"]
    if not_run:
        title += f" ({summary['n_skipped']} skipped, {summary['n_failed']} failed)"
    table = Table(title=title)
    for column in ("group", "cases", "PSNR median", "SSIM median", "label acc.", "s / case"):
        table.add_column(column, justify="right" if column != "group" else "left")
    for name, s in finest_groups(summary).items():
        table.add_row(
            name,
            f"{s['n_done']}/{s['n_cases']}",
            _fmt(s["psnr_median"], "{:.2f} dB"),
            _fmt(s["ssim_median"], "{:.3f}"),
            _fmt(s["label_accuracy"], "{:.2f}"),
            _fmt(s["seconds_median"], "{:.1f}"),
        )
    console.print(table)


def _fmt(value, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


_INTERRUPTED = {"kept": "nothing was written"}


@contextmanager
def _resumable(kept, *, resume: str = "run the same command again to resume"):
    """Ctrl-C inside: say what was kept (``kept``: text, or a function giving it at that
    moment) and how to go on, and exit with 130."""
    try:
        yield
    except KeyboardInterrupt:
        text = kept() if callable(kept) else kept
        err_console.print(f"interrupted: {text}{'; ' + resume if resume else ''}", highlight=False)
        sys.exit(130)


def keeps(kept: str) -> None:
    """What a Ctrl-C from now on keeps, for commands without a :func:`_resumable` block."""
    _INTERRUPTED["kept"] = kept


class _NoticeHandler(logging.Handler):
    """The library's messages (``logging.getLogger("gradleak")``): a long stage starting (info)
    as a plain line on standard output, a notice (warning) as ``note: ...`` on standard error."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            err_console.print(f"note: {record.getMessage()}", highlight=False, soft_wrap=True)
        else:
            console.print(record.getMessage(), highlight=False, soft_wrap=True)


def _show_notices() -> None:
    logger = logging.getLogger("gradleak")
    if not any(isinstance(h, _NoticeHandler) for h in logger.handlers):
        logger.addHandler(_NoticeHandler(logging.INFO))
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _usage_error(err) -> str:
    """A click usage error in one line: what is wrong, and where to read the usage."""
    ctx = getattr(err, "ctx", None)
    command = ctx.command_path if ctx is not None else "gradleak"
    message = " ".join(err.format_message().split())
    return f"{message} (see {command} --help)"


def run_app(app) -> None:
    """Run a typer ``app``, turning user errors (bad files, settings or options) into one line
    and exit status 2, Ctrl-C into exit status 130 with a line saying what was kept."""
    _show_notices()
    keeps("nothing was written")
    try:
        code = app(standalone_mode=False)
    except GradleakError as err:
        err_console.print(f"[red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        code = 130
    except Exception as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # `gradleak observe` alone: its help
            err.show()
            sys.exit(2)
        # Usage errors of typer's bundled click (bad option, missing argument, out of range).
        if callable(getattr(err, "format_message", None)) and hasattr(err, "exit_code"):
            err_console.print(
                f"[red]error:[/] {_usage_error(err)}", highlight=False, soft_wrap=True
            )
            sys.exit(2)
        if type(err).__name__ == "Abort":  # click turns Ctrl-C at a prompt into Abort
            code = 130
        else:
            raise
    if code == 130:  # typer turns Ctrl-C into exit code 130, returned in non-standalone mode
        err_console.print(f"interrupted: {_INTERRUPTED['kept']}", highlight=False)
        sys.exit(130)
    if isinstance(code, int) and code:
        sys.exit(code)
