"""Opening and closing a pipeline run off the critical path.

Importing MLflow and opening a SQLite store costs seconds of CPU; papermill's own imports cost
about as much. So the MLflow work runs beside them: in a thread when this process has MLflow
loaded already (a notebook kernel with the extension), otherwise in a helper process
(``python -m kernel_magics.pipelines.recorder``, one JSON line per message on stdin/stdout)
that loads MLflow on another core while this one loads papermill. Both run the same
``Session``; a helper whose parent goes away marks the run KILLED.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import IO, Any

from kernel_magics import errors
from kernel_magics.config import Settings, load_settings
from kernel_magics.errors import KernelMagicsError, StoreError, first_line
from kernel_magics.pipelines.record import (
    PipelineRecord,
    RunSpec,
    Started,
    close_run,
    open_run,
    read_record,
)


class Session:
    """The MLflow side of one pipeline execution (wherever it runs)."""

    def __init__(self, settings: Settings):
        from kernel_magics.store import Store

        self.store = Store(settings)
        self.scratch = Path(tempfile.mkdtemp(prefix="km-pipeline-"))
        self.run_id: str | None = None
        self.rerun_of: str | None = None

    def begin(self, spec: RunSpec) -> Started:
        try:
            started = open_run(self.store, spec, self.scratch)
        except BaseException:
            shutil.rmtree(self.scratch, ignore_errors=True)
            raise
        self.run_id, self.rerun_of = started.run_id, spec.rerun_of
        return started

    def finish(
        self, status: str, executed: str | None, error: str | None, seconds: float | None
    ) -> tuple[PipelineRecord, PipelineRecord | None]:
        """End the run; for a rerun, also the original's record (to compare with)."""
        assert self.run_id is not None
        try:
            record = close_run(
                self.store,
                self.run_id,
                status,
                executed=Path(executed) if executed else None,
                error=error,
                seconds=seconds,
            )
            original = read_record(self.store, self.rerun_of) if self.rerun_of else None
            return record, original
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)


class ThreadRecorder:
    """The session in this process; ``begin`` returns at once, ``started`` waits."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._future: Future[Started] = Future()
        self._session: Session | None = None

    def begin(self, spec: RunSpec) -> None:
        def work() -> None:
            try:
                self._session = Session(self.settings)
                self._future.set_result(self._session.begin(spec))
            except BaseException as err:  # handed to the caller of started()
                self._future.set_exception(err)

        threading.Thread(target=work, name="km-pipeline-recorder", daemon=True).start()

    def started(self) -> Started:
        try:
            return self._future.result()
        except KernelMagicsError:
            raise
        except Exception as err:
            raise StoreError(f"could not record the pipeline run: {first_line(err)}") from err

    def finish(
        self, status: str, executed: str | None, error: str | None, seconds: float | None
    ) -> tuple[PipelineRecord, PipelineRecord | None]:
        self.started()  # raises if the run never opened
        assert self._session is not None
        return self._session.finish(status, executed, error, seconds)


class ProcessRecorder:
    """The session in a helper process."""

    def __init__(self, settings: Settings):
        settings.home.mkdir(parents=True, exist_ok=True)
        log_dir = settings.home / "logs"
        log_dir.mkdir(exist_ok=True)
        env = {**os.environ, **settings.as_env()}
        env.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        with open(log_dir / "pipeline-recorder.log", "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "kernel_magics.pipelines.recorder"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                text=True,
            )
        self._started: Started | None = None

    def _send(self, message: dict[str, Any]) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps(message, default=str) + "\n")
            self._proc.stdin.flush()
        except OSError as err:
            raise StoreError(f"the pipeline recorder stopped: {first_line(err)}") from None

    def _reply(self) -> Any:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            code = self._proc.wait()
            raise StoreError(f"the pipeline recorder exited (code {code}) before answering")
        doc = json.loads(line)
        if "error" in doc:
            kind = getattr(errors, doc.get("kind", ""), StoreError)
            raise (kind if isinstance(kind, type) else StoreError)(doc["error"])
        return doc["ok"]

    def begin(self, spec: RunSpec) -> None:
        self._send({"begin": spec.to_wire()})

    def started(self) -> Started:
        if self._started is None:
            self._started = Started(**self._reply())
        return self._started

    def finish(
        self, status: str, executed: str | None, error: str | None, seconds: float | None
    ) -> tuple[PipelineRecord, PipelineRecord | None]:
        self.started()  # raises if the run never opened
        self._send({"finish": [status, executed, error, seconds]})
        try:
            record, original = self._reply()
        finally:
            self._proc.wait(timeout=60)
        return (
            PipelineRecord.from_wire(record),
            PipelineRecord.from_wire(original) if original else None,
        )


Recorder = ThreadRecorder | ProcessRecorder


def make_recorder(settings: Settings) -> Recorder:
    """A thread where MLflow is loaded already, a helper process where it is not."""
    return ThreadRecorder(settings) if "mlflow" in sys.modules else ProcessRecorder(settings)


# -- the helper process ---------------------------------------------------------------------------
def _serve(reply_to: IO[str]) -> None:
    session: Session | None = None
    finished = False

    def answer(doc: dict[str, Any]) -> None:
        reply_to.write(json.dumps(doc, default=str) + "\n")
        reply_to.flush()

    try:
        for line in sys.stdin:
            message = json.loads(line)
            try:
                if "begin" in message:
                    session = Session(load_settings())
                    answer({"ok": session.begin(RunSpec(**message["begin"])).__dict__})
                elif "finish" in message and session is not None:
                    finished = True
                    record, original = session.finish(*message["finish"])
                    answer({"ok": [record.to_wire(), original.to_wire() if original else None]})
                    return
            except Exception as err:
                kind = type(err).__name__ if isinstance(err, KernelMagicsError) else "StoreError"
                answer({"error": first_line(err), "kind": kind})
                if "begin" in message:
                    return
    finally:
        if session is not None and session.run_id and not finished:
            # the parent went away mid-run (interrupted, killed): say so in the store
            session.finish("KILLED", None, "the pipeline was interrupted", None)


def main() -> None:
    # stdout carries the protocol: anything a library prints goes to stderr (the log file)
    reply_to = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _serve(reply_to)
    # Everything is written and answered; tearing down MLflow's and SQLAlchemy's modules
    # would only cost the waiting parent a second or more.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
