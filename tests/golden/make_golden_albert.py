"""transformers golden files for ALBERT's axes (E, G).

Needs torch and transformers (`make golden`). Writes, next to this script:

- albert_shared/: a random AlbertForMaskedLM, all 3 layers sharing one group,
  E = 16 < H = 32, gelu_new, a WordPiece vocab.txt;
- albert_groups/: 4 layers in 2 groups, E = 24, exact gelu;
- albert_logits.npz: padded inputs and transformers' logits for both, and for
  student_albert/ (a factorised, shared student that bortsearch searched,
  pretrained and exported: tests/golden/make_student.py, run first);
- albert_counts.json: AlbertForMaskedLM(config).num_parameters() for random configs.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from transformers import AlbertConfig, AlbertForMaskedLM, AutoModelForMaskedLM

from make_golden import HERE, inputs, logits, wordpiece_vocab


def random_albert(folder, words, **kw):
    config = AlbertConfig(vocab_size=len(words), max_position_embeddings=40, type_vocab_size=2,
                          num_attention_heads=4, intermediate_size=48, hidden_size=32,
                          pad_token_id=0, bos_token_id=2, eos_token_id=3, **kw)
    model = AlbertForMaskedLM(config)
    with torch.no_grad():  # non-trivial LayerNorms and biases, so a mapping slip shows
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    return model


def main():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    words = wordpiece_vocab(120)
    out = {}
    for name, kw in (("albert_shared", dict(num_hidden_layers=3, num_hidden_groups=1,
                                            embedding_size=16, hidden_act="gelu_new")),
                     ("albert_groups", dict(num_hidden_layers=4, num_hidden_groups=2,
                                            embedding_size=24, hidden_act="gelu"))):
        model = random_albert(HERE / name, words, **kw)
        out[f"{name}_ids"], out[f"{name}_mask"] = inputs(len(words), 0, rng)
        out[f"{name}_logits"] = logits(model, out[f"{name}_ids"], out[f"{name}_mask"])
    student = HERE / "student_albert"
    if student.is_dir():
        model = AutoModelForMaskedLM.from_pretrained(student)
        assert type(model).__name__ == "AlbertForMaskedLM"
        ids, mask = inputs(model.config.vocab_size, 0, rng)
        out["student_albert_ids"], out["student_albert_mask"] = ids, mask
        out["student_albert_logits"] = logits(model, ids, mask)
    np.savez_compressed(HERE / "albert_logits.npz", **out)
    counts = []
    for _ in range(6):
        h = int(rng.choice([32, 64, 128]))
        d = int(rng.choice([2, 4, 6]))
        cfg = dict(vocab_size=int(rng.integers(100, 3000)), hidden_size=h,
                   embedding_size=int(rng.choice([8, 16, h])), num_hidden_layers=d,
                   num_hidden_groups=int(rng.choice([g for g in (1, 2, d) if d % g == 0])),
                   num_attention_heads=int(rng.choice([2, 4])),
                   intermediate_size=int(rng.choice([64, 96, 256])),
                   max_position_embeddings=int(rng.choice([64, 128, 512])),
                   type_vocab_size=int(rng.choice([1, 2])))
        counts.append({**cfg, "num_parameters": AlbertForMaskedLM(AlbertConfig(**cfg)).num_parameters()})
    (HERE / "albert_counts.json").write_text(json.dumps(counts, indent=1) + "\n")
    print("wrote albert_shared/, albert_groups/, albert_logits.npz, albert_counts.json")


if __name__ == "__main__":
    main()
