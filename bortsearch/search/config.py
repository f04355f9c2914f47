"""A search's settings: `SearchConfig`, whose resolved form is a run's `search.json`,
and whose fields marked `fingerprint` a resumed run must match (`config.json`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from bortsearch.config import (
    fraction,
    option,
    positive_float,
    positive_int,
    same_option,
    validate,
)
from bortsearch.data.batches import BatchSpec
from bortsearch.data.tokenizer import DEFAULT_VOCAB_SIZE
from bortsearch.deploy.latency import RUNTIMES
from bortsearch.errors import UserError
from bortsearch.model.encoder import INHERITS, INITS, LAYER_RULES
from bortsearch.model.proxies import SCOPES, SIZE_PROXIES
from bortsearch.runio import write_json
from bortsearch.search.algorithm import ERRORS
from bortsearch.train.fit import LoopConfig
from bortsearch.train.teacher import TeacherConfig

INFERENCE_KINDS = ("analytic", "measured", "fitted")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Everything a search depends on; `config.json` is this, resolved."""

    space: str = option(None, "a search-space TOML file", required=True)
    teacher: str | None = option(
        None, "a Hugging Face checkpoint folder (BERT, RoBERTa, ALBERT, DistilBERT, "
        "XLM-RoBERTa, ELECTRA, ModernBERT, DeBERTa-v2/v3): a masked-LM model, or a "
        "fine-tuned sequence classifier with --task", default_text="train the space's "
        "maximum point (cached)")
    corpus: tuple[str, ...] | None = option(
        None, "a text file, folder, glob or .jsonl file; repeat for more", metavar="PATH",
        repeat=True, default_text="the embedded Python-documentation corpus")
    text_field: str = option("text", "the text field of .jsonl corpora")
    # a sequence-classification teacher is distilled on its task's training rows: the
    # task (a GLUE name, or a name with text_fields and label_field) and its folder
    task: str | None = option(
        None, "with a classifier --teacher: the task it was fine-tuned on (a GLUE name, or "
        "your own with --text-fields and --label-field); the candidates are distilled on "
        "its training rows")
    task_data: str | None = option(
        None, "--task's folder (train.tsv, ...) or the GLUE folder holding it", flag="--data",
        metavar="DIR")
    text_fields: str | None = option(None, "a custom --task's text field(s)", metavar="A[,B]")
    label_field: str | None = option(None, "a custom --task's label field")
    vocab_size: int = option(DEFAULT_VOCAB_SIZE, "vocabulary of the WordPiece tokenizer "
                             "trained on the corpus when there is no teacher", type=positive_int)
    epsilon: int | None = option(None, "interval size ε", type=positive_int,
                                 default_text="⌈|Ξ|/12⌉: about 12 candidates trained")
    steps: int = option(200, "training steps s per candidate", type=positive_int,
                        fingerprint=True)
    lrs: tuple[float, ...] = option(
        (1e-3, 3e-3), "a peak learning rate of Θ; repeat for more", flag="--lr",
        type=positive_float, repeat=True, metavar="LR", fingerprint=True)
    batch_size: int = same_option(BatchSpec, "batch_size", fingerprint=True)
    seq_len: int = same_option(BatchSpec, "seq_len", fingerprint=True,
                               more=" (also î's reference input: batch 1, this length)")
    seed: int = same_option(BatchSpec, "seed", fingerprint=True)
    inference: str = option(
        "analytic", "inference proxy: FLOPs, measured latency on this machine, or latency "
        "predicted by a model fitted on a few measured architectures",
        choices=INFERENCE_KINDS, fingerprint=True)
    # î without the masked-LM head, as deployed [ours]
    inference_scope: str = option(
        "encoder", "what î counts: the encoder a downstream student runs, or the masked-LM "
        "model with its vocabulary head", choices=SCOPES, fingerprint=True)
    # where a measured î runs [ours]
    runtime: str = option(
        "xla", "where --inference measured runs the forward pass: xla, onnx (ONNX Runtime "
        "float32) or onnx-int8 (dynamic int8); needs bortsearch[onnx] for the last two",
        choices=RUNTIMES)
    # p̂: the non-embedding parameters [ours] (bench-bort: the same GLUE score as with
    # all parameters for a smaller, faster student), or "params", all of them [paper]
    size_proxy: str = option(
        "non-embedding", "what p̂ counts: the non-embedding parameters (a vocabulary's "
        "table is memory, not compute), or every parameter (as the paper); changing it "
        "re-scores a finished run, training only candidates it has not trained",
        choices=SIZE_PROXIES)
    # The defaults of the next three are chosen by bench/signal_quality.py
    # (docs/reading-the-answer.md); the paper's choices are ce, one seed, random.
    error: str = option("kl", "the error W divides by: kl = ê − H_T, what the student "
                        "controls, or ce = ê as in the paper", choices=ERRORS)
    seeds: int = option(2, "trials per θ from seeds --seed, --seed + 1, ...: the mean error, "
                        "its standard error and W's noise", type=positive_int, fingerprint=True)
    init: str = option("teacher", "students start from Normal(0, 0.02) or inherit the "
                       "teacher's weights", choices=INITS, fingerprint=True)
    # which units they inherit: the leading ones ("first"), or the most important ones
    # ("importance": the teacher rewired into importance order first) [ours]
    inherit: str = option(
        "first", "with --init teacher, which heads, feed-forward and hidden units a student "
        "inherits: the teacher's first ones, or its most important ones on the corpus "
        "(measured, cached, recorded in the run's importance.json); pretrain follows the run",
        choices=INHERITS, fingerprint=True)
    importance_batches: int = option(4, "training batches that measure the importances",
                                     type=positive_int, metavar="N")
    # which teacher layers a shallower student inherits [ours]
    inherit_layers: str = option(
        "uniform", "with --init teacher, which teacher layers a shallower student inherits: "
        "TinyBERT's uniform map (the top layer kept), the first ones, every other one from "
        "the first (DistilBERT), or the map whose inherited student has the lowest KL to the "
        "teacher on one training batch; pretrain follows the run", choices=LAYER_RULES,
        fingerprint=True)
    confirm: int = option(0, "train the K best by W again for --confirm-steps and choose by "
                          "those errors (0: no confirmation)", type=int, minimum=0,
                          metavar="K")
    confirm_steps: int | None = option(None, "steps of the confirmation training",
                                       type=positive_int, metavar="S2",
                                       default_text="5 x --steps")
    max_params: int | None = option(None, "only architectures with at most this many "
                                    "parameters (p̂) can be chosen", type=positive_int)
    max_inference: float | None = option(
        None, "only architectures with at most this inference proxy (FLOPs, or seconds when "
        "measured) can be chosen", type=positive_float)
    teacher_steps: int = option(TeacherConfig.steps, "steps of maximum-point training when "
                                "there is no --teacher", type=positive_int)
    group_size: int | None = option(None, "candidates trained in lockstep on each teacher "
                                    "output", type=positive_int, default_text="as many as "
                                    "fit 2 GiB of training state")
    # successive halving over Θ at this fraction of s [ours]: bench/halving_bench.py,
    # the same picks on three spaces for 23-25% fewer trial steps; None: every trial to s
    halving: float | None = option(
        0.5, "successive halving over Θ: after this fraction of --steps, each candidate's θ "
        "whose mean error is worse than the best θ's by more than 3 standard errors of seed "
        "noise stop training (0: off)", type=fraction, metavar="FRACTION",
        parse=lambda v: v or None, fingerprint=True)
    checkpoint_every: int = option(50, "steps between checkpoints of the candidates in "
                                   "training, so that a killed search resumes mid-group",
                                   type=positive_int)
    dtype: str = same_option(LoopConfig, "dtype", fingerprint=True)

    def __post_init__(self):
        # Ranges are checked where values enter, so the Python API gets them too.
        if not self.lrs:
            raise UserError("--lr: give at least one learning rate")
        validate(self)

    @property
    def long_steps(self) -> int:
        return self.confirm_steps or 5 * self.steps

    @classmethod
    def from_run(cls, run: str | Path) -> SearchConfig:
        """The resolved config a run folder's search ran with (its `search.json`)."""
        return SearchRecord.read(Path(run)).config


# What a run's search.json meant by a field it does not hold: it was written before the
# field existed, when the search behaved so (candidates started from random weights).
RECORDED_BEFORE: dict = {"init": "random"}


@dataclasses.dataclass(frozen=True)
class SearchRecord:
    """A run's `search.json`: the resolved config (ε included), and what the search
    resolved beside it.

    Attributes:
      config: the `SearchConfig`, as resolved (the ε it used).
      teacher_path: the teacher folder it read (copied to the run's `teacher/`).
      corpus_name: the corpus (or task rows) it trained on, in words.
    """

    config: SearchConfig
    teacher_path: str | None = None
    corpus_name: str | None = None

    def write(self, run: Path) -> None:
        write_json(run / "search.json", {**dataclasses.asdict(self.config),
                                         "teacher_path": self.teacher_path,
                                         "corpus_name": self.corpus_name})

    @classmethod
    def read(cls, run: Path) -> SearchRecord:
        path = run / "search.json"
        if not path.is_file():
            raise UserError(f"{run}: no search.json, so the search's settings are unknown; "
                            f"run `bortsearch search --run {run}` with the flags it was "
                            f"started with to record them")
        recorded = json.loads(path.read_text())
        fields = {f.name for f in dataclasses.fields(SearchConfig)}
        values = {**RECORDED_BEFORE, **{k: v for k, v in recorded.items() if k in fields}}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(SearchConfig(**values), recorded.get("teacher_path"),
                   recorded.get("corpus_name"))
