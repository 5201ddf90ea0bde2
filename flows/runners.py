"""Where a flow's shard tasks run: its own thread pool, or a Dask cluster via prefect-dask.

The nightly ingest and the retry flow cut their work into shards (one Prefect task each).
``threads`` runs them in the flow's ``ThreadPoolTaskRunner``; ``dask`` hands them to Dask's
own scheduler through prefect-dask's :class:`~prefect_dask.DaskTaskRunner`, either on an
existing scheduler (``tcp://host:8786``) or on a ``distributed.LocalCluster`` of worker
processes on 127.0.0.1 started for the run (``local``). Either way each shard is a Prefect
task run of the flow run: its state, retries and logs are in Prefect, and what it commits
obeys the same idempotent protocol (fixed file names, marker last).

Why a nested runner and not ``@flow(task_runner=...)``: the runner is chosen per run (config,
CLI, deployment parameter), while a flow's decorator is fixed at import; and only the shards
go to Dask; planning, selection and the report stay in the flow's process.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from prefect import get_run_logger

from omnifer.config import IngestSettings
from omnifer.errors import ConfigError

DASK_INSTALL = "pip install -e '.[dask]' (prefect-dask and distributed)"


@dataclass(frozen=True)
class RunnerChoice:
    """Which runner a run's shards use. ``address``: ``local`` or a scheduler address."""

    kind: Literal["threads", "dask"]
    address: str | None = None
    workers: int = 2

    def describe(self) -> str:
        if self.kind == "threads":
            return f"threads ({self.workers} at a time)"
        if self.address == "local":
            return f"dask (a LocalCluster of {self.workers} worker processes on 127.0.0.1)"
        return f"dask (scheduler {self.address})"

    def as_parameters(self) -> dict[str, Any]:
        """What a run record keeps, so that ``omnifer rerun`` can run the same way."""
        return {"task_runner": self.kind, "dask_address": self.address}


def choose_runner(
    settings: IngestSettings, task_runner: str | None, dask_address: str | None, workers: int
) -> RunnerChoice:
    """The runner for a run: arguments first, then ``ingest.task_runner``/``dask_address``.

    An address alone implies ``dask``; ``dask`` without an address means ``local``.
    Raises ConfigError for an unknown runner or a malformed address.
    """
    kind = task_runner or ("dask" if dask_address else settings.task_runner)
    if kind not in ("threads", "dask"):
        raise ConfigError(f"unknown task runner '{kind}': use threads or dask")
    if kind == "threads":
        return RunnerChoice("threads", None, workers)
    address = dask_address or settings.dask_address or "local"
    try:  # the same check as the setting's
        IngestSettings(dask_address=address)
    except Exception:
        raise ConfigError(f"dask address '{address}' is neither 'local' nor a scheduler "
                          "address like tcp://host:8786") from None
    return RunnerChoice("dask", address, workers)


def require_dask() -> None:
    """Raise ConfigError (one line: what to install) when the ``dask`` extra is missing."""
    try:
        import distributed  # noqa: F401
        import prefect_dask  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"the Dask task runner needs the 'dask' extra ({exc.name} is not "
                          f"installed): {DASK_INSTALL}") from None


def require_prefect_server() -> None:
    """Raise ConfigError unless ``PREFECT_API_URL`` names a Prefect server.

    Task runs on other processes report to the flow run's API; Prefect's temporary
    in-process server cannot be reached from them.
    """
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        raise ConfigError("the Dask task runner needs a Prefect server that its workers can "
                          "reach: start one (`prefect server start --host 127.0.0.1`) and set "
                          "PREFECT_API_URL=http://127.0.0.1:4200/api")


def preflight(task_runner: str | None, dask_address: str | None) -> None:
    """What the CLI checks before it starts a flow that will run shards on Dask: the extra is
    installed and a Prefect server is configured (ConfigError, one line, otherwise)."""
    from omnifer.config import load_settings

    choice = choose_runner(load_settings().ingest, task_runner, dask_address, 1)
    if choice.kind == "dask":
        require_dask()
        require_prefect_server()


class ShardSubmitter:
    """Submits shard tasks to the chosen runner; :meth:`wait_any` collects finished ones."""

    def __init__(self, choice: RunnerChoice, dask_runner: Any = None, threads: int = 0) -> None:
        self.choice = choice
        self._dask = dask_runner
        # Shards in flight at once: the thread pool's width; on Dask one per worker thread.
        # The next shard goes out when one finishes (milliseconds): more in flight would be
        # queued on a worker ahead of time, and at the end of a night one worker would still
        # hold two shards while another idles (measured: dask/threads 0.83 with two per
        # thread); and thousands of shards would sit pickled in the scheduler's memory.
        self.slots = max(1, threads) if dask_runner else choice.workers

    def alive(self) -> bool:
        """False once the Dask client has lost its scheduler: submit nothing more."""
        return self._dask is None or self._dask.client.status == "running"

    def submit(self, task: Any, **parameters: Any) -> Any:
        """Submit ``task(**parameters)``; returns a PrefectFuture."""
        if self._dask is None:
            return task.submit(**parameters)
        return self._dask.submit(task, parameters)

    def wait_any(self, futures: list[Any], timeout: float = 1.0) -> list[Any]:
        """The futures that have finished, waiting up to ``timeout`` s for at least one.

        Waits on the runner's own futures (thread-pool or Dask), which is free; asking
        ``future.state`` is an HTTP call to the Prefect API each time.
        """
        wrapped = [getattr(f, "wrapped_future", None) for f in futures]
        if self._dask is not None and all(w is not None for w in wrapped):
            import distributed

            try:
                with self._dask.client.as_current():  # prefect-dask's is not the default
                    done, _ = distributed.wait(wrapped, timeout=timeout,
                                               return_when="FIRST_COMPLETED")
            except (TimeoutError, distributed.TimeoutError):
                return []
            except Exception:  # cancelled (scheduler lost): their .result() says so
                done = {w for w in wrapped if w.done()}
                if not done:
                    time.sleep(0.2)
            return [f for f, w in zip(futures, wrapped, strict=True) if w in done]
        if all(isinstance(w, cf.Future) for w in wrapped):
            finished, _ = cf.wait(wrapped, timeout=timeout, return_when=cf.FIRST_COMPLETED)
            return [f for f, w in zip(futures, wrapped, strict=True) if w in finished]
        done = [f for f in futures if f.state.is_final()]  # another runner's futures
        if not done:
            time.sleep(0.05)
        return done


@contextlib.contextmanager
def shard_runner(choice: RunnerChoice) -> Iterator[ShardSubmitter]:
    """Start the chosen runner for the ``with`` block (inside a flow run).

    ``dask``: connects to the scheduler (or starts the LocalCluster) and closes the client
    (and the LocalCluster) at the end. Raises ConfigError when the extra is missing, no
    Prefect server is configured, or the scheduler cannot be reached.
    """
    if choice.kind == "threads":
        yield ShardSubmitter(choice)
        return
    require_dask()
    require_prefect_server()
    import dask
    from prefect_dask import DaskTaskRunner

    logger = get_run_logger()
    if choice.address == "local":
        runner = DaskTaskRunner(cluster_kwargs={
            "n_workers": choice.workers, "threads_per_worker": 1, "processes": True,
            "host": "127.0.0.1", "dashboard_address": None})
    else:
        runner = DaskTaskRunner(address=choice.address, client_kwargs={"timeout": "20s"})
    with runner:
        try:
            # Our own LocalCluster's workers (they take this config when spawned): no
            # statistical profiler sampling their stacks every 10 ms (nobody reads it here).
            with dask.config.set({"distributed.worker.profile.enabled": False}):
                client = runner.client  # connects now: a wrong address fails here, in one line
            info = client.scheduler_info(n_workers=-1)
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cannot reach the Dask scheduler at {choice.address}: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                              ) from None
        workers = info.get("workers", {})
        threads = sum(w.get("nthreads", 0) for w in workers.values())
        logger.info("shards run on Dask: scheduler %s, %d worker(s), %d thread(s)",
                    info.get("address"), len(workers), threads)
        yield ShardSubmitter(choice, runner, threads)


def shard_error(exc: BaseException) -> str:
    """One line for a shard that failed, whichever runner ran it (Dask adds its own kinds:
    a worker that died three times running it, a scheduler that went away)."""
    name = type(exc).__name__
    if name == "KilledWorker":
        return ("its Dask worker died while running it (killed, or out of memory), "
                f"on every try: {str(exc).splitlines()[0]}")
    if name in ("FutureCancelledError", "CancelledError"):
        return f"cancelled by Dask (scheduler or client lost): {exc}".splitlines()[0]
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text or name
