"""Maximum-point training: the reference model T when no teacher is given.

Trains T (the architecture of Ξ with the largest p̂, then î; or one given) with
the masked-LM objective on the corpus, and writes a Hugging Face checkpoint
folder that `bortsearch.load` and `transformers` read. Work in progress lives in
a hidden sibling folder `.NAME.partial/` (Orbax checkpoints, metrics), so a
killed run resumes; the output folder appears only when training is complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from bortsearch.config import (
    non_negative_int,
    option,
    part,
    positive_float,
    same_option,
    validate,
)
from bortsearch.data.batches import BatchSpec, load_data
from bortsearch.data.corpus import Corpus
from bortsearch.data.tokenizer import Tokenizer
from bortsearch.errors import UserError
from bortsearch.model.arch import Arch
from bortsearch.model.encoder import Model, init_params
from bortsearch.model.hf import load_checkpoint, save_checkpoint, weights_sha256
from bortsearch.process import setup_process
from bortsearch.runio import check_settings
from bortsearch.train.distributed import is_primary
from bortsearch.train.fit import LoopConfig, fit
from bortsearch.train.step import OptimConfig, mlm_quality

# `teacher --init-from` an encoder without a masked-LM head: steps of the new head
# alone before the whole model trains (a head drawn at random would otherwise send
# large gradients into the pretrained encoder at the first steps).
NEW_HEAD_STEPS = 100


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """How the maximum point (or a continued checkpoint) is trained; defaults sized for
    the demo on 2 cores. Each field is also the `teacher` command's flag.

    `head_steps` > 0 first trains the masked-LM head alone, the rest frozen (a new
    head on a pretrained encoder), then the whole model for `steps` with the
    encoder at `body_lr` (default `lr`); the better of the two on the held-out
    set, at [MASK] positions, is kept. None in either means "as `resolved` says"."""

    steps: int = same_option(LoopConfig, "steps", 600)
    lr: float = same_option(LoopConfig, "lr", 1e-3)
    warmup: float = same_option(OptimConfig, "warmup", 0.05)
    batch_size: int = same_option(BatchSpec, "batch_size")
    seq_len: int = same_option(BatchSpec, "seq_len")
    seed: int = same_option(BatchSpec, "seed")
    eval_every: int = same_option(LoopConfig, "eval_every")
    checkpoint_every: int = same_option(LoopConfig, "checkpoint_every")
    head_steps: int | None = option(
        None, "steps that train the masked-LM head alone, the encoder frozen, before --steps "
        "of the whole model; the better of the two on the held-out set is kept",
        type=non_negative_int, default_text=f"{NEW_HEAD_STEPS} for a new head, else 0")
    body_lr: float | None = option(
        None, "the encoder's peak learning rate while the whole model trains",
        type=positive_float, default_text="--lr / 10 for a new head on a pretrained encoder, "
        "else --lr")

    def __post_init__(self):
        validate(self)

    @property
    def batch(self) -> BatchSpec:
        return part(BatchSpec, self)

    def resolved(self, new_head: bool = False) -> TeacherConfig:
        """`head_steps` and `body_lr` where not given: a new masked-LM head on a
        pretrained encoder first trains alone for NEW_HEAD_STEPS, then the encoder at
        lr / 10; otherwise no head stage and one learning rate."""
        return dataclasses.replace(
            self, head_steps=self.head_steps if self.head_steps is not None else
            (NEW_HEAD_STEPS if new_head else 0),
            body_lr=self.body_lr if self.body_lr is not None else
            (self.lr / 10 if new_head else None))

    def record(self) -> dict:
        """The settings as JSON, in the form teacher caches are keyed by."""
        r = self.resolved()
        return {"steps": r.steps, "lr": r.lr, "warmup": r.warmup,
                "batch": dataclasses.asdict(r.batch), "eval_every": r.eval_every,
                "checkpoint_every": r.checkpoint_every, "head_steps": r.head_steps,
                "body_lr": r.body_lr}


def check_seq_len(arch: Arch, seq_len: int) -> None:
    if seq_len > arch.max_seq_len:
        raise UserError(f"--seq-len {seq_len} is longer than the {arch.max_seq_len} positions "
                        f"the model has (max_positions {arch.max_positions}); lower --seq-len "
                        f"or raise max_positions in the space file")


def train_teacher(out: str | Path, arch: Arch, corpus: Corpus, tokenizer: Tokenizer,
                  cfg: TeacherConfig, progress: bool = True,
                  init_from: str | Path | None = None, init_model: Model | None = None) -> dict:
    """Train `arch` with the masked-LM objective and write it to `out`.

    Returns the summary also written to `out/bortsearch.json`: settings, held-out
    masked-LM quality (`mlm_quality`: every selected position, and [MASK]
    positions beside the frequency and unigram baselines). If `out` already holds
    a finished teacher with the same settings, nothing is trained. `init_from`, a
    checkpoint folder of the same architecture, continues its training (a fresh
    warm-up and decay over `cfg.steps`) instead of starting from Normal(0, 0.02);
    `init_model`, that folder already loaded (it is then not read again; a bare
    encoder comes with a new head, `load_encoder_with_new_head`).
    """
    setup_process()
    out = Path(out)
    cfg = cfg.resolved()  # head_steps, body_lr where the caller left them unset
    check_seq_len(arch, cfg.batch.seq_len)
    start = init_params(arch, cfg.batch.seed)
    init_hash = None
    if init_from is not None:
        model = init_model or load_checkpoint(init_from, tokenizer="none")
        if model.arch != arch:
            raise UserError(f"--init-from {init_from}: its architecture {model.arch.label()} "
                            f"is not the teacher's {arch.label()}; give a folder of that shape")
        start, init_hash = model.params, weights_sha256(init_from)
    staged = {"head_steps": cfg.head_steps, "body_lr": cfg.body_lr} \
        if cfg.head_steps or cfg.body_lr is not None else {}
    settings = {
        "arch": arch.to_dict(), "corpus": corpus.fingerprint(),
        "tokenizer": hashlib.sha256(tokenizer.hf.to_str().encode()).hexdigest()[:16],
        "steps": cfg.steps, "lr": cfg.lr, "warmup": cfg.warmup,
        "batch": dataclasses.asdict(cfg.batch),
        **({"init_from": init_hash} if init_hash else {}), **staged,
    }
    summary_path = out / "bortsearch.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("settings") == settings:
            return summary
        raise UserError(f"{out} holds a teacher trained with other settings; choose another "
                        f"--out or remove it")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; give a folder for the checkpoint")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; choose another --out or remove it")
    data = load_data(corpus, tokenizer, cfg.batch, progress=progress)  # before writing
    check_vocabulary(data, arch, corpus)
    work = out.parent / f".{out.name}.partial"
    started = work.is_dir() and any(has_checkpoints(d) for d in (work, work / "head",
                                                                  work / "whole"))
    check_settings(work / "settings.json", settings, f"the unfinished teacher in {work}",
                   f"re-run with the same settings, or remove {work} to start over", started)
    kw = dict(eval_every=cfg.eval_every, checkpoint_every=cfg.checkpoint_every,
              progress=progress)
    stages = []
    if cfg.head_steps:
        head = fit(arch, data, part(OptimConfig, cfg, steps=cfg.head_steps, body_lr_scale=0.0),
                   cfg.lr, start, work / "head", desc=f"teacher {arch.label()} head", **kw)
        stages.append(("head", head))
        start = head.params
    body_scale = 1.0 if cfg.body_lr is None else cfg.body_lr / cfg.lr
    whole = fit(arch, data, part(OptimConfig, cfg, body_lr_scale=body_scale),
                cfg.lr, start, work / "whole" if cfg.head_steps else work,
                desc=f"teacher {arch.label()}", **kw)
    stages.append(("whole", whole))
    quality = {name: mlm_quality(arch, r.params, data) for name, r in stages}
    kept = min(quality, key=lambda name: quality[name]["mask_mlm_ce"])
    result = dict(stages)[kept]
    summary = {
        "settings": settings,
        "corpus_name": corpus.name,
        "heldout_accuracy": quality[kept]["accuracy"],
        "heldout_mlm_ce": quality[kept]["mlm_ce"],
        "frequency_baseline_accuracy": quality[kept]["frequency_baseline"],
        "heldout": quality[kept],
        "tokens_per_s": result.heldout["tokens_per_s"],
        **({"stages": {name: {**quality[name], "steps": r.steps_run,
                              "train_seconds": r.train_seconds} for name, r in stages},
            "kept": kept} if len(stages) > 1 else {}),
    }
    if is_primary():  # one writer in a multi-process job
        save_checkpoint(Model(arch, result.params, tokenizer), out,
                        extra_files={"bortsearch.json": json.dumps(summary, indent=2) + "\n"})
        shutil.rmtree(work, ignore_errors=True)
    return summary


def has_checkpoints(workdir: Path) -> bool:
    folder = workdir / "checkpoints"
    return folder.is_dir() and any(folder.iterdir())


def check_vocabulary(data, arch: Arch, corpus: Corpus) -> None:
    """Refuse a corpus the teacher's vocabulary cannot read: nearly every token
    unknown (text in another script or language than the tokenizer's)."""
    tok = data.tokenizer
    name = getattr(tok.hf.model, "unk_token", None)  # byte-level BPE has none
    unk = tok.hf.token_to_id(name) if name else None
    if unk is None:
        return
    sample = np.asarray(data.tokens[:1 << 20])
    share = float((sample == unk).mean()) if len(sample) else 0.0
    if share > 0.2:
        raise UserError(f"corpus {corpus.name}: {100 * share:.0f}% of its tokens are unknown "
                        f"to the teacher's vocabulary of {arch.vocab_size} (its unknown token "
                        f"is {name!r}); give text in the language and "
                        f"script the tokenizer was made for")
