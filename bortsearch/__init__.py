"""bortsearch: optimal BERT sub-architecture extraction (the Bort FPTAS) in JAX.

The public API; see README.md and docs/python-api.md for examples.
"""

from bortsearch.data.batches import BatchSpec, MLMData, load_data
from bortsearch.data.corpus import Corpus, resolve_corpus
from bortsearch.data.tasks import GLUE, load_task
from bortsearch.data.tokenizer import Tokenizer, load_tokenizer, train_tokenizer
from bortsearch.deploy.latency import measure_latency
from bortsearch.downstream.finetune import FinetuneConfig, finetune
from bortsearch.downstream.glue import glue
from bortsearch.errors import UserError
from bortsearch.model.arch import Arch
from bortsearch.model.encoder import Encoder, Model, init_params
from bortsearch.model.hf import load, load_checkpoint, save_checkpoint
from bortsearch.model.proxies import (
    effective_param_count,
    forward_flops,
    hardware_fingerprint,
    param_count,
)
from bortsearch.process import setup_process
from bortsearch.search.run import SearchConfig, read_results, run_search
from bortsearch.search.show import audit, show
from bortsearch.search.space import SearchSpace, load_space, space_table
from bortsearch.search.student import PretrainConfig, export, pretrain, pretrain_many
from bortsearch.train.teacher import TeacherConfig, train_teacher

__all__ = [
    "GLUE", "Arch", "BatchSpec", "Corpus", "Encoder", "FinetuneConfig", "MLMData", "Model",
    "PretrainConfig", "SearchConfig", "SearchSpace", "TeacherConfig", "Tokenizer", "UserError",
    "audit", "effective_param_count", "export", "finetune", "forward_flops", "glue",
    "hardware_fingerprint", "init_params", "load", "load_checkpoint", "load_data", "load_space",
    "load_task", "load_tokenizer", "measure_latency", "param_count", "pretrain", "pretrain_many",
    "read_results", "resolve_corpus", "run_search", "save_checkpoint", "setup_process", "show",
    "space_table", "train_teacher", "train_tokenizer",
]
