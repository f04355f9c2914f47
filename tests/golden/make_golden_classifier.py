"""transformers' logits for the classifiers bortsearch exported (make_classifier.py).

Needs torch and transformers (`make golden`). Writes classifier_logits.npz: for
each family, padded sentence-pair inputs encoded by the folder's own tokenizer
(AutoTokenizer), with their token type ids, and the logits of
AutoModelForSequenceClassification.from_pretrained(folder).
"""

from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

HERE = Path(__file__).resolve().parent
PAIRS = [("the quick brown fox", "jumps over the lazy dog"),
         ("a transformer encoder", "stacks attention"),
         ("dog", "the fox jumps over a lazy transformer encoder stacks")]


def main():
    out = {}
    for family in ("bert", "roberta"):
        folder = HERE / f"classifier_{family}"
        tok = AutoTokenizer.from_pretrained(folder)
        enc = tok([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="np")
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        types = enc.get("token_type_ids", np.zeros_like(enc["input_ids"]))
        with torch.no_grad():
            logits = model(input_ids=torch.tensor(enc["input_ids"]),
                           attention_mask=torch.tensor(enc["attention_mask"]),
                           token_type_ids=torch.tensor(types)).logits.numpy()
        out[f"{family}_ids"], out[f"{family}_mask"] = enc["input_ids"], enc["attention_mask"]
        out[f"{family}_types"], out[f"{family}_logits"] = types, logits
        out[f"{family}_labels"] = np.array([model.config.id2label[i]
                                            for i in range(model.config.num_labels)])
    np.savez_compressed(HERE / "classifier_logits.npz", **out)
    print("wrote", HERE / "classifier_logits.npz")


if __name__ == "__main__":
    main()
