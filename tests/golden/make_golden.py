"""Make the transformers golden files the parity tests compare against.

Needs torch and transformers (`make golden` installs them into .golden-venv; CI
does not). Writes, next to this script:

- bert_tiny/: a random BertForMaskedLM (tied decoder, 2 token types) saved by
  `save_pretrained` as safetensors, with a WordPiece vocab.txt;
- bert_tiny_bin/: the same weights as a PyTorch `pytorch_model.bin`;
- roberta_tiny/: a random RobertaForMaskedLM with an untied decoder, with a
  byte-level BPE vocab.json + merges.txt;
- logits.npz: padded inputs and the logits transformers computes for each;
- counts.json: num_parameters() of BERT-base and RoBERTa-large (configs only);
- in logits.npz also transformers' logits for student_bert/ and student_roberta/,
  the students bortsearch exported (tests/golden/make_student.py, run first).

The WordPiece trainer may order equal-frequency tokens differently from one run to
the next, so regenerate the whole set together (`make golden` does).
"""

import json
import shutil
from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (AutoModelForMaskedLM, BertConfig, BertForMaskedLM, RobertaConfig,
                          RobertaForMaskedLM)

HERE = Path(__file__).resolve().parent
TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "a transformer encoder stacks attention and feed forward layers",
    "distillation trains a small student against a large teacher",
    "masked language models predict hidden tokens from their context",
] * 20


def wordpiece_vocab(size):
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(TEXT, trainers.WordPieceTrainer(
        vocab_size=size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    words = [w for w, _ in vocab]
    words += [f"[unused{i}]" for i in range(size - len(words))]
    return words[:size]


def bpe_files(size, out):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(
        vocab_size=size, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.model.save(str(out))
    return tok.get_vocab_size()


def inputs(vocab, pad, rng):
    ids = rng.integers(5, vocab, (3, 12))
    mask = np.ones_like(ids)
    for row, length in enumerate([12, 9, 5]):
        ids[row, length:] = pad
        mask[row, length:] = 0
    return ids, mask


def logits(model, ids, mask):
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()


def main():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    out = {}

    words = wordpiece_vocab(120)
    bert_cfg = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=4, intermediate_size=48, max_position_embeddings=40,
                          type_vocab_size=2)
    bert = BertForMaskedLM(bert_cfg)
    with torch.no_grad():  # non-trivial LayerNorms and biases, so a mapping slip shows
        for name, p in bert.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    for d in ("bert_tiny", "bert_tiny_bin"):
        shutil.rmtree(HERE / d, ignore_errors=True)
    bert.save_pretrained(HERE / "bert_tiny")
    (HERE / "bert_tiny_bin").mkdir()
    shutil.copy(HERE / "bert_tiny" / "config.json", HERE / "bert_tiny_bin")
    torch.save(bert.state_dict(), HERE / "bert_tiny_bin" / "pytorch_model.bin")  # zip format
    for d in ("bert_tiny", "bert_tiny_bin"):
        (HERE / d / "vocab.txt").write_text("\n".join(words) + "\n")
    out["bert_ids"], out["bert_mask"] = inputs(len(words), 0, rng)
    out["bert_logits"] = logits(bert, out["bert_ids"], out["bert_mask"])

    shutil.rmtree(HERE / "roberta_tiny", ignore_errors=True)
    (HERE / "roberta_tiny").mkdir()
    vocab = bpe_files(300, HERE / "roberta_tiny")
    rob_cfg = RobertaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=3,
                            num_attention_heads=2, intermediate_size=40,
                            max_position_embeddings=42, type_vocab_size=1, pad_token_id=1,
                            bos_token_id=0, eos_token_id=2, tie_word_embeddings=False)
    roberta = RobertaForMaskedLM(rob_cfg)
    with torch.no_grad():
        for name, p in roberta.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    roberta.save_pretrained(HERE / "roberta_tiny")
    out["roberta_ids"], out["roberta_mask"] = inputs(vocab, 1, rng)
    out["roberta_logits"] = logits(roberta, out["roberta_ids"], out["roberta_mask"])
    for family, pad in (("bert", 0), ("roberta", 1)):
        folder = HERE / f"student_{family}"
        if folder.is_dir():  # made by make_student.py with bortsearch's export
            student = AutoModelForMaskedLM.from_pretrained(folder)
            ids, mask = inputs(student.config.vocab_size, pad, rng)
            out[f"student_{family}_ids"], out[f"student_{family}_mask"] = ids, mask
            out[f"student_{family}_logits"] = logits(student, ids, mask)
    np.savez_compressed(HERE / "logits.npz", **out)

    counts = {
        "bert_base_mlm": BertForMaskedLM(BertConfig()).num_parameters(),
        "roberta_large_mlm": RobertaForMaskedLM(RobertaConfig(
            vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
            num_hidden_layers=24, num_attention_heads=16, hidden_size=1024,
            intermediate_size=4096)).num_parameters(),
        "transformers": transformers.__version__, "torch": torch.__version__,
    }
    (HERE / "counts.json").write_text(json.dumps(counts, indent=2) + "\n")
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
