"""Executing a notebook with papermill in a kernel of this environment.

papermill injects the parameters after the cell tagged ``parameters`` and writes the executed
notebook (outputs and the failing cell included) to ``output``. The kernel is the ``python3``
kernelspec, which jupyter_client starts with this interpreter; its environment is ours plus what
the caller adds (the settings), handed to the kernel when it starts through a papermill engine
of our own (papermill itself has no option for that). ``prelude`` is code the kernel runs
silently before the first cell, once the caller can say it (the pipeline run id, which is
being created while the kernel starts): nothing of it shows in the executed notebook.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kernel_magics.errors import KernelMagicsError, first_line
from kernel_magics.pipelines import PipelineFailed

ENGINE = "kernel-magics"
KERNEL = "python3"
PROGRESS_MODES = ("bar", "text", "none")  # bar: papermill's tqdm (a widget in a notebook)


def progress_mode(choice: str = "auto") -> str:
    """A progress setting ("auto", "widget", "bar", "text", "none") as an execution mode:
    auto follows ``KERNEL_MAGICS_PROGRESS`` when it says text or none, else the bar (tqdm:
    a widget inside a notebook, a bar in a terminal)."""
    import os

    choice = (choice or "auto").lower()
    if choice == "auto":
        choice = os.environ.get("KERNEL_MAGICS_PROGRESS", "").strip().lower()
    if choice in ("text", "none"):
        return choice
    return "bar"


def skip_unused_imports() -> None:
    """For a process of our own (the CLI), not a user's kernel: papermill imports nbformat,
    which imports jsonschema, which imports rfc3987_syntax if installed and builds its grammar
    (about 1 s of CPU) for IRI format checks that notebook validation never makes. Marked
    absent, jsonschema treats it as not installed."""
    if "jsonschema" not in sys.modules:
        sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]


def execute(
    notebook: Path,
    output: Path,
    parameters: Mapping[str, Any],
    *,
    env: Mapping[str, str],
    cwd: Path,
    progress: str = "bar",
    kernel_log: Path | None = None,
    prelude: Callable[[], str] | None = None,
    start_timeout: float = 120,
) -> None:
    """Run ``notebook`` into ``output``; a failing cell raises ``PipelineFailed`` with its error
    on one line (after ``output`` was written). The kernel process's own stderr (its start-up
    warnings; cell output travels over the kernel protocol) goes to ``kernel_log``."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    _register_engine()
    hook = _TextProgress() if progress == "text" else None
    start: dict[str, Any] = {"env": dict(env), "prelude": prelude}
    log = None
    if kernel_log is not None:
        kernel_log.parent.mkdir(parents=True, exist_ok=True)
        log = start["stderr"] = kernel_log.open("ab")
    try:
        papermill.execute_notebook(
            str(notebook),
            str(output),
            parameters=dict(parameters),
            kernel_name=KERNEL,
            engine_name=ENGINE,
            # on stdout: stderr is for the one-line error a failure gets
            progress_bar={"file": sys.stdout} if progress == "bar" else False,
            cwd=str(cwd),
            start_timeout=start_timeout,
            kernel_start=start,
            on_cell_executed=hook,
        )
    except PapermillExecutionError as err:
        count, stderr = _failed_cell(output)
        count = count or err.exec_count
        where = f"cell [{count}]" if count else f"cell {err.cell_index + 1}"
        # no evalue: IPython shows a UsageError on stderr, not as an error output
        detail = f"{err.ename}: {first_line(err.evalue)}" if err.evalue else stderr or err.ename
        raise PipelineFailed(f"{where}: {detail}") from None
    except (KeyboardInterrupt, KernelMagicsError):  # ours: e.g. the run could not be opened
        raise
    except Exception as err:  # the kernel did not start or died; a missing kernelspec
        raise PipelineFailed(f"{type(err).__name__}: {first_line(err)}") from None
    finally:
        if log is not None:
            log.close()


def _failed_cell(executed: Path) -> tuple[int | None, str | None]:
    """The execution count of the cell papermill marked as failed in the executed notebook, and
    the last line it wrote to stderr."""
    import nbformat

    try:
        cells = nbformat.read(executed, as_version=4).cells
    except (OSError, ValueError):
        return None, None
    for cell in cells:
        if cell.get("metadata", {}).get("papermill", {}).get("exception"):
            outputs = cell.get("outputs", [])
            text = "".join(o.get("text", "") for o in outputs if o.get("name") == "stderr")
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            return cell.get("execution_count"), lines[-1] if lines else None
    return None, None


def _register_engine() -> None:
    from papermill.engines import papermill_engines

    if ENGINE not in papermill_engines._engines:
        papermill_engines.register(ENGINE, _engine_class())


def _engine_class() -> type:
    """papermill's nbclient engine, but the kernel starts with the environment (and stderr) we
    give it (``kernel_start`` goes to jupyter_client's ``start_kernel``) and runs the prelude
    before the first cell."""
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, logger

    class PreludeClient(PapermillNotebookClient):
        prelude: Callable[[], str] | None = None

        def papermill_execute_cells(self) -> None:
            if self.prelude is not None:
                code = self.prelude()  # may wait for the caller; the kernel is up meanwhile
                reply = self.wait_for_reply(self.kc.execute(code, silent=True, store_history=False))
                if (reply or {}).get("content", {}).get("status") != "ok":
                    raise RuntimeError("the kernel could not run the pipeline's set-up code")
            super().papermill_execute_cells()

    class EnvironmentEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(
            cls,
            nb_man: Any,
            kernel_name: str,
            log_output: bool = False,
            stdout_file: Any = None,
            stderr_file: Any = None,
            start_timeout: float = 60,
            execution_timeout: float | None = None,
            kernel_start: dict[str, Any] | None = None,
            **kwargs: Any,
        ) -> Any:
            for unused in ("input_path", "timeout", "startup_timeout"):
                kwargs.pop(unused, None)
            start = dict(kernel_start or {})
            client = PreludeClient(
                nb_man,
                timeout=execution_timeout,
                startup_timeout=start_timeout,
                kernel_name=kernel_name,
                log=logger,
                log_output=log_output,
                stdout_file=stdout_file,
                stderr_file=stderr_file,
                **kwargs,
            )
            client.prelude = start.pop("prelude", None)
            return client.execute(**start)

    return EnvironmentEngine


class _TextProgress:
    """One line per executed code cell (for logs, CI and papermill-run notebooks)."""

    def __init__(self, write: Callable[[str], Any] | None = None):
        self.write = write or (lambda line: print(line, file=sys.stdout, flush=True))
        self.last = time.perf_counter()

    def __call__(self, cell: Any, cell_index: int, execute_reply: Any) -> None:
        now = time.perf_counter()
        status = (execute_reply or {}).get("content", {}).get("status", "ok")
        source = (cell.source.strip().splitlines() or [""])[0][:60]
        self.write(f"cell {cell_index + 1}: {status} ({now - self.last:.1f} s)  {source}")
        self.last = now
