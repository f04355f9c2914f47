"""Where candidates train: here (`local`), or spread over a Ray cluster (`ray`).

An executor takes the candidates Algorithm 1 asks for and returns their
`Evaluation`s, calling `on_start` / `on_done` for each so that the driver journals
them. The driver stays the only writer of the run folder: Ray workers get the
teacher, the data and the held-out reference from the object store (put there
once; no shared file system is needed), train one candidate each, and return its
evaluation and timing. A worker that dies (killed, node lost) is retried by Ray up
to `max_retries` times; after that the candidate is recorded `failed` with the
reason and the search goes on. Out-of-memory and NaN are recorded inside the
task, as they are locally.

Why Ray core tasks rather than Ray Tune: each candidate is one self-contained
function call with a result for the journal; Tune's trial scheduler, checkpoint
store and result logging would duplicate what the journal already does.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable

import numpy as np

from bortsearch.allocator import tunables
from bortsearch.errors import UserError
from bortsearch.model.arch import Arch
from bortsearch.process import setup_process
from bortsearch.search.algorithm import FAILED, Evaluation

EXECUTORS = ("local", "ray")


class LocalExecutor:
    """Today's behaviour: lockstep groups on this process's devices."""

    def __call__(self, teacher, data, settings, reference, archs: list[Arch],
                 on_start: Callable, on_done: Callable, on_step: Callable,
                 checkpoints=None, checkpoint_every: int = 50) -> dict:
        from bortsearch.search.candidates import CandidateTrainer

        return CandidateTrainer(teacher, data, settings, on_start, on_done, on_step,
                                reference, checkpoints, checkpoint_every)(archs)


def _train_one(teacher, data, reference, settings, arch: Arch, checkpoints: str | None = None,
               checkpoint_every: int = 50):
    """A Ray task: one candidate, trained and measured on the worker (its training
    states in `checkpoints`, a folder every worker sees, when given: a retried
    task continues from the last one)."""
    setup_process()
    from pathlib import Path

    from bortsearch.runio import enable_compilation_cache
    from bortsearch.search.candidates import CandidateTrainer

    enable_compilation_cache()  # the worker machine's own persistent cache

    out = {}
    trainer = CandidateTrainer(teacher, data, settings,
                               on_done=lambda a, ev, timing: out.update(timing=timing),
                               reference=reference,
                               checkpoints=Path(checkpoints) if checkpoints else None,
                               checkpoint_every=checkpoint_every)
    ev = trainer([arch])[arch]
    timing = out.get("timing")
    if timing is not None:
        import ray

        timing = dataclasses.replace(timing, node=ray.get_runtime_context().get_node_id())
    return ev, timing


def _local_cluster_token() -> None:
    """Token authentication for a local cluster without a file in the home folder.

    A local `ray.init()` turns Ray's token authentication on and, when no token is
    set, writes one to `~/.ray/auth_token`; every later `ray start --head` on the
    machine then reads it and turns authentication on, while nodes that join with
    `ray start --address` do not send it (Ray 2.60). A fresh token in this process's
    environment, which the local cluster's processes inherit, keeps authentication
    on and writes nothing. A token or mode the user set, and a token file that is
    there already (a cluster started with `ray start` on this machine, which
    `ray.init()` joins, may need it), are left as they are."""
    import secrets
    from pathlib import Path

    if not any(k in os.environ for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
                                          "RAY_AUTH_TOKEN_PATH")) \
            and not (Path.home() / ".ray" / "auth_token").exists():
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # ray.init sets the mode


@dataclasses.dataclass
class RayExecutor:
    """Candidates as Ray tasks, one per candidate.

    Attributes:
      address: a running cluster (`ray start --head` prints it; "auto" finds a
        local one); None starts a local cluster for this process.
      num_cpus, num_gpus: what each task declares (default: one GPU where the
        cluster has GPUs, else one CPU).
      max_retries: times a task whose worker died is run again.
      storage: a folder every worker can write and read (a shared disk, NFS): the
        candidates' training states go there, so that a task retried on any
        worker continues from its last checkpoint instead of step 0. None: a
        retried task starts its candidate again (the results are the same).
    """

    address: str | None = None
    num_cpus: float | None = None
    num_gpus: float | None = None
    max_retries: int = 2
    storage: str | None = None

    def connect(self):
        """The `ray` module, connected to the cluster at `address` (started locally when
        none is given); a clear error when Ray is missing or the cluster is unreachable."""
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'bortsearch[ray]'") from None
        if not ray.is_initialized():
            # One task per device and no pre-allocation: JAX processes sharing a GPU
            # would otherwise each claim 75% of its memory.
            # Workers keep freed memory as this process does (bortsearch/allocator.py).
            env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", **tunables()}
            if self.address is None:
                _local_cluster_token()
            try:
                ray.init(address=self.address, include_dashboard=False,
                         ignore_reinit_error=True, log_to_driver=False,
                         logging_level=logging.WARNING, runtime_env={"env_vars": env})
            except (ConnectionError, ValueError, RuntimeError) as e:
                if "InvalidAuthToken" in repr(e.__cause__ or e.__context__):
                    where = (f"--ray-address {self.address}" if self.address else
                             "the Ray cluster on this machine (`ray start`)")
                    raise UserError(
                        f"{where}: the cluster uses token "
                        f"authentication and refused this process's token (none, or another "
                        f"cluster's); give the cluster's token: RAY_AUTH_TOKEN=TOKEN, or "
                        f"RAY_AUTH_TOKEN_PATH=FILE (default ~/.ray/auth_token)") from None
                raise UserError(f"--ray-address {self.address}: cannot connect to a Ray "
                                f"cluster ({e}); start one with `ray start --head`, or leave "
                                f"--ray-address out to start a local one") from None
        return ray


    def resources(self, ray) -> dict:
        """What each task declares: as given, else one GPU where there are GPUs."""
        gpus = self.num_gpus
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) else 0
        return {"num_cpus": 1 if self.num_cpus is None else self.num_cpus, "num_gpus": gpus}

    def __call__(self, teacher, data, settings, reference, archs: list[Arch],
                 on_start: Callable, on_done: Callable, on_step: Callable,
                 checkpoints=None, checkpoint_every: int = 50) -> dict:
        """(`checkpoints`, the run's own folder, is for local runs: workers share no
        file system with the driver. With `storage`, the same layout under it,
        keyed by the run, is where the workers checkpoint.)"""
        import jax

        ray = self.connect()
        # Into the object store once: NumPy arrays, so that workers need no devices
        # of the driver's kind and no file the driver can see.
        teacher_ref = ray.put(dataclasses.replace(
            teacher, params=jax.tree.map(np.asarray, teacher.params)))
        data_ref = ray.put(data)
        reference_ref = ray.put(dataclasses.replace(
            reference, batches=[jax.tree.map(np.asarray, b) for b in reference.batches],
            teacher=[np.asarray(t) for t in reference.teacher]))
        task = ray.remote(_train_one).options(max_retries=self.max_retries,
                                              retry_exceptions=False, **self.resources(ray))
        shared = None
        if self.storage and checkpoints is not None:
            import hashlib
            from pathlib import Path

            run_key = hashlib.sha256(str(Path(checkpoints).resolve().parent.parent).encode())
            shared = str(Path(self.storage) / run_key.hexdigest()[:16] / Path(checkpoints).name)
        pending = {}
        for arch in archs:
            on_start(arch)
            pending[task.remote(teacher_ref, data_ref, reference_ref, settings, arch, shared,
                                checkpoint_every)] = arch
        results = {}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            arch = pending.pop(done[0])
            try:
                ev, timing = ray.get(done[0])
            except ray.exceptions.RayError as e:  # the worker died max_retries + 1 times
                reason = str(e).strip().splitlines()[0][:200]
                ev, timing = Evaluation(FAILED, reason=f"worker failed after "
                                        f"{self.max_retries} retries: {reason}"), None
            results[arch] = ev
            on_done(arch, ev, timing)
            on_step(settings.steps)  # a whole candidate's worth of steps
        return results


def make_executor(name: str, address: str | None = None, num_cpus: float | None = None,
                  num_gpus: float | None = None, max_retries: int = 2,
                  storage: str | None = None):
    if name == "local":
        if storage:
            raise UserError("--storage is where Ray workers checkpoint; give --executor ray, "
                            "or leave --storage out (a local run checkpoints in its run folder)")
        return LocalExecutor()
    if name == "ray":
        if storage and "://" in storage:
            raise UserError(f"--storage {storage}: give a folder every worker mounts (a "
                            f"shared disk, NFS); remote object stores are not supported yet")
        return RayExecutor(address, num_cpus, num_gpus, max_retries, storage)
    raise UserError(f"--executor {name!r}: use one of {', '.join(EXECUTORS)}")

