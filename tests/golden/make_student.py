"""Export pretrained tiny students for the transformers round-trip golden files.

Runs in bortsearch's own environment (`make golden` runs it before
make_golden.py, which then records transformers' logits for these folders):
for each golden teacher (BERT with a tied decoder, RoBERTa with an untied one)
a one-architecture search, a short distillation pretraining, and the export,
into tests/golden/student_bert/ and tests/golden/student_roberta/.
"""

import shutil
import tempfile
from pathlib import Path

from bortsearch.search.run import SearchConfig, run_search
from bortsearch.search.student import PretrainConfig, pretrain

HERE = Path(__file__).resolve().parent
SPACE = 'name = "golden"\nlayers = [2]\nheads = [2]\nhidden = [16]\nintermediate = [24]\n'


# ALBERT's axes: 4 layers sharing 2 groups, E = 8 < H = 16 (exported as ALBERT).
ALBERT_SPACE = ('name = "golden-albert"\nlayers = [4]\nheads = [2]\nhidden = [16]\n'
                'intermediate = [24]\nembedding = [8]\ngroups = [2]\n')


def main():
    for family, space in (("bert", SPACE), ("roberta", SPACE), ("albert", ALBERT_SPACE)):
        work = Path(tempfile.mkdtemp())
        (work / "space.toml").write_text(space)
        teacher = "bert" if family == "albert" else family
        cfg = SearchConfig(space=str(work / "space.toml"), teacher=str(HERE / f"{teacher}_tiny"),
                           epsilon=1, steps=5, batch_size=8, seq_len=32)
        run_search(work / "run", cfg, progress=False)
        out = HERE / f"student_{family}"
        shutil.rmtree(out, ignore_errors=True)
        pretrain(work / "run", out, cfg=PretrainConfig(steps=20, batch_size=8, seq_len=32, lr=1e-3),
                 progress=False)
        (out / "pareto.png").unlink(missing_ok=True)  # keep the golden folder small
        print("wrote", out)


if __name__ == "__main__":
    main()
