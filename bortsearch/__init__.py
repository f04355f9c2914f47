"""bortsearch: optimal BERT sub-architecture extraction (the Bort FPTAS) in JAX.

The public API; see README.md and docs/python-api.md for examples.
"""

from bortsearch.data.batches import BatchSpec, MLMData, load_data
from bortsearch.data.corpus import Corpus, resolve_corpus
from bortsearch.data.tokenizer import Tokenizer, load_tokenizer, train_tokenizer
from bortsearch.downstream.finetune import FinetuneConfig, finetune
from bortsearch.downstream.glue import glue
from bortsearch.downstream.tasks import GLUE, load_task
from bortsearch.errors import UserError
from bortsearch.model.arch import Arch
from bortsearch.model.encoder import Encoder, Model, init_params
from bortsearch.model.hf import load, load_checkpoint, save_checkpoint
from bortsearch.model.proxies import (
    effective_param_count,
    forward_flops,
    hardware_fingerprint,
    measure_latency,
    param_count,
)
from bortsearch.process import setup_process
from bortsearch.search.run import SearchConfig, read_results, run_search
from bortsearch.search.show import audit, show
from bortsearch.search.space import SearchSpace, load_space, space_table
from bortsearch.train.student import PretrainConfig, export, pretrain, pretrain_many
from bortsearch.train.teacher import TeacherConfig, train_teacher

__all__ = [
    "Arch", "BatchSpec", "setup_process", "FinetuneConfig", "GLUE", "audit", "finetune", "glue", "load_task", "Corpus", "Encoder", "MLMData", "Model", "SearchSpace",
    "TeacherConfig", "Tokenizer", "UserError", "effective_param_count", "forward_flops",
    "hardware_fingerprint", "init_params", "load", "load_checkpoint", "load_data",
    "load_space", "load_tokenizer", "measure_latency", "param_count", "resolve_corpus",
    "PretrainConfig", "SearchConfig", "export", "pretrain", "pretrain_many", "read_results", "run_search", "save_checkpoint", "show", "space_table",
    "train_teacher", "train_tokenizer",
]
