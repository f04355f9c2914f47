"""Students of the DistilBERT, XLM-RoBERTa, ELECTRA, ModernBERT and DeBERTa golden teachers,
for the transformers round trip (`make_family_students.py [FAMILY ...]`: those named).

Runs in bortsearch's own environment (`make golden` runs it after the first pass
of make_golden_families.py, and make_golden_families.py --students then records
transformers' logits for what it writes): for each family's random masked-LM
teacher ({family}_tiny/) a one-architecture search, a short distillation
pretraining and the export (student_{family}/), then that student fine-tuned on a
small synthetic sentence-pair task with 3 labels (student_{family}_cls/).
"""

import shutil
import sys
import tempfile
from pathlib import Path

from make_classifier import WORDS

from bortsearch.downstream.finetune import FinetuneConfig, finetune
from bortsearch.search.run import SearchConfig, run_search
from bortsearch.search.student import PretrainConfig, pretrain

HERE = Path(__file__).resolve().parent
SPACE = 'name = "golden"\nlayers = [2]\nheads = [2]\nhidden = [{h}]\nintermediate = [24]\n'
# H of each family's student: ELECTRA's 32 keeps the teacher's E = 16, projected
FAMILIES = {"distilbert": 16, "xlmr": 16, "electra": 32, "modernbert": 16, "deberta": 16}


def pairs_task(n: int = 64) -> Path:
    """A synthetic sentence-pair task of `n` rows and 3 labels, in a new folder."""
    data = Path(tempfile.mkdtemp())
    rows = ["a\tb\tlabel"]
    for i in range(n):
        a = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(3 + i % 5))
        b = " ".join(WORDS[(2 * i + k) % len(WORDS)] for k in range(2 + i % 3))
        rows.append(f"{a}\t{b}\t{['yes', 'no', 'maybe'][i % 3]}")
    for split in ("train", "dev"):
        (data / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return data


def main(families=None):
    """Each family's students (those named, else every one)."""
    task = pairs_task()
    for family, hidden in FAMILIES.items():
        if families and family not in families:
            continue
        work = Path(tempfile.mkdtemp())
        (work / "space.toml").write_text(SPACE.format(h=hidden))
        cfg = SearchConfig(space=str(work / "space.toml"), teacher=str(HERE / f"{family}_tiny"),
                           epsilon=1, steps=5, batch_size=8, seq_len=32)
        run_search(work / "run", cfg, progress=False)
        out = HERE / f"student_{family}"
        shutil.rmtree(out, ignore_errors=True)
        pretrain(work / "run", out, cfg=PretrainConfig(steps=20, batch_size=8, seq_len=32,
                                                       lr=1e-3), progress=False)
        (out / "pareto.png").unlink(missing_ok=True)  # keep the golden folder small
        ft = work / "ft"
        finetune(out, "pairs", task, ft,
                 FinetuneConfig(lrs=(1e-2,), epochs=2, batch_size=8, max_length=32),
                 text_fields="a,b", label_field="label", progress=False)
        cls = HERE / f"student_{family}_cls"
        shutil.rmtree(cls, ignore_errors=True)
        cls.mkdir()
        for f in ft.iterdir():
            if f.is_file() and f.name not in ("settings.json", "metrics.json"):
                shutil.copy(f, cls / f.name)
        print("wrote", out, cls)


if __name__ == "__main__":
    main(sys.argv[1:])
