"""Training past one machine: joining a multi-process JAX job.

`pretrain` and `teacher` are data parallel over `jax.devices()`; after
`initialize`, that is every device of every process of the job, so one global
batch is split over all of them and XLA's all-reduce (Gloo between CPU
processes, NCCL between GPUs) sums the gradients. Every process computes the
same global batch from the step number and keeps its own rows; Orbax writes each
checkpoint once, cooperatively, and every process restores it. Everything else
the tool writes (metrics, the export, the teacher folder) is written by process 0
only (`is_primary`).

The checkpoint folder must be one folder that every process sees (the same
path on a shared filesystem): that is what lets a killed job resume.
"""

from __future__ import annotations

from bortsearch.errors import UserError

AUTO = "auto"


def check_flags(coordinator: str | None, num_processes: int | None,
                process_id: int | None) -> None:
    """Refuse an incomplete or inconsistent set of job flags, before any work."""
    if coordinator is None:
        if num_processes is not None or process_id is not None:
            raise UserError("--num-processes and --process-id join a multi-process job: give "
                            "--coordinator HOST:PORT too (the address of process 0), or "
                            "--coordinator auto under SLURM or Open MPI")
        return
    if coordinator == AUTO:
        return
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--coordinator {coordinator}: give HOST:PORT (process 0's address "
                        f"and a free port, the same on every process), or 'auto' under a "
                        f"launcher JAX detects (SLURM, Open MPI)")
    if num_processes is None or process_id is None:
        raise UserError("--coordinator HOST:PORT needs --num-processes N and --process-id I "
                        "(0 ≤ I < N, a different I on each process)")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise UserError(f"--process-id {process_id} must be in 0..{num_processes - 1} for "
                        f"--num-processes {num_processes}")


# How long the coordination service waits for a silent process before it fails the
# job (JAX's default: 100 s). A killed process is noticed by the others at their next
# collective at once, but a process waiting at a barrier (Orbax's, as a checkpoint is
# written) only learns of it from the missed heartbeats. The heartbeats come from a
# thread of their own, so a long compile or a loaded machine does not delay them.
HEARTBEAT_TIMEOUT_S = 15


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = 300) -> None:
    """Join the job (`jax.distributed.initialize`) before any JAX computation.

    `coordinator` is process 0's HOST:PORT (with `num_processes` and this
    process's `process_id`), or "auto" for JAX's detection under SLURM, Open MPI
    and the other launchers it knows. None: a single-process run; nothing to do.
    """
    check_flags(coordinator, num_processes, process_id)
    if coordinator is None:
        return
    import jax

    if jax.distributed.is_initialized():
        return
    kwargs = ({} if coordinator == AUTO else
              {"coordinator_address": coordinator, "num_processes": num_processes,
               "process_id": process_id})
    try:
        jax.distributed.initialize(initialization_timeout=timeout_s,
                                   heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S, **kwargs)
    except (RuntimeError, ValueError) as e:
        where = ("the launcher's environment" if coordinator == AUTO
                 else f"the coordinator {coordinator}")
        raise UserError(f"could not join the multi-process job through {where}: {e}. Start "
                        f"every process within {timeout_s} s with the same --coordinator and "
                        f"--num-processes and its own --process-id, and check that process "
                        f"0's host accepts connections on that port") from None


def is_primary() -> bool:
    """True in process 0 (and in a single-process run): the one that writes files."""
    import jax

    return jax.process_index() == 0


def in_job() -> bool:
    """True when this process has joined a multi-process job."""
    import sys

    if "jax" not in sys.modules:
        return False
    import jax

    return jax.distributed.is_initialized() and jax.process_count() > 1


def leave_failed_job(error: BaseException) -> None:
    """Say what happened and exit at once, without JAX's shutdown barrier.

    When one process of a job dies, the others fail at their next collective
    (Gloo: "connection closed by peer"), or at a barrier once its heartbeats have
    stopped for HEARTBEAT_TIMEOUT_S; left to itself, JAX would then wait at its
    shutdown barrier until the heartbeat timeout and abort with a page of logs.
    (At a barrier, JAX's own error poller may learn of the failure first; JAX
    then aborts the process itself, with its logs, as soon.) The checkpoints are
    written synchronously, so there is nothing to flush: the job resumes from its
    last one when restarted.
    """
    import os
    import sys

    import jax

    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    print(f"bortsearch: error: process {jax.process_index()} of {jax.process_count()} "
          f"stopped: {first}. Another process of the job has most likely stopped; stop what "
          f"is left of the job and start every process again with the same command: it "
          f"resumes from the last checkpoint", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)
