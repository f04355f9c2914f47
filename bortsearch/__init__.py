"""bortsearch: optimal BERT sub-architecture extraction (the Bort FPTAS) in JAX.

The public API; see README.md for examples.
"""

from bortsearch.arch import Arch
from bortsearch.errors import UserError
from bortsearch.model import Encoder, Model, init_params
from bortsearch.proxies import (
    effective_param_count,
    forward_flops,
    hardware_fingerprint,
    measure_latency,
    param_count,
)
from bortsearch.space import SearchSpace, load_space, space_table

__all__ = [
    "Arch", "Encoder", "Model", "SearchSpace", "UserError", "effective_param_count",
    "forward_flops", "hardware_fingerprint", "init_params", "load_space",
    "measure_latency", "param_count", "space_table",
]
