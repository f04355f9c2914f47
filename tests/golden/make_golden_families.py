"""transformers golden files for DistilBERT, XLM-RoBERTa and ELECTRA.

Needs torch and transformers (`make golden`). Run twice: first without arguments
(the teachers), then, after tests/golden/make_family_students.py has exported
bortsearch's students from them, with `--students`. Writes, next to this script:

- distilbert_tiny/, xlmr_tiny/, electra_tiny/: random `…ForMaskedLM` models
  (ELECTRA a generator with E = 16 < H = 32), each with its tokenizer as
  transformers saves it (WordPiece for DistilBERT and ELECTRA, a SentencePiece-style
  Unigram tokenizer.json for XLM-RoBERTa);
- distilbert_cls/, xlmr_cls/, electra_cls/: random `…ForSequenceClassification`
  models with 3 labels;
- electra_disc/: a random `ElectraForPreTraining` (a discriminator: an encoder with
  a replaced-token head), E = 16 < H = 32;
- families.npz: padded inputs and transformers' logits for each (the
  discriminator's `ElectraModel` last hidden state), the ids transformers' tokenizer
  gives for single and paired texts; with `--students`, also transformers' logits
  for student_{family}/ and student_{family}_cls/;
- families_counts.json: `num_parameters()` of random masked-LM configs per family, and
  of an ELECTRA generator with E > H (`--counts` remakes this file alone).
"""

import json
import shutil
import sys

import numpy as np
import torch
from make_golden import HERE, TEXT, inputs, wordpiece_vocab
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DistilBertConfig,
    DistilBertTokenizerFast,
    ElectraConfig,
    ElectraForPreTraining,
    ElectraTokenizerFast,
    XLMRobertaConfig,
    XLMRobertaTokenizerFast,
)

NPZ = HERE / "families.npz"
PAIRS = [("the quick brown fox", "jumps over the lazy dog"),
         ("a small student", "a large teacher, distilled")]
SHAPE = dict(vocab_size=120, max_position_embeddings=40)


def configs():
    """{family: (config class, kwargs, tokenizer class, pad id)}."""
    return {
        "distilbert": (DistilBertConfig, dict(n_layers=3, n_heads=4, dim=32, hidden_dim=48,
                                              pad_token_id=0, **SHAPE),
                       DistilBertTokenizerFast, 0),
        "xlmr": (XLMRobertaConfig, dict(num_hidden_layers=3, num_attention_heads=4,
                                        hidden_size=32, intermediate_size=48, type_vocab_size=1,
                                        pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                        layer_norm_eps=1e-5, vocab_size=120,
                                        max_position_embeddings=42),
                 XLMRobertaTokenizerFast, 1),
        "electra": (ElectraConfig, dict(num_hidden_layers=3, num_attention_heads=4,
                                        hidden_size=32, intermediate_size=48, embedding_size=16,
                                        pad_token_id=0, **SHAPE),
                    ElectraTokenizerFast, 0),
    }


def unigram_vocab(size):
    """XLM-RoBERTa's vocabulary layout: <s> <pad> </s> <unk>, SentencePiece Unigram
    pieces with their scores, <mask> last."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(TEXT, trainers.UnigramTrainer(
        vocab_size=size - 1, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        unk_token="<unk>"))
    pieces = json.loads(tok.to_str())["model"]["vocab"]
    pieces = [(p, s) for p, s in pieces if p not in ("<s>", "<pad>", "</s>", "<unk>")]
    specials = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(f"▁filler{i}", -50.0) for i in range(size - 1 - len(specials) - len(pieces))]
    return (specials + pieces)[:size - 1] + [("<mask>", 0.0)]


def vocab_of(family):
    """One vocabulary per family (the trainers are not deterministic run to run)."""
    if family == "xlmr":
        return unigram_vocab(SHAPE["vocab_size"])
    return {w: i for i, w in enumerate(wordpiece_vocab(SHAPE["vocab_size"]))}


def save_tokenizer(family, cls, folder, vocab):
    """The family's own tokenizer class, built by transformers from a vocabulary."""
    if family == "xlmr":
        tok = cls(vocab=vocab)
    else:
        tok = cls(vocab=vocab, do_lower_case=True)
    tok.save_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert type(tok).__name__ in (cls.__name__, cls.__name__.removesuffix("Fast")), type(tok)
    assert len(tok) == SHAPE["vocab_size"], len(tok)
    return tok


def perturbed(model):
    with torch.no_grad():  # non-trivial LayerNorms and biases, so a mapping slip shows
        for name, p in model.named_parameters():
            if "norm" in name.lower() or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def run(model, ids, mask, hidden=False):
    model.eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
        return (out.last_hidden_state if hidden else out.logits).numpy()


def teachers(out, rng):
    from transformers import AutoModelForMaskedLM as MLM

    vocabs = {}
    for family, (config_cls, kw, tok_cls, pad) in configs().items():
        vocabs[family] = vocab_of(family)
        for kind, auto, extra in (("tiny", MLM, {}),
                                  ("cls", AutoModelForSequenceClassification,
                                   dict(num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"},
                                        label2id={"neg": 0, "neu": 1, "pos": 2}))):
            folder = HERE / f"{family}_{kind}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            model = perturbed(auto.from_config(config_cls(**kw, **extra)))
            model.save_pretrained(folder)
            tok = save_tokenizer(family, tok_cls, folder, vocabs[family])
            ids, mask = inputs(kw["vocab_size"], pad, rng)
            out[f"{family}_{kind}_ids"], out[f"{family}_{kind}_mask"] = ids, mask
            out[f"{family}_{kind}_logits"] = run(model, ids, mask)
        for i, (a, b) in enumerate(PAIRS):
            out[f"{family}_single{i}"] = np.asarray(tok(a)["input_ids"])
            out[f"{family}_pair{i}"] = np.asarray(tok(a, b)["input_ids"])
    folder = HERE / "electra_disc"
    shutil.rmtree(folder, ignore_errors=True)
    config_cls, kw, tok_cls, pad = configs()["electra"]
    disc = perturbed(ElectraForPreTraining(config_cls(**kw)))  # E = 16 < H: projected
    disc.save_pretrained(folder)
    save_tokenizer("electra", tok_cls, folder, vocabs["electra"])
    ids, mask = inputs(kw["vocab_size"], pad, rng)
    out["electra_disc_ids"], out["electra_disc_mask"] = ids, mask
    out["electra_disc_hidden"] = run(AutoModel.from_pretrained(folder), ids, mask, hidden=True)


def family_students(out, family, rng, **load):
    """transformers' logits for student_{family}/ and student_{family}_cls/ (loaded with
    `load`) on padded inputs, and the class each loads as."""
    for suffix, auto in (("", AutoModelForMaskedLM), ("_cls", AutoModelForSequenceClassification)):
        model = auto.from_pretrained(HERE / f"student_{family}{suffix}", **load)
        ids, mask = inputs(model.config.vocab_size, model.config.pad_token_id, rng)
        key = f"student_{family}{suffix}"
        out[f"{key}_ids"], out[f"{key}_mask"] = ids, mask
        out[f"{key}_logits"] = run(model, ids, mask)
        out[f"{key}_class"] = np.asarray(type(model).__name__)


def students(out, rng):
    for family in configs():
        family_students(out, family, rng)


def counts(rng):
    rows = []
    for family, (config_cls, kw, _, _) in configs().items():
        for _ in range(4):
            h = int(rng.choice([32, 64]))
            if family == "distilbert":
                cfg = dict(n_layers=int(rng.choice([1, 2, 3])), n_heads=4, dim=h,
                           hidden_dim=int(rng.choice([48, 96])),
                           vocab_size=int(rng.integers(100, 500)),
                           max_position_embeddings=int(rng.choice([64, 128])))
            else:
                cfg = dict(num_hidden_layers=int(rng.choice([1, 2, 3])), num_attention_heads=4,
                           hidden_size=h, intermediate_size=int(rng.choice([48, 96])),
                           vocab_size=int(rng.integers(100, 500)),
                           max_position_embeddings=int(rng.choice([64, 128])))
                if family == "electra":  # E < H, E = H and E > H (electra-base's generator)
                    cfg["embedding_size"] = int(rng.choice([16, h, 2 * h]))
                if family == "xlmr":
                    cfg.update(type_vocab_size=1, pad_token_id=1)
            model = AutoModelForMaskedLM.from_config(config_cls(**cfg))
            rows.append({"family": family, **cfg, "num_parameters": model.num_parameters()})
    # ELECTRA's E > H, as electra-base's generator has it (768 against 256)
    cfg = dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=48,
               vocab_size=300, max_position_embeddings=64, embedding_size=64)
    model = AutoModelForMaskedLM.from_config(ElectraConfig(**cfg))
    rows.append({"family": "electra", **cfg, "num_parameters": model.num_parameters()})
    (HERE / "families_counts.json").write_text(json.dumps(rows, indent=1) + "\n")


def golden_main(npz, teachers, students, counts):
    """A family golden script's two passes: `teachers` (with `counts`) into a new `npz`,
    or with `--students` the students' logits added to it."""
    torch.manual_seed(0)
    if "--students" in sys.argv[1:]:
        out = dict(np.load(npz))
        students(out, np.random.default_rng(1))
    else:
        out = {}
        teachers(out, np.random.default_rng(0))
        counts(np.random.default_rng(2))
    np.savez_compressed(npz, **out)
    print("wrote", npz.name, sorted({k.rsplit("_", 1)[0] for k in out}))


def main():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    if "--counts" in sys.argv[1:]:
        counts(np.random.default_rng(2))
        return
    if "--students" in sys.argv[1:]:
        out = dict(np.load(NPZ))
        students(out, np.random.default_rng(1))
    else:
        out = {}
        teachers(out, rng)
        counts(np.random.default_rng(2))
    np.savez_compressed(NPZ, **out)
    print("wrote", NPZ.name, sorted({k.rsplit("_", 1)[0] for k in out}))


if __name__ == "__main__":
    main()
