"""Students with the sentence-order head, as bortsearch exports them (our venv).

Writes, next to this script, `sop_albert/` (ALBERT with E = 16 < H = 32 and 4 layers
in 2 groups) and `sop_bert/` (BERT), random weights with non-trivial biases and
LayerNorms, each with the masked-LM and the order head: the folders
`pretrain --objective mlm+sop` writes. make_golden_sop.py then reads them with
transformers' `AutoModelForPreTraining`.
"""

import shutil
from pathlib import Path

import jax
import numpy as np

from bortsearch.model.arch import Arch
from bortsearch.model.encoder import init_params
from bortsearch.model.hf import write_hf_folder

HERE = Path(__file__).resolve().parent


def main():
    base = dict(vocab_size=120, max_positions=40, pad_token_id=0)
    for name, arch in (("sop_albert", Arch(4, 4, 32, 48, embedding=16, groups=2, **base)),
                       ("sop_bert", Arch(2, 4, 32, 48, **base))):
        params = init_params(arch, seed=1, sop=True)
        rng = np.random.default_rng(1)

        def perturb(path, x):
            last = getattr(path[-1], "key", "")
            return x + 0.1 * rng.standard_normal(x.shape).astype(np.float32) \
                if last in ("bias", "scale") else x

        params = jax.tree_util.tree_map_with_path(perturb, params)
        shutil.rmtree(HERE / name, ignore_errors=True)
        (HERE / name).mkdir()
        write_hf_folder(HERE / name, arch, None, params)
    print("wrote sop_albert/, sop_bert/")


if __name__ == "__main__":
    main()
