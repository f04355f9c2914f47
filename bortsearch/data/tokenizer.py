"""Tokenizers, through Hugging Face `tokenizers`.

A teacher's tokenizer loads from its `tokenizer.json`, or its `vocab.txt`
(WordPiece, BERT) or `vocab.json` + `merges.txt` (byte-level BPE, RoBERTa). With
no teacher, a WordPiece tokenizer is trained on the corpus once and cached under
a key of corpus and vocabulary size.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from bortsearch.data.corpus import Corpus
from bortsearch.errors import UserError
from bortsearch.runio import cache_dir

SPECIAL = {
    "bert": dict(cls="[CLS]", sep="[SEP]", pad="[PAD]", mask="[MASK]", unk="[UNK]"),
    "roberta": dict(cls="<s>", sep="</s>", pad="<pad>", mask="<mask>", unk="<unk>"),
    "albert": dict(cls="[CLS]", sep="[SEP]", pad="<pad>", mask="[MASK]", unk="<unk>"),
}
CLASS_NAMES = {"bert": "BertTokenizerFast", "roberta": "RobertaTokenizerFast",
               "albert": "AlbertTokenizerFast"}
# Model families with a tokenizer class of their own: (its special-token set, the class)
FAMILY_TOKENIZERS = {"distilbert": ("bert", "DistilBertTokenizerFast"),
                     "electra": ("bert", "ElectraTokenizerFast"),
                     "xlm-roberta": ("roberta", "XLMRobertaTokenizerFast"),
                     "modernbert": ("bert", "PreTrainedTokenizerFast"),
                     "deberta-v2": ("bert", "DebertaV2TokenizerFast")}
DEFAULT_VOCAB_SIZE = 4096


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """A `tokenizers.Tokenizer` with the ids of its family's special tokens."""

    hf: tokenizers.Tokenizer
    family: str  # the special-token set: "bert", "roberta" or "albert"
    lowercase: bool = True
    model_type: str = ""  # the model family it came with, where it names the class

    def _id(self, role: str) -> int:
        token = SPECIAL[self.family][role]
        i = self.hf.token_to_id(token)
        if i is None:
            raise UserError(f"the tokenizer has no {token} token, which a {self.family} "
                            f"tokenizer needs; use the teacher's own tokenizer files")
        return i

    @property
    def cls_id(self) -> int:
        return self._id("cls")

    @property
    def sep_id(self) -> int:
        return self._id("sep")

    @property
    def pad_id(self) -> int:
        return self._id("pad")

    @property
    def mask_id(self) -> int:
        return self._id("mask")

    @property
    def special_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self._id(r) for r in SPECIAL[self.family]))

    @property
    def class_name(self) -> str:
        """The `transformers` tokenizer class that reads these files."""
        if self.model_type in FAMILY_TOKENIZERS:
            return FAMILY_TOKENIZERS[self.model_type][1]
        return CLASS_NAMES[self.family]

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids without special tokens."""
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def save(self, directory: str | Path, model_max_length: int = 512) -> None:
        """Write `tokenizer.json`, the model's own vocabulary files and the
        configuration `transformers.AutoTokenizer` reads."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.hf.save(str(directory / "tokenizer.json"))
        if not isinstance(self.hf.model, models.Unigram):  # its files: tokenizer.json alone
            self.hf.model.save(str(directory))
        special = {f"{role}_token": tok for role, tok in SPECIAL[self.family].items()}
        if self.family == "roberta":
            special["bos_token"], special["eos_token"] = special["cls_token"], special["sep_token"]
        config = {
            "tokenizer_class": self.class_name,
            "model_max_length": model_max_length,
            **special,
        }
        if self.family != "roberta":
            config["do_lower_case"] = self.lowercase
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
        (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


# What a folder's tokenizer is read from, in this order of preference.
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.txt",), ("vocab.json", "merges.txt"),
                   ("spiece.model",))


def tokenizer_files(directory: str | Path) -> tuple[str, ...] | None:
    """The files `load_tokenizer` reads in a checkpoint folder; None if it has none."""
    d = Path(directory)
    return next((names for names in TOKENIZER_FILES
                 if all((d / n).is_file() for n in names)), None)


def has_tokenizer_files(directory: str | Path) -> bool:
    """Whether a checkpoint folder has tokenizer files that `load_tokenizer` reads."""
    return tokenizer_files(directory) is not None


def load_tokenizer(directory: str | Path, model_type: str) -> Tokenizer:
    """A checkpoint directory's tokenizer: tokenizer.json, else vocab.txt, else
    vocab.json + merges.txt, else ALBERT's SentencePiece spiece.model; with the special
    tokens of the model family `model_type`."""
    family = FAMILY_TOKENIZERS[model_type][0] if model_type in FAMILY_TOKENIZERS else model_type
    d = Path(directory)
    lowercase = _lowercase(d)
    files = tokenizer_files(d)
    try:
        if files is None and (d / "spm.model").is_file():
            raise UserError(f"{d}: spm.model (DeBERTa's SentencePiece model) alone is not "
                            f"read; write tokenizer.json beside it once with transformers: "
                            f"AutoTokenizer.from_pretrained(folder).save_pretrained(folder)")
        if files is None:
            raise UserError(f"{d}: no tokenizer files (tokenizer.json, vocab.txt, "
                            f"vocab.json + merges.txt, or spiece.model); copy the teacher's "
                            f"tokenizer files into the folder")
        if files[0] == "tokenizer.json":
            hf = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
            # A saved padding or truncation setting (sentence-transformers folders pad
            # and cut at 128) would cut every document of a corpus: transformers sets
            # both per call, and so does the code here.
            hf.no_padding()
            hf.no_truncation()
        elif files[0] == "vocab.txt":
            hf = _wordpiece(models.WordPiece.from_file(str(d / "vocab.txt"), unk_token="[UNK]"),
                            lowercase)
        elif files[0] == "vocab.json":
            hf = _byte_level_bpe(models.BPE.from_file(str(d / "vocab.json"),
                                                      str(d / "merges.txt")))
        else:
            hf = _sentencepiece(d / "spiece.model", lowercase, _keep_accents(d))
    except Exception as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"{d}: the tokenizer files cannot be read ({e}); replace them with "
                        f"the teacher's originals") from None
    if family == "albert":  # a SentencePiece ALBERT vocabulary, or a BERT one it borrowed
        family = "albert" if hf.token_to_id("<pad>") is not None else "bert"
    tok = Tokenizer(hf, family, lowercase, model_type if model_type in FAMILY_TOKENIZERS else "")
    tok.special_ids  # every special token must be there
    if hf.post_processor is None or family == "roberta":
        # RobertaTokenizerFast adds `<s> A </s></s> B </s>` whatever tokenizer.json says
        _post_process(hf, family)
    return tok


def _keep_accents(d: Path) -> bool:
    try:
        return bool(json.loads((d / "tokenizer_config.json").read_text()).get("keep_accents",
                                                                                False))
    except (OSError, ValueError):
        return False


def _sentencepiece(path: Path, lowercase: bool, keep_accents: bool) -> tokenizers.Tokenizer:
    """ALBERT's SentencePiece (unigram) vocabulary as a `tokenizers` pipeline, built
    as transformers converts `AlbertTokenizer`: "``" and "''" to '"', NFKD without
    accents (unless keep_accents), lowercase (unless do_lower_case is false), the
    model's own precompiled normalisation, runs of spaces to one; split at
    whitespace, "▁" word starts; the special tokens whole;
    a piece ending in digit-and-comma scored 100 lower. Needs the `sentencepiece`
    package (its model protobuf)."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        raise UserError(f"{path.parent}: its tokenizer is a SentencePiece spiece.model, which "
                        f"needs the sentencepiece package: pip install 'bortsearch[spiece]' "
                        f"(or save the tokenizer with tokenizer.json)") from None
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    if proto.trainer_spec.model_type != 1:  # UNIGRAM
        raise UserError(f"{path}: a SentencePiece model of type "
                        f"{proto.trainer_spec.model_type}, not unigram as ALBERT's")

    def score(piece) -> float:
        p = piece.piece
        return piece.score - (100 if len(p) >= 2 and p[-1] == "," and p[-2].isdigit() else 0)

    hf = tokenizers.Tokenizer(models.Unigram([(p.piece, score(p)) for p in proto.pieces],
                                             proto.trainer_spec.unk_id,
                                             proto.trainer_spec.byte_fallback))
    steps = [normalizers.Replace("``", '"'), normalizers.Replace("''", '"')]
    if not keep_accents:
        steps += [normalizers.NFKD(), normalizers.StripAccents()]
    if lowercase:
        steps.append(normalizers.Lowercase())
    if proto.normalizer_spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap))
    steps.append(normalizers.Replace(tokenizers.Regex(" {2,}"), " "))
    hf.normalizer = normalizers.Sequence(steps)
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    hf.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    # whole wherever they appear in a text, as AlbertTokenizer has them
    hf.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                           for t in SPECIAL["albert"].values() if hf.token_to_id(t) is not None])
    return hf


def _lowercase(d: Path) -> bool:
    try:
        config = json.loads((d / "tokenizer_config.json").read_text())
        return bool(config.get("do_lower_case", True))
    except (OSError, ValueError):
        return True


def _wordpiece(model, lowercase: bool) -> tokenizers.Tokenizer:
    hf = tokenizers.Tokenizer(model)
    hf.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.decoder = decoders.WordPiece()
    return hf


def _byte_level_bpe(model) -> tokenizers.Tokenizer:
    hf = tokenizers.Tokenizer(model)
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    return hf


def _post_process(hf: tokenizers.Tokenizer, family: str) -> None:
    """Special tokens around one text or a pair, as the family's Hugging Face
    tokenizer adds them: `[CLS] A [SEP] B [SEP]` with segment ids 0/1 (BERT), or
    `<s> A </s></s> B </s>`, all segment 0 (RoBERTa)."""
    s = SPECIAL[family]
    cls, sep = (s["cls"], hf.token_to_id(s["cls"])), (s["sep"], hf.token_to_id(s["sep"]))
    if family == "roberta":
        hf.post_processor = processors.RobertaProcessing(sep, cls, add_prefix_space=False)
        return
    hf.post_processor = processors.TemplateProcessing(
        single=f"{cls[0]} $A {sep[0]}", pair=f"{cls[0]} $A {sep[0]} $B:1 {sep[0]}:1",
        special_tokens=[cls, sep])


def train_tokenizer(corpus: Corpus, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """A lowercase WordPiece (BERT family) tokenizer trained on the corpus; cached,
    so each corpus and size is trained once."""
    if vocab_size < 100:
        raise UserError(f"--vocab-size {vocab_size} is too small for WordPiece; use >= 100")
    key = f"{corpus.fingerprint()[:16]}-wp{vocab_size}"
    path = cache_dir() / "tokenizers" / key
    if not (path / "tokenizer.json").is_file():
        hf = _wordpiece(models.WordPiece(unk_token="[UNK]"), lowercase=True)
        special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special,
                                            show_progress=False)
        hf.train_from_iterator(corpus.documents(), trainer=trainer)
        if hf.get_vocab_size() <= len(special):
            raise UserError(f"corpus {corpus.name or corpus.files[0]}: no text to train a "
                            f"tokenizer on; pass a corpus with some text")
        _post_process(hf, "bert")
        tmp = Path(tempfile.mkdtemp(dir=_mkdir(path.parent)))
        Tokenizer(hf, "bert").save(tmp)
        try:
            os.replace(tmp, path)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return load_tokenizer(path, "bert")


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p
