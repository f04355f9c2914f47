"""Fine-tune tiny classifiers for the transformers sequence-classification golden files.

Runs in bortsearch's own environment (`make golden` runs it after make_student.py):
fine-tunes the exported students on a small synthetic sentence-pair task with
`bortsearch.finetune` and writes the exports to tests/golden/classifier_bert/ (3
labels, segment ids 0/1, BERT's pooler) and tests/golden/classifier_roberta/ (2
labels, RoBERTa's dense + out_proj head). make_golden_classifier.py then records
what `AutoModelForSequenceClassification` computes for them.
"""

import shutil
import tempfile
from pathlib import Path

from bortsearch.downstream.finetune import FinetuneConfig, finetune

HERE = Path(__file__).resolve().parent
WORDS = "the quick brown fox jumps over lazy dog a transformer encoder stacks attention".split()


def main():
    data = Path(tempfile.mkdtemp())
    rows = ["a\tb\tlabel"]
    for i in range(64):
        a = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(3 + i % 5))
        b = " ".join(WORDS[(2 * i + k) % len(WORDS)] for k in range(2 + i % 3))
        rows.append(f"{a}\t{b}\t{['yes', 'no', 'maybe'][i % 3]}")
    for split in ("train", "dev"):
        (data / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    for family, fields in (("bert", "a,b"), ("roberta", "a,b")):
        out = HERE / f"classifier_{family}"
        shutil.rmtree(out, ignore_errors=True)
        work = Path(tempfile.mkdtemp()) / "ft"
        task_data = data
        if family == "roberta":  # two labels: drop "maybe"
            task_data = Path(tempfile.mkdtemp())
            two = [r for r in rows if not r.endswith("maybe")]
            for split in ("train", "dev"):
                (task_data / f"{split}.tsv").write_text("\n".join(two) + "\n")
        finetune(HERE / f"student_{family}", "pairs", task_data, work,
                 FinetuneConfig(lrs=(1e-2,), epochs=2, batch_size=8, max_length=32),
                 text_fields=fields, label_field="label", progress=False)
        out.mkdir()
        for f in work.iterdir():
            if f.is_file() and f.name not in ("settings.json", "metrics.json"):
                shutil.copy(f, out / f.name)
        print("wrote", out)


if __name__ == "__main__":
    main()
