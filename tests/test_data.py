import re

import numpy as np
import pytest

from bortsearch import BatchSpec, UserError, load_data, resolve_corpus, train_tokenizer
from bortsearch.data.tokenizer import Tokenizer

SPEC = BatchSpec(batch_size=8, seq_len=32, heldout_batches=2, seed=0)


@pytest.fixture(scope="module")
def corpus_and_tokenizer():
    corpus = resolve_corpus(None)
    return corpus, train_tokenizer(corpus, 1000)


def test_corpus_is_tokenised_once_and_reused(tmp_path, monkeypatch):
    f = tmp_path / "c.txt"
    f.write_text("\n\n".join(f"document {i} says something about the number {i}."
                             for i in range(3000)))
    corpus = resolve_corpus([str(f)])
    tok = train_tokenizer(corpus, 200)
    first = load_data(corpus, tok, SPEC)

    def boom(self, texts):
        raise AssertionError("tokenised again")

    monkeypatch.setattr(Tokenizer, "encode_batch", boom)
    second = load_data(corpus, tok, SPEC)
    assert isinstance(second.tokens, np.memmap)
    np.testing.assert_array_equal(first.tokens, second.tokens)


def test_batches_repeat_with_a_seed_and_change_with_another(corpus_and_tokenizer):
    corpus, tok = corpus_and_tokenizer
    a, b = load_data(corpus, tok, SPEC), load_data(corpus, tok, SPEC)
    c = load_data(corpus, tok, BatchSpec(**{**SPEC.__dict__, "seed": 1}))
    for step in (0, 7, 10_000):  # 10,000 steps is several epochs in
        for key in a.train_batch(step):
            np.testing.assert_array_equal(a.train_batch(step)[key], b.train_batch(step)[key])
        assert not np.array_equal(a.train_batch(step)["input_ids"],
                                  c.train_batch(step)["input_ids"])
    # the held-out set B does not depend on the training seed
    for x, y in zip(a.heldout_batches(), c.heldout_batches()):
        np.testing.assert_array_equal(x["input_ids"], y["input_ids"])


def test_heldout_never_overlaps_training(corpus_and_tokenizer):
    corpus, tok = corpus_and_tokenizer
    data = load_data(corpus, tok, SPEC)
    assert not set(data.heldout_idx) & set(data.train_idx)


def test_masking_follows_bert(corpus_and_tokenizer):
    corpus, tok = corpus_and_tokenizer
    spec = BatchSpec(batch_size=64, seq_len=128, heldout_batches=1, seed=3)
    data = load_data(corpus, tok, spec)
    masked = random = kept = total = 0
    for step in range(20):
        b = data.train_batch(step)
        ids = b["input_ids"]
        assert (ids[:, 0] == tok.cls_id).all() and (ids[:, -1] == tok.sep_id).all()
        n = b["weights"].sum(1)
        assert (n <= spec.predictions).all() and spec.predictions == 20
        for r in range(len(ids)):
            pos, labels = b["positions"][r, : int(n[r])], b["labels"][r, : int(n[r])]
            original = np.concatenate([[tok.cls_id], data.tokens[
                data._order(0)[step * 64 + r] * data.window:][:data.window], [tok.sep_id]])
            np.testing.assert_array_equal(labels, original[pos])  # labels are the true tokens
            assert not np.isin(labels, tok.special_ids).any()
            seen = ids[r, pos]
            masked += (seen == tok.mask_id).sum()
            kept += (seen == labels).sum()
            random += ((seen != tok.mask_id) & (seen != labels)).sum()
            total += len(pos)
    assert 0.77 < masked / total < 0.83
    assert 0.08 < random / total < 0.12 and 0.08 < kept / total < 0.13
    assert 0.145 < total / (20 * 64 * 126) < 0.155  # 15% of the non-special tokens


def test_empty_corpus(tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("\n\n   \n")
    corpus = resolve_corpus([str(tmp_path / "empty.txt")])
    tok = train_tokenizer(resolve_corpus(None), 200)
    with pytest.raises(UserError, match="is empty: it holds no text"):
        load_data(corpus, tok, SPEC)


def test_corpus_shorter_than_a_batch(tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("just a few words here")
    tok = train_tokenizer(resolve_corpus(None), 200)
    with pytest.raises(UserError, match="is too short: .* lower --batch-size / --seq-len") as err:
        load_data(resolve_corpus([str(f)]), tok, SPEC)
    # the message's estimate is enough: that many tokens load
    need = int(re.search(r"need about ([\d,]+) tokens", str(err.value)).group(1).replace(",", ""))
    f.write_text(" ".join(f"w{i % 50}" for i in range(need + 100)))
    assert load_data(resolve_corpus([str(f)]), tok, SPEC).train_sequences >= SPEC.batch_size


def test_real_corpus_wikitext(shared_data):
    corpus = resolve_corpus([str(shared_data / "wikitext-2-raw" / "wiki.test.raw")])
    tok = train_tokenizer(corpus, 2000)
    data = load_data(corpus, tok, BatchSpec(batch_size=16, seq_len=64))
    assert len(data.tokens) > 200_000 and tok.vocab_size == 2000
    assert data.train_batch(0)["input_ids"].shape == (16, 64)


def test_too_short_sequences_are_refused(corpus_and_tokenizer):
    corpus, tok = corpus_and_tokenizer
    with pytest.raises(UserError, match="--seq-len 7 is too short; use at least 8"):
        load_data(corpus, tok, BatchSpec(batch_size=8, seq_len=7))


def test_a_bad_file_leaves_no_partial_token_cache(tmp_path, corpus_and_tokenizer):
    from bortsearch.runio import cache_dir

    _, tok = corpus_and_tokenizer
    f = tmp_path / "bad.txt"
    f.write_bytes(b"fine\n" * 3000 + b"\xff")
    before = set((cache_dir() / "tokens").iterdir())
    with pytest.raises(UserError, match="not UTF-8"):
        load_data(resolve_corpus([str(f)]), tok, SPEC)
    assert set((cache_dir() / "tokens").iterdir()) == before


def test_training_a_tokenizer_on_a_bad_file_names_it(tmp_path):
    f = tmp_path / "bad.txt"
    f.write_bytes(b"fine words\n\xfe")
    with pytest.raises(UserError, match="bad.txt: not UTF-8"):
        train_tokenizer(resolve_corpus([str(f)]), 300)


def test_sentence_order_pairs_on_the_gutenberg_books(shared_data):
    """ALBERT's SOP examples: two consecutive segments of one document (a paragraph
    of the books: documents end at blank lines), cut after a sentence end, swapped
    half the time; `[CLS] A [SEP] B [SEP]` with token types 0 then 1."""
    from bortsearch.data.batches import sentence_end_ids
    from bortsearch.data.tokenizer import load_tokenizer

    tok = load_tokenizer(shared_data.parent / "teachers" / "gutenberg-mini", "bert")
    corpus = resolve_corpus([str(shared_data / "gutenberg" / "valid.txt")])
    spec = BatchSpec(batch_size=32, seq_len=64, heldout_batches=4, seed=0)
    data = load_data(corpus, tok, spec, pairs=True)
    ends = sentence_end_ids(tok)
    assert {tok.hf.id_to_token(int(i)) for i in np.flatnonzero(ends)} == {".", "!", "?"}

    swapped, cut_at_sentence = [], 0
    for seq in data.train_idx[:200]:
        body = np.asarray(data.tokens[seq * data.window:(seq + 1) * data.window - 1], np.int32)
        rng = np.random.default_rng(int(seq))
        ids, types, label = data._pair(body, rng)
        assert ids[0] == tok.cls_id and ids[-1] == tok.sep_id and len(ids) <= spec.seq_len
        middle = int(np.flatnonzero(ids == tok.sep_id)[0])
        a, b = ids[1:middle], ids[middle + 1:-1]
        assert len(a) and len(b) and tok.sep_id not in np.concatenate([a, b])
        assert (types == np.r_[np.zeros(middle + 1), np.ones(len(b) + 1)]).all()
        first, second = (b, a) if label else (a, b)
        text = np.concatenate([first, second])  # consecutive text of one document:
        assert any((body[i:i + len(text)] == text).all() for i in range(len(body) - len(text) + 1))
        cut_at_sentence += bool(ends[first[-1]])
        swapped.append(label)
    assert 0.4 < np.mean(swapped) < 0.6
    assert cut_at_sentence > 0.8 * len(swapped)  # the books' paragraphs have sentence ends

    held = data.heldout_batches()
    assert held[0].keys() >= {"token_type_ids", "sop_labels"}
    labels = np.concatenate([h["sop_labels"] for h in held])
    assert 0.35 < labels.mean() < 0.65
    for h in held:  # padding after the pair: no attention, no token type, no prediction
        real = h["attention_mask"].astype(bool)
        assert not h["token_type_ids"][~real].any()
        assert (h["input_ids"][~real] == tok.pad_id).all()
        assert np.take_along_axis(real, h["positions"], 1)[h["weights"] > 0].all()
    # the same batches again (a pure function of the step)
    again = load_data(corpus, tok, spec, pairs=True).train_batch(3)
    assert all((again[k] == data.train_batch(3)[k]).all() for k in again)
