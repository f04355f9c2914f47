"""Masked-LM batches from a corpus tokenised once into an on-disk token array.

The token array (`uint16` or `uint32`, memory-mapped) is the corpus's documents
in order, each followed by the separator token; it is written once per corpus
and tokenizer and reused. Sequences are consecutive windows of L - 2 tokens
framed by the family's [CLS] ... [SEP]. Every 20th sequence is held out.

A batch is a pure function of (seed, step): the training order is a seeded
permutation per epoch and each sequence's masking is seeded by its position in
the stream, so every candidate of a search sees the identical batches, and a
resumed run needs only its step number.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os

import numpy as np

from bortsearch.config import option, positive_int
from bortsearch.data.corpus import Corpus
from bortsearch.data.tokenizer import Tokenizer
from bortsearch.errors import UserError
from bortsearch.runio import cache_dir, write_json

HELDOUT_EVERY = 20
MIN_SEQ_LEN = 8
_CHUNK_DOCS = 512


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    """How batches are cut and masked (BERT's recipe; ALGORITHM.md)."""

    batch_size: int = option(32, "sequences per batch, split across all local devices",
                             type=positive_int)
    seq_len: int = option(64, "tokens per sequence", type=positive_int)
    mask_prob: float = 0.15
    max_predictions: int | None = None  # default: 80 per 512 tokens, scaled
    heldout_batches: int = 4
    seed: int = option(0, "seed of data order, masking and initialisation", type=int)

    @property
    def predictions(self) -> int:
        if self.max_predictions is not None:
            return self.max_predictions
        return max(1, round(self.seq_len * 80 / 512))


def tokenize_corpus(corpus: Corpus, tokenizer: Tokenizer, progress: bool = False) -> np.ndarray:
    """The corpus as one token array, cached on disk (written once, atomically)."""
    key = hashlib.sha256(
        (corpus.fingerprint() + tokenizer.hf.to_str()).encode()).hexdigest()[:24]
    base = cache_dir() / "tokens" / key
    meta_path = base.with_suffix(".json")
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        return np.memmap(base.with_suffix(".bin"), dtype=meta["dtype"], mode="r",
                         shape=(meta["count"],)) if meta["count"] else np.zeros(0, meta["dtype"])
    base.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    tmp = base.with_suffix(f".tmp{os.getpid()}")
    count = 0
    bar = _bar(corpus.size_bytes(), "tokenising", progress)
    try:
        count = _write_tokens(corpus, tokenizer, tmp, dtype, bar)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a bad file or a Ctrl-C leaves nothing behind
        raise
    finally:
        bar.close()
    os.replace(tmp, base.with_suffix(".bin"))
    write_json(meta_path, {"dtype": np.dtype(dtype).name, "count": count,  # whole or absent:
               "corpus": corpus.name})  # processes of one job may tokenise at once
    return tokenize_corpus(corpus, tokenizer)


def _write_tokens(corpus: Corpus, tokenizer: Tokenizer, path, dtype, bar) -> int:
    """Stream the corpus through the tokenizer into a raw token file; its length."""
    count = 0
    with open(path, "wb") as out:
        chunk: list[str] = []
        for doc in _chain(corpus.documents(), [None]):
            if doc is not None:
                chunk.append(doc)
            if chunk and (doc is None or len(chunk) >= _CHUNK_DOCS):
                ids = [np.append(np.asarray(d, dtype), dtype(tokenizer.sep_id))
                       for d in tokenizer.encode_batch(chunk) if d]
                if ids:
                    flat = np.concatenate(ids)
                    out.write(flat.tobytes())
                    count += len(flat)
                bar.update(sum(len(c.encode()) for c in chunk))
                chunk = []
    return count


def _chain(*iterables):
    for it in iterables:
        yield from it


def _bar(total, desc, enabled):
    from bortsearch.runio import progress_bar

    return progress_bar(total=total, desc=desc, unit="B", unit_scale=True,
                        disable=not enabled, leave=False)


class MLMData:
    """Training and held-out masked-LM batches over a token array.

    Each batch is a dict of NumPy arrays ready for `jax.device_put`:
    `input_ids` and `attention_mask` (B x L, int32), `positions` and `labels`
    (B x P, int32: where the predictions are and the true tokens), `weights`
    (B x P, float32: 1 for a real prediction, 0 for an unused slot).
    """

    def __init__(self, tokens: np.ndarray, tokenizer: Tokenizer, spec: BatchSpec,
                 source: str = "the corpus", pairs: bool = False):
        self.tokens, self.tokenizer, self.spec, self.pairs = tokens, tokenizer, spec, pairs
        window = spec.seq_len - 2
        if spec.seq_len < MIN_SEQ_LEN:
            raise UserError(f"--seq-len {spec.seq_len} is too short; use at least {MIN_SEQ_LEN}")
        n = len(tokens) // window
        idx = np.arange(n)
        held = idx[idx % HELDOUT_EVERY == HELDOUT_EVERY - 1]
        self.train_idx = idx[idx % HELDOUT_EVERY != HELDOUT_EVERY - 1]
        need_held = spec.heldout_batches * spec.batch_size
        if len(tokens) == 0:
            raise UserError(f"{source} is empty: it holds no text; pass a corpus with text")
        if len(self.train_idx) < spec.batch_size or len(held) < need_held:
            need = max(need_held * HELDOUT_EVERY,  # every 20th sequence is held out
                       -(-spec.batch_size * HELDOUT_EVERY // (HELDOUT_EVERY - 1)))
            raise UserError(
                f"{source} is too short: {len(tokens):,} tokens make {n} sequences of "
                f"{spec.seq_len}, but one training batch of {spec.batch_size} and "
                f"{spec.heldout_batches} held-out batches need about {need * window:,} "
                f"tokens; pass more text, or lower --batch-size / --seq-len")
        self.heldout_idx = held[:need_held]
        self.window = window
        special = np.asarray(tokenizer.special_ids)
        self._is_special = np.zeros(max(tokenizer.vocab_size, int(special.max()) + 1), bool)
        self._is_special[special] = True
        self._normal_ids = np.flatnonzero(~self._is_special[:tokenizer.vocab_size])
        if pairs:
            self._sentence_end = sentence_end_ids(tokenizer)

    def with_seed(self, seed: int) -> MLMData:
        """The same token array and held-out set B, another training order and masking."""
        return MLMData(self.tokens, self.tokenizer, dataclasses.replace(self.spec, seed=seed),
                       pairs=self.pairs)

    def unigram_log_probs(self, vocab_size: int, max_tokens: int = 1 << 22) -> np.ndarray:
        """log q(v) over a model's `vocab_size` ids: token frequencies of the corpus
        (its first `max_tokens` tokens), add-one smoothed: the context-free predictor
        that ê's unigram baseline scores."""
        counts = np.bincount(np.asarray(self.tokens[:max_tokens]),
                             minlength=vocab_size).astype(np.float64)
        counts[self.tokenizer.sep_id] = 0.0  # the document separator is never a label
        counts = counts[:vocab_size] + 1.0
        return np.log(counts / counts.sum()).astype(np.float32)

    @property
    def train_sequences(self) -> int:
        return len(self.train_idx)

    def tokens_per_batch(self) -> int:
        return self.spec.batch_size * self.spec.seq_len

    @functools.lru_cache(maxsize=4)
    def _order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.spec.seed, 0, epoch])
        return self.train_idx[rng.permutation(len(self.train_idx))]

    def train_batch(self, step: int) -> dict[str, np.ndarray]:
        """Batch number `step` of the training stream (any step, in any order)."""
        b = self.spec.batch_size
        rows = []
        for i in range(step * b, (step + 1) * b):
            epoch, k = divmod(i, len(self.train_idx))
            rows.append((self._order(epoch)[k], (self.spec.seed, 1, i)))
        return self._batch(rows)

    def heldout_batches(self) -> list[dict[str, np.ndarray]]:
        """The fixed held-out set B, masked the same way whatever the training seed."""
        b = self.spec.batch_size
        return [self._batch([(k, (2, int(k))) for k in self.heldout_idx[j * b:(j + 1) * b]])
                for j in range(self.spec.heldout_batches)]

    def _pair(self, body: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray, int]:
        """ALBERT's sentence-order example from one window: (ids, token types, label).

        The window's longest run inside one document (documents end at the
        separator the tokeniser appends to each) is cut at the sentence end nearest
        its middle (a token that is ".", "!" or "?"; the middle itself when there is
        none) into A and B, consecutive text; with probability 0.5 they are swapped
        (label 1). `[CLS] A [SEP] B [SEP]`, types 0 then 1, padded to the length."""
        tok = self.tokenizer
        ends = np.flatnonzero(body == tok.sep_id)
        bounds = np.concatenate([[-1], ends, [len(body)]])
        k = int(np.argmax(np.diff(bounds)))
        doc = body[bounds[k] + 1:bounds[k + 1]][:self.window - 1]  # room for the middle [SEP]
        if len(doc) < 2:
            doc = np.resize(body[body != tok.sep_id], 2) if (body != tok.sep_id).any() \
                else np.full(2, tok.mask_id, np.int32)
        stops = 1 + np.flatnonzero(self._sentence_end[doc[:-1]])  # cut after a sentence end
        middle = len(doc) // 2
        cut = int(stops[np.argmin(np.abs(stops - middle))]) if len(stops) else max(1, middle)
        a, b = doc[:cut], doc[cut:]
        label = int(rng.random() < 0.5)
        if label:
            a, b = b, a
        ids = np.concatenate([[tok.cls_id], a, [tok.sep_id], b, [tok.sep_id]]).astype(np.int32)
        types = np.concatenate([np.zeros(len(a) + 2, np.int32), np.ones(len(b) + 1, np.int32)])
        return ids, types, label

    def _batch(self, rows) -> dict[str, np.ndarray]:
        spec, tok = self.spec, self.tokenizer
        length, p = spec.seq_len, spec.predictions
        out = {
            "input_ids": np.empty((len(rows), length), np.int32),
            "attention_mask": np.ones((len(rows), length), np.int32),
            "positions": np.zeros((len(rows), p), np.int32),
            "labels": np.zeros((len(rows), p), np.int32),
            "weights": np.zeros((len(rows), p), np.float32),
        }
        if self.pairs:
            out["token_type_ids"] = np.zeros((len(rows), length), np.int32)
            out["sop_labels"] = np.zeros(len(rows), np.int32)
        for r, (seq, seed) in enumerate(rows):
            body = np.asarray(self.tokens[seq * self.window:(seq + 1) * self.window], np.int32)
            rng = np.random.default_rng(seed)
            if self.pairs:
                ids, types, out["sop_labels"][r] = self._pair(body[:-1], rng)
                n_real = len(ids)
                ids = np.concatenate([ids, np.full(length - n_real, tok.pad_id, np.int32)])
                out["token_type_ids"][r, :n_real] = types
                out["attention_mask"][r, n_real:] = 0
                candidates = np.flatnonzero(~self._is_special[ids[:n_real]])
            else:
                ids = np.concatenate([[tok.cls_id], body, [tok.sep_id]]).astype(np.int32)
                candidates = 1 + np.flatnonzero(~self._is_special[body])
            n = min(p, max(1, round(spec.mask_prob * len(candidates))), len(candidates))
            chosen = np.sort(rng.choice(candidates, n, replace=False))
            labels = ids[chosen]
            roll = rng.random(n)
            masked = ids.copy()
            masked[chosen[roll < 0.8]] = tok.mask_id  # 80% [MASK]
            random_slots = chosen[(roll >= 0.8) & (roll < 0.9)]  # 10% random, 10% kept
            masked[random_slots] = rng.choice(self._normal_ids, len(random_slots))
            out["input_ids"][r] = masked
            out["positions"][r, :n] = chosen
            out["labels"][r, :n] = labels
            out["weights"][r, :n] = 1.0
        return out


def sentence_end_ids(tokenizer: Tokenizer) -> np.ndarray:
    """A mask over the vocabulary: the tokens that end a sentence (".", "!", "?",
    alone or with the word-start mark of WordPiece, byte-level BPE or SentencePiece)."""
    marks = {".", "!", "?"}
    vocab = tokenizer.hf.get_vocab()
    out = np.zeros(max(tokenizer.vocab_size, max(vocab.values()) + 1), bool)
    for piece, i in vocab.items():
        if piece.lstrip("Ġ▁").removeprefix("##") in marks:
            out[i] = True
    return out


def load_data(corpus: Corpus, tokenizer: Tokenizer, spec: BatchSpec,
              progress: bool = False, pairs: bool = False) -> MLMData:
    """Tokenise (once) and wrap a corpus as masked-LM batches (with `pairs`, ALBERT's
    sentence-order pairs: `token_type_ids` and `sop_labels` besides)."""
    tokens = tokenize_corpus(corpus, tokenizer, progress)
    return MLMData(tokens, tokenizer, spec, source=f"corpus {corpus.name or corpus.files[0]}",
                   pairs=pairs)
