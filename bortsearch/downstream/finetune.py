"""Fine-tuning an encoder on a sentence(-pair) task, as Hugging Face's `run_glue` does.

The model is the one `Encoder` with a sequence-classification head (Hugging
Face's layout; dropout 0.1 in training only). Training is AdamW with linear
warm-up and decay (run_glue's defaults: lr 2e-5, batch 32, 3 epochs, length 128,
10% warm-up, weight decay 0.01, gradient clipping 1.0), evaluated on the dev split
every epoch (or every N steps), keeping the best evaluation's weights. A grid of
learning rates × seeds is run trial by trial; the best trial is exported.

Resumable: each trial checkpoints its training state (Orbax) at every
evaluation; batches, dropout and the head's initialisation are pure functions of
(seed, step), so a killed run continues where it stopped and ends with the same
metrics.

OUT holds, once finished, a Hugging Face folder (`config.json` with
`id2label`, `model.safetensors`, the tokenizer), `metrics.json` (written last:
the completion mark) and `trials/` (each trial's evaluations).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import shutil
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bortsearch.config import (
    fraction,
    option,
    part,
    positive_float,
    positive_int,
    same_option,
    validate,
)
from bortsearch.data.tasks import Encoded, Task, encode, load_task
from bortsearch.downstream import metrics as M
from bortsearch.errors import UserError
from bortsearch.model.arch import Arch
from bortsearch.model.encoder import Encoder, Model, init_params
from bortsearch.model.hf import (
    classifier_config,
    export_tensors,
    load_checkpoint,
    params_from_tensors,
)
from bortsearch.process import setup_process
from bortsearch.runio import check_settings, file_sha256, write_atomic, write_json
from bortsearch.train.fit import LoopConfig, resume, run_steps, save_args
from bortsearch.train.step import OptimConfig, TrainState, apply_gradients, init_state

EVAL_BATCH = 64


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning settings; defaults are Hugging Face run_glue's (warm-up: BERT's 10%).

    Attributes:
      lrs: the peak learning rates of the grid.
      seeds: trials per learning rate, seeds `seed`, `seed` + 1, ...
      epochs: passes over the training split.
      eval_every: steps between dev evaluations (None: once per epoch).
      max_train_samples, max_eval_samples: keep the first N rows of each split.
    """

    lrs: tuple[float, ...] = option((2e-5,), "peak learning rate; repeat for a grid",
                                    flag="--lr", type=positive_float, repeat=True,
                                    metavar="LR")
    epochs: int = option(3, "passes over the training split", type=positive_int)
    batch_size: int = option(32, "examples per step", type=positive_int)
    max_length: int = option(128, "tokens per example, longer ones truncated",
                             type=positive_int, minimum=8)
    warmup: float = same_option(OptimConfig, "warmup", 0.1)
    weight_decay: float = same_option(OptimConfig, "weight_decay")
    seeds: int = option(1, "trials per learning rate, seeds --seed, --seed + 1, ...; reports "
                        "the best and the median over seeds", type=positive_int)
    seed: int = option(0, "the first seed", type=int)
    eval_every: int | None = option(None, "steps between dev evaluations", type=positive_int,
                                    default_text="every epoch")
    max_train_samples: int | None = option(None, "use the first N training rows",
                                           type=positive_int, metavar="N")
    max_eval_samples: int | None = option(None, "use the first N rows of each dev split",
                                          type=positive_int, metavar="N")
    dropout: float = option(0.1, "hidden and attention dropout while training",
                            type=fraction)
    adam_eps: float = same_option(OptimConfig, "adam_eps", 1e-8)
    clip: float = same_option(OptimConfig, "clip")
    dtype: str = same_option(LoopConfig, "dtype")

    def __post_init__(self):
        if not self.lrs:
            raise UserError("--lr: give at least one learning rate")
        validate(self)


# ---------------------------------------------------------------- data


# ---------------------------------------------------------------- steps


def _loss(params, arch: Arch, num_labels: int, dropout: float, batch, key, dtype="float32"):
    logits = Encoder(arch, num_labels=num_labels, dropout=dropout, dtype=dtype).apply(
        params, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
        deterministic=False, rngs={"dropout": key})
    if num_labels == 1:  # regression: mean squared error, as Hugging Face
        per_row = (logits[:, 0] - batch["labels"]) ** 2
    else:
        logp = jax.nn.log_softmax(logits)
        per_row = -jnp.take_along_axis(logp, batch["labels"][:, None], -1)[:, 0]
    w = batch["weights"]
    return (per_row * w).sum() / jnp.maximum(w.sum(), 1.0)


@functools.partial(jax.jit, static_argnames=("arch", "num_labels", "dropout", "cfg", "dtype"),
                   donate_argnums=0)
def finetune_step(state: TrainState, batch, key, *, arch: Arch, num_labels: int,
                  dropout: float, cfg: OptimConfig, dtype: str = "float32"):
    """One AdamW step on a classification (or regression) batch, dropout on, the
    model computing in `dtype` (dev evaluation is float32)."""
    loss, grads = jax.value_and_grad(_loss)(state.params, arch, num_labels, dropout, batch, key,
                                            dtype)
    return apply_gradients(state, grads, cfg), loss


@functools.partial(jax.jit, static_argnames=("arch", "num_labels"))
def _predict(params, batch, *, arch: Arch, num_labels: int):
    return Encoder(arch, num_labels=num_labels).apply(
        params, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])


def predict(arch: Arch, num_labels: int, params, data: Encoded, max_length: int) -> np.ndarray:
    """Class ids (or regression values) for every row, batched by length."""
    return _predictions(data, max_length, num_labels, EVAL_BATCH, lambda batch: np.asarray(
        _predict(params, batch, arch=arch, num_labels=num_labels)))


def _predictions(data: Encoded, max_length: int, num_labels: int, pad_to: int | None,
                 logits_of) -> np.ndarray:
    """Rows sorted by length, EVAL_BATCH at a time (padded to `pad_to` rows, or
    not at all), through `logits_of(batch)`; class ids or regression values."""
    order = np.argsort(data.lengths, kind="stable")
    out = np.zeros(len(order), np.float32 if num_labels == 1 else np.int32)
    for start in range(0, len(order), EVAL_BATCH):
        rows = order[start:start + EVAL_BATCH]
        logits = logits_of(data.batch(rows, pad_to or len(rows), max_length))[:len(rows)]
        out[rows] = logits[:, 0] if num_labels == 1 else logits.argmax(-1)
    return out


def evaluate(task: Task, arch: Arch, params, devs: dict[str, Encoded], max_length: int) -> dict:
    """Each dev split's metrics, and `score`: the first split's GLUE score."""
    out = {}
    for name, data in devs.items():
        out[name] = M.compute(task.spec.metrics,
                              predict(arch, task.num_labels, params, data, max_length),
                              data.labels)
    out["score"] = M.score(next(iter(out.values())), task.spec.metrics)
    return out


# ---------------------------------------------------------------- trials


def initial_params(encoder: Model, num_labels: int, seed: int):
    """The head from Normal(0, 0.02) for `seed`; embeddings, layers and what of the head
    the checkpoint has trained (BERT's pooler; ModernBERT's prediction head, which its
    classifier reads before the output layer) from the checkpoint."""
    fresh = init_params(encoder.arch, seed, num_labels)["params"]
    trained = encoder.params["params"]
    return {"params": {**fresh, **trained, "classifier": {
        **fresh["classifier"], **trained.get("classifier", {})}}}


def _trial_dir(out: Path, lr: float, seed: int) -> Path:
    return out / "trials" / f"lr{lr:g}-seed{seed}"


def run_trial(encoder: Model, task: Task, train: Encoded, devs: dict[str, Encoded],
              cfg: FinetuneConfig, lr: float, seed: int, work: Path, bar=None) -> dict:
    """Fine-tune one (lr, seed); resume from `work` if it holds a checkpoint.

    `work/evals.jsonl` has one line per evaluation, `work/best.safetensors` the
    best evaluation's weights (Hugging Face names), `work/result.json` marks the
    trial finished (its checkpoints are then removed).
    """
    if (work / "result.json").is_file():
        result = json.loads((work / "result.json").read_text())
        if bar is not None:
            bar.update(result["steps"])
        return result
    arch, n_labels = encoder.arch, task.num_labels
    per_epoch = -(-len(train.labels) // cfg.batch_size)
    steps = per_epoch * cfg.epochs
    eval_every = cfg.eval_every or per_epoch
    optim = part(OptimConfig, cfg, steps=steps)
    manager, start, state = resume(work, init_state(initial_params(encoder, n_labels, seed),
                                                    lr, optim), optim, "evals.jsonl")
    journal = work / "evals.jsonl"
    evals = [json.loads(line) for line in journal.read_text().splitlines()] \
        if journal.is_file() else []
    best = max((e["score"] for e in evals), default=-math.inf)
    key = jax.random.key(seed)
    if bar is not None:
        bar.update(start)
    losses, train_s, t0 = [], 0.0, time.perf_counter()
    orders: dict[int, np.ndarray] = {}  # the epoch's shuffle, drawn once per epoch

    def step(k: int):
        nonlocal state
        epoch, i = divmod(k, per_epoch)
        if epoch not in orders:
            orders.clear()
            orders[epoch] = np.random.default_rng([seed, epoch]).permutation(len(train.labels))
        batch = train.batch(orders[epoch][i * cfg.batch_size:(i + 1) * cfg.batch_size],
                            cfg.batch_size, cfg.max_length)
        state, loss = finetune_step(state, batch, jax.random.fold_in(key, k), arch=arch,
                                    num_labels=n_labels, dropout=cfg.dropout, cfg=optim,
                                    dtype=cfg.dtype)
        losses.append(loss)
        return loss

    def evaluate_dev(done: int) -> None:
        nonlocal best, losses, train_s
        jax.block_until_ready(state)
        train_s += time.perf_counter() - t0
        dev = evaluate(task, arch, state.params, devs, cfg.max_length)
        record = {"step": done, "epoch": round(done / per_epoch, 4),
                  "train_loss": float(np.mean(jax.device_get(losses))), **dev}
        losses = []
        if dev["score"] > best:  # weights first, then the journal, then the checkpoint
            best = dev["score"]
            from safetensors.numpy import save

            write_atomic(work / "best.safetensors",
                         save(export_tensors(Model(arch, jax.device_get(state.params)),
                                             n_labels), metadata={"format": "pt"}))
        log.write(json.dumps(record) + "\n")
        log.flush()
        evals.append(record)
        if bar is not None:
            bar.set_postfix({"lr": f"{lr:g}", "seed": seed,
                             "dev": f"{dev['score']:.3f}", "best": f"{best:.3f}"},
                            refresh=False)

    def save_state(done: int) -> None:
        nonlocal t0
        manager.save(done, args=save_args(state))
        t0 = time.perf_counter()  # training time resumes after the evaluation and its save

    with open(journal, "a") as log:
        run_steps(start, steps, step, eval_every=eval_every, checkpoint_every=eval_every,
                  evaluate=evaluate_dev, save=save_state, bar=bar)
    manager.close()
    chosen = max(evals, key=lambda e: e["score"])  # the first of equals: the earliest
    ran = steps - start
    result = {"lr": lr, "seed": seed, "steps": steps, "best_step": chosen["step"],
              "best_epoch": chosen["epoch"], "score": chosen["score"],
              "dev": {k: v for k, v in chosen.items() if k in devs},
              "train_seconds_per_epoch": train_s / max(ran, 1) * per_epoch if ran else None,
              "train_examples_per_s": ran * cfg.batch_size / train_s if ran and train_s else None}
    write_json(work / "result.json", result)
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    return result


def fingerprint_model(folder: Path) -> str:
    """A hash of a checkpoint folder's config and weights."""
    return hashlib.sha256("".join(
        file_sha256(folder / name) for name in ("config.json", "model.safetensors",
                                                 "pytorch_model.bin")
        if (folder / name).is_file()).encode()).hexdigest()


@dataclasses.dataclass
class Job:
    """One (model, task) fine-tuning, prepared: its grid of (lr, seed) trials and
    the folder they go in. `metrics` is set when `out` already holds a finished
    run. Its splits are encoded (`train`, `devs`) by `encode()`, when something
    needs them: a finished run read back never tokenises them."""

    model: Path
    out: Path
    cfg: FinetuneConfig
    task: Task
    encoder: Model
    grid: list
    metrics: dict | None = None
    t_start: float = 0.0
    train: Encoded | None = None
    devs: dict | None = None

    def encode(self) -> Job:
        if self.train is None:
            tok, length = self.encoder.tokenizer, self.cfg.max_length
            types = self.encoder.arch.type_vocab_size
            self.train = encode(tok, self.task.train, length, types)
            self.devs = {k: encode(tok, v, length, types) for k, v in self.task.devs.items()}
        return self

    def pending(self) -> list[tuple[float, int]]:
        """The (lr, seed) trials not finished yet."""
        return [(lr, seed) for lr, seed in self.grid
                if not (_trial_dir(self.out, lr, seed) / "result.json").is_file()]

    @property
    def steps_per_trial(self) -> int:
        return -(-len(self.train.labels) // self.cfg.batch_size) * self.cfg.epochs


def prepare(model: str | Path, task: str, data: str | Path, out: str | Path,
            cfg: FinetuneConfig = FinetuneConfig(), text_fields: str | None = None,
            label_field: str | None = None, regression: bool = False) -> Job:
    """Everything `finetune` checks and reads before training: the folders, the
    task, the encoder, the settings (written, or checked against a run in `out`)."""
    model, out = Path(model), Path(out)
    t_start = time.perf_counter()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; give a folder for the fine-tuned model")
    if out.is_dir() and any(out.iterdir()) and not (out / "settings.json").is_file():
        raise UserError(f"--out {out}: exists, holds files and is not a fine-tuning run; "
                        f"choose a new folder")
    tsk = load_task(task, data, text_fields, label_field, regression,
                    cfg.max_train_samples, cfg.max_eval_samples)
    encoder = load_checkpoint(model, part="encoder")
    arch = encoder.arch
    if cfg.max_length > arch.max_seq_len:
        raise UserError(f"--max-length {cfg.max_length} is longer than {model} allows "
                        f"({arch.max_seq_len} positions); use --max-length {arch.max_seq_len} "
                        f"or less")
    settings = {"model": str(model.resolve()), "model_sha256": fingerprint_model(model),
                "task": tsk.name, "data_sha256": tsk.fingerprint,
                **{k: list(v) if isinstance(v, tuple) else v
                   for k, v in dataclasses.asdict(cfg).items()}}
    finished = (out / "metrics.json").is_file()
    check_settings(out / "settings.json", settings, f"the fine-tuning in {out}",
                   "choose a new --out folder, or remove it to start over" if finished else
                   f"re-run with the same flags, or remove {out} to start over")
    grid = [(lr, cfg.seed + k) for lr in cfg.lrs for k in range(cfg.seeds)]
    metrics = json.loads((out / "metrics.json").read_text()) if finished else None
    job = Job(model, out, cfg, tsk, encoder, grid, metrics, t_start)
    return job if finished else job.encode()


def run_trials(jobs: list[Job], executor=None, progress: bool = True) -> None:
    """Train every pending trial of `jobs`: here, one after another, or with a
    `RayTrials` executor as Ray tasks, all at once."""
    from bortsearch.runio import progress_bar

    todo = [(job, lr, seed) for job in jobs if job.metrics is None for lr, seed in job.pending()]
    if not todo:
        return
    for job, _, _ in todo:
        job.encode()
    bar = progress_bar(total=sum(job.steps_per_trial for job, _, _ in todo), unit="step",
                       desc=f"finetune {jobs[0].task.name}" if len(jobs) == 1 else "finetune",
                       disable=not progress)
    if executor is None:
        for job, lr, seed in todo:
            run_trial(job.encoder, job.task, job.train, job.devs, job.cfg, lr, seed,
                      _trial_dir(job.out, lr, seed), bar)
    else:
        executor(todo, bar)
    bar.close()


def finetune(model: str | Path, task: str, data: str | Path, out: str | Path,
             cfg: FinetuneConfig = FinetuneConfig(), text_fields: str | None = None,
             label_field: str | None = None, regression: bool = False,
             progress: bool = True, int8: bool = False, executor=None) -> dict:
    """Fine-tune `model` (a Hugging Face folder of any family read, with or without a
    masked-LM head) on `task` and export the best trial to `out`.

    Returns the metrics written to `out/metrics.json`: `dev` (the chosen trial's
    dev metrics by name), `score`, `grid` (every trial), `median_over_seeds` (per
    learning rate), the majority-class baseline and timings. Re-running finishes
    at once when `out` is complete, and resumes when it is not. `int8` also
    writes the classifier as ONNX (`model.onnx`, `model_quantized.onnx`) and
    evaluates the int8 graph in ONNX Runtime on the dev splits (`metrics["int8"]`:
    its dev metrics, score, and both graphs' latency at batch 1, length 128); a
    finished fine-tuning re-run with `int8` adds it without training again.
    `executor`: where the trials train (None: here; `RayTrials`: a Ray cluster).
    """
    setup_process()
    if int8:
        from bortsearch.deploy.onnx_export import require_onnx

        require_onnx()
    job = prepare(model, task, data, out, cfg, text_fields, label_field, regression)
    run_trials([job], executor, progress)
    return finish(job, int8)


def finish(job: Job, int8: bool = False) -> dict:
    """The metrics of a job whose trials are all finished, written to its
    `metrics.json` with the chosen trial exported (or read back when done)."""
    out, tsk, cfg = job.out, job.task, job.cfg
    if job.metrics is not None:
        metrics = job.metrics
        if int8 and "int8" not in metrics:
            metrics["int8"] = evaluate_int8(out, tsk, job.encode().devs, cfg.max_length,
                                            metrics["grid"])
            write_json(out / "metrics.json", metrics)
        return metrics
    job.encode()
    trials = [run_trial(job.encoder, tsk, job.train, job.devs, cfg, lr, seed,
                        _trial_dir(out, lr, seed)) for lr, seed in job.grid]  # read back
    best = max(trials, key=lambda t: t["score"])  # ties: the earlier in the grid
    medians = {}
    for lr in cfg.lrs:
        mine = [t for t in trials if t["lr"] == lr]
        split = next(iter(tsk.devs))
        medians[f"{lr:g}"] = {
            "score": statistics.median(t["score"] for t in mine),
            **{m: statistics.median(t["dev"][split][m] for t in mine) for m in tsk.spec.metrics}}
    split = next(iter(tsk.devs))
    majority = {k: M.majority(tsk.spec.metrics, tsk.train.y, v.y, tsk.spec.regression)
                for k, v in tsk.devs.items()}
    metrics = {
        "task": tsk.name, "model": str(job.model), "metrics": list(tsk.spec.metrics),
        "dev": best["dev"][split], "dev_splits": best["dev"], "score": best["score"],
        "chosen": {"lr": best["lr"], "seed": best["seed"], "step": best["best_step"],
                   "epoch": best["best_epoch"]},
        "median_over_seeds": medians, "grid": trials,
        "majority": majority[split],
        "majority_score": M.score(majority[split], tsk.spec.metrics),
        "train_examples": len(tsk.train), "dev_examples": {k: len(v) for k, v in tsk.devs.items()},
        "seconds_per_epoch": statistics.median(
            t["train_seconds_per_epoch"] for t in trials
            if t["train_seconds_per_epoch"] is not None) if any(
            t["train_seconds_per_epoch"] is not None for t in trials) else None,
        "wall_seconds": time.perf_counter() - job.t_start,
    }
    export_classifier(out, job.encoder, tsk, _trial_dir(out, best["lr"], best["seed"]))
    if int8:
        metrics["int8"] = evaluate_int8(out, tsk, job.devs, cfg.max_length, trials)
    write_json(out / "metrics.json", metrics)
    return metrics


def evaluate_int8(out: Path, task: Task, devs: dict[str, Encoded], max_length: int,
                  grid: list[dict]) -> dict:
    """The exported classifier as ONNX, float32 and dynamic int8, written beside it;
    every trial's best weights quantised and scored on the dev splits in ONNX
    Runtime (`grid`: its int8 score beside its float32 one, so the cost of
    quantising is measured per seed); the exported trial's int8 metrics; both
    graphs' latency at batch 1, length 128."""
    import tempfile

    from safetensors.numpy import load_file

    from bortsearch.deploy.latency import measure_onnx_latency
    from bortsearch.deploy.onnx_export import INT8_NAME, ONNX_NAME, session, write_graphs
    from bortsearch.model.hf import load
    from bortsearch.runio import atomic_dir

    model = load(out)
    with atomic_dir(out / "onnx") as tmp:  # whole or not at all, then moved beside the model
        write_graphs(tmp, model, int8=True)
    for name in (ONNX_NAME, INT8_NAME):
        (out / "onnx" / name).replace(out / name)
    (out / "onnx").rmdir()

    def scores(graph: Path) -> dict:
        sess = session(graph)
        return {name: M.compute(task.spec.metrics, predict_onnx(sess, task.num_labels, data,
                                                                 max_length), data.labels)
                for name, data in devs.items()}

    dev = scores(out / INT8_NAME)
    first = next(iter(dev))
    exported = max(grid, key=lambda t: t["score"])  # `finish`'s choice: its graph is the one above
    trials = []
    for t in grid:
        if t is exported:
            trials.append({"lr": t["lr"], "seed": t["seed"], "fp32_score": t["score"],
                           "score": M.score(dev[first], task.spec.metrics)})
            continue
        trial = _trial_dir(out, t["lr"], t["seed"])
        params = params_from_tensors(model.arch, load_file(str(trial / "best.safetensors")),
                                     trial, "classifier", task.num_labels)
        with tempfile.TemporaryDirectory(prefix="bortsearch-int8-") as d:
            write_graphs(Path(d), Model(model.arch, params, num_labels=task.num_labels), True)
            mine = scores(Path(d) / INT8_NAME)
        trials.append({"lr": t["lr"], "seed": t["seed"], "fp32_score": t["score"],
                       "score": M.score(mine[first], task.spec.metrics)})
    length = min(LATENCY_LENGTH, model.arch.max_seq_len)
    latency = {rt: 1e3 * measure_onnx_latency(model, 1, length, int8=rt == "int8",
                                              repeats=10)["median_s"]
               for rt in ("fp32", "int8")}
    return {"dev": dev[first], "dev_splits": dev,
            "score": M.score(dev[first], task.spec.metrics), "grid": trials,
            "latency_ms": latency["int8"], "fp32_latency_ms": latency["fp32"],
            "latency_length": length, "runtime": "onnxruntime (CPU, every core)"}


LATENCY_LENGTH = 128


def predict_onnx(sess, num_labels: int, data: Encoded, max_length: int) -> np.ndarray:
    """`predict` through an ONNX Runtime session of the classifier's graph (no
    padded rows: its batch axis is dynamic)."""
    from bortsearch.deploy.onnx_export import run_logits

    return _predictions(data, max_length, num_labels, None, lambda b: run_logits(
        sess, b["input_ids"], b["attention_mask"], b["token_type_ids"]))


def export_classifier(out: Path, encoder: Model, task: Task, trial: Path) -> None:
    """The chosen trial's best weights as a Hugging Face sequence classifier."""
    from safetensors.numpy import load_file

    arch = encoder.arch
    tensors = load_file(str(trial / "best.safetensors"))
    params_from_tensors(arch, dict(tensors), trial, "classifier", task.num_labels)  # validates
    config = classifier_config(arch, encoder.tokenizer, task.spec.label_names, task.name)
    write_atomic(out / "config.json", json.dumps(config, indent=2))
    write_atomic(out / "model.safetensors", (trial / "best.safetensors").read_bytes())
    encoder.tokenizer.save(out, model_max_length=arch.max_seq_len)
