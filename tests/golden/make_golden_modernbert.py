"""transformers golden files for ModernBERT.

Needs torch and transformers (`make golden`). Run twice: first without arguments
(the teachers), then, after `make_family_students.py modernbert` has exported
bortsearch's students from them, with `--students`. Writes, next to this script:

- modernbert_tiny/: a random `ModernBertForMaskedLM` (queries and keys scaled up, so
  that positions matter) of 4 layers (global attention in
  layers 0 and 3, a local window of 8 in layers 1 and 2; rotary bases 1000 and 10), with
  a byte-level BPE tokenizer.json as ModernBERT's (special tokens
  [CLS] [SEP] [PAD] [MASK] [UNK], `[CLS] A [SEP] B [SEP]`), saved by transformers;
- modernbert_cls/: a random `ModernBertForSequenceClassification` with 3 labels, pooling
  the mean of the tokens (the released models' setting; the students pool [CLS]);
- modernbert.npz: padded inputs of 12 tokens (longer than the window) and transformers'
  logits for each (eager attention), the ids transformers' tokenizer gives for single
  and paired texts; with `--students`, also transformers' logits for
  student_modernbert/ and student_modernbert_cls/;
- modernbert_counts.json: `num_parameters()` of random masked-LM configs.
"""

import json
import shutil

import numpy as np
import torch
from make_golden import HERE, TEXT, inputs
from make_golden_families import PAIRS, family_students, golden_main, perturbed, run
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    ModernBertConfig,
    PreTrainedTokenizerFast,
)

NPZ = HERE / "modernbert.npz"
SPECIAL = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
CONFIG = dict(num_hidden_layers=4, num_attention_heads=4, hidden_size=32,
              intermediate_size=48, max_position_embeddings=64, local_attention=8,
              global_attn_every_n_layers=3, norm_eps=1e-5,
              # rotary bases far apart (the released 160000 and 10000 differ little over
              # a window this short), so that parity shows each layer takes its own
              global_rope_theta=1000.0, local_rope_theta=10.0)


def tokenizer(folder):
    """A byte-level BPE tokenizer as ModernBERT's, saved by transformers into `folder`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]")
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def config(vocab, tok, **extra):
    ids = {f"{r}_token_id": tok.convert_tokens_to_ids(t)
           for r, t in (("pad", "[PAD]"), ("cls", "[CLS]"), ("sep", "[SEP]"),
                        ("bos", "[CLS]"), ("eos", "[SEP]"))}
    return ModernBertConfig(vocab_size=vocab, **CONFIG, **ids, **extra)


def sharp(model):
    """Queries and keys 10x the initialiser's, so that attention scores are O(1) and the
    rotary rotation decides them (at the initialiser's scale every score is near 0 and
    attention near uniform, whatever the positions)."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.attn.Wqkv.weight[:2 * model.config.hidden_size].mul_(10.0)
    return model


def teachers(out, rng):
    folder = HERE / "modernbert_tiny"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    tok = tokenizer(folder)
    vocab = len(tok)
    for kind, auto, extra in (("tiny", AutoModelForMaskedLM, {}),
                              ("cls", AutoModelForSequenceClassification,
                               dict(num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"},
                                    label2id={"neg": 0, "neu": 1, "pos": 2},
                                    classifier_pooling="mean"))):
        folder = HERE / f"modernbert_{kind}"
        if kind != "tiny":
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            tokenizer(folder)
        model = sharp(perturbed(auto.from_config(config(vocab, tok, **extra),
                                                 attn_implementation="eager")))
        model.save_pretrained(folder)
        ids, mask = inputs(vocab, tok.pad_token_id, rng)
        out[f"modernbert_{kind}_ids"], out[f"modernbert_{kind}_mask"] = ids, mask
        out[f"modernbert_{kind}_logits"] = run(model, ids, mask)
    for i, (a, b) in enumerate(PAIRS):
        out[f"modernbert_single{i}"] = np.asarray(tok(a)["input_ids"])
        out[f"modernbert_pair{i}"] = np.asarray(tok(a, b)["input_ids"])


def students(out, rng):
    family_students(out, "modernbert", rng, attn_implementation="eager")


def counts(rng):
    rows = []
    for _ in range(4):
        cfg = dict(num_hidden_layers=int(rng.choice([1, 2, 3])), num_attention_heads=4,
                   hidden_size=int(rng.choice([32, 64])),
                   intermediate_size=int(rng.choice([48, 96])),
                   vocab_size=int(rng.integers(100, 500)),
                   max_position_embeddings=int(rng.choice([64, 128])))
        model = AutoModelForMaskedLM.from_config(ModernBertConfig(**cfg, pad_token_id=0))
        rows.append({**cfg, "num_parameters": model.num_parameters()})
    (HERE / "modernbert_counts.json").write_text(json.dumps(rows, indent=1) + "\n")


def main():
    golden_main(NPZ, teachers, students, counts)


if __name__ == "__main__":
    main()
