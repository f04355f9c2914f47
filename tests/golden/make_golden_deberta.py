"""transformers golden files for DeBERTa-v2/v3.

Needs torch and transformers (`make golden`). Run twice: first without arguments
(the teachers), then, after `make_family_students.py deberta` has exported bortsearch's
students from them, with `--students`. Writes, next to this script:

- deberta_tiny/: a random `DebertaV2ForMaskedLM` (queries and keys scaled up, so that
  positions matter) as DeBERTa-v3 is built (relative
  attention, content→position and position→content, shared keys, normalised relative
  table, no absolute positions, no token types), with 8 position buckets so that inputs
  of 12 tokens reach the log buckets, and a SentencePiece-style Unigram tokenizer
  (`DebertaV2TokenizerFast`, saved by transformers);
- deberta_cls/: a random `DebertaV2ForSequenceClassification` with 3 labels;
- deberta_lm/: deberta_tiny's weights under the original checkpoints' head names
  (`lm_predictions.lm_head.*`, with a `mask_predictions` head beside it, as
  deberta-v3-base ships), config `legacy: false`;
- deberta.npz: padded inputs and transformers' logits for each, the tokenizer's ids for
  single and paired texts; with `--students`, transformers' logits for
  student_deberta/ and student_deberta_cls/;
- deberta_counts.json: `num_parameters()` of random masked-LM configs.
"""

import json
import shutil

import numpy as np
import torch
from make_golden import HERE, inputs
from make_golden_families import PAIRS, family_students, golden_main, perturbed, run, unigram_vocab
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DebertaV2Config,
    DebertaV2TokenizerFast,
)

NPZ = HERE / "deberta.npz"
VOCAB = 120
CONFIG = dict(num_hidden_layers=3, num_attention_heads=4, hidden_size=32, intermediate_size=48,
              max_position_embeddings=64, relative_attention=True, position_buckets=8,
              max_relative_positions=-1, pos_att_type="p2c|c2p", share_att_key=True,
              norm_rel_ebd="layer_norm", position_biased_input=False, type_vocab_size=0,
              layer_norm_eps=1e-7, pad_token_id=0, vocab_size=VOCAB)


def vocab():
    """DeBERTa-v3's layout: [PAD] [CLS] [SEP] [UNK], Unigram pieces, [MASK] last."""
    pieces = unigram_vocab(VOCAB)  # <s> <pad> </s> <unk> ... <mask>: renamed
    names = {"<s>": "[CLS]", "<pad>": "[PAD]", "</s>": "[SEP]", "<unk>": "[UNK]",
             "<mask>": "[MASK]"}
    pieces = [(names.get(p, p), s) for p, s in pieces]
    order = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
    head = [next(x for x in pieces if x[0] == t) for t in order]
    rest = [x for x in pieces if x[0] not in order]
    return head + rest


def save_tokenizer(folder, pieces):
    tok = DebertaV2TokenizerFast(vocab=pieces, unk_id=3)
    tok.save_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert len(tok) == VOCAB, len(tok)
    return tok


def sharp(model):
    """Queries and keys 10x the initialiser's, so that attention scores are O(1) and the
    relative scores decide them (at the initialiser's scale attention is near uniform)."""
    with torch.no_grad():
        for layer in model.deberta.encoder.layer:
            for proj in (layer.attention.self.query_proj, layer.attention.self.key_proj):
                proj.weight.mul_(10.0)
    return model


def teachers(out, rng):
    pieces = vocab()
    for kind, auto, extra in (("tiny", AutoModelForMaskedLM, {}),
                              ("cls", AutoModelForSequenceClassification,
                               dict(num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"},
                                    label2id={"neg": 0, "neu": 1, "pos": 2}))):
        folder = HERE / f"deberta_{kind}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        model = sharp(perturbed(auto.from_config(DebertaV2Config(**CONFIG, **extra))))
        model.save_pretrained(folder)
        tok = save_tokenizer(folder, pieces)
        ids, mask = inputs(VOCAB, 0, rng)
        out[f"deberta_{kind}_ids"], out[f"deberta_{kind}_mask"] = ids, mask
        out[f"deberta_{kind}_logits"] = run(model, ids, mask)
    for i, (a, b) in enumerate(PAIRS):
        out[f"deberta_single{i}"] = np.asarray(tok(a)["input_ids"])
        out[f"deberta_pair{i}"] = np.asarray(tok(a, b)["input_ids"])
    # the original checkpoints' layout: lm_predictions.lm_head.*, and an RTD head beside it
    lm = HERE / "deberta_lm"
    shutil.rmtree(lm, ignore_errors=True)
    shutil.copytree(HERE / "deberta_tiny", lm)
    tensors = load_file(str(lm / "model.safetensors"))
    renamed = {}
    for k, v in tensors.items():
        k = (k.replace("cls.predictions.transform.", "lm_predictions.lm_head.")
             .replace("cls.predictions.bias", "lm_predictions.lm_head.bias"))
        if not k.startswith("cls.predictions.decoder"):
            renamed[k] = v.contiguous()
    renamed["mask_predictions.classifier.weight"] = torch.randn(1, 32)
    renamed["mask_predictions.classifier.bias"] = torch.zeros(1)
    save_file(renamed, str(lm / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((lm / "config.json").read_text())
    config["legacy"] = False
    (lm / "config.json").write_text(json.dumps(config, indent=2))
    model = AutoModelForMaskedLM.from_pretrained(lm)
    assert not model.legacy
    out["deberta_lm_logits"] = run(model, out["deberta_tiny_ids"], out["deberta_tiny_mask"])


def students(out, rng):
    family_students(out, "deberta", rng)


def counts(rng):
    rows = []
    for _ in range(4):
        cfg = {**CONFIG, "num_hidden_layers": int(rng.choice([1, 2, 3])),
               "hidden_size": int(rng.choice([32, 64])),
               "intermediate_size": int(rng.choice([48, 96])),
               "vocab_size": int(rng.integers(100, 500)),
               "position_buckets": int(rng.choice([-1, 8, 16])),
               "max_position_embeddings": int(rng.choice([64, 128]))}
        model = AutoModelForMaskedLM.from_config(DebertaV2Config(**cfg))
        rows.append({**cfg, "num_parameters": model.num_parameters()})
    (HERE / "deberta_counts.json").write_text(json.dumps(rows, indent=1) + "\n")


def main():
    golden_main(NPZ, teachers, students, counts)


if __name__ == "__main__":
    main()
