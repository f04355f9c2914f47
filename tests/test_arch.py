import pytest

from bortsearch import Arch, UserError
from bortsearch.model.arch import parse_size


def test_hidden_must_divide_by_heads():
    with pytest.raises(ValueError, match="multiple of heads"):
        Arch(2, 3, 64, 128)


def test_with_size_keeps_family_settings():
    base = Arch(2, 2, 64, 128, vocab_size=99, model_type="roberta", pad_token_id=1)
    other = base.with_size(4, 8, 256, 512)
    assert other.size == (4, 8, 256, 512)
    assert (other.vocab_size, other.model_type, other.pad_token_id) == (99, "roberta", 1)
    assert Arch.from_dict(other.to_dict()) == other


def test_roberta_max_seq_len_excludes_padding_offset():
    assert Arch(1, 1, 8, 8, max_positions=514, model_type="roberta",
                pad_token_id=1).max_seq_len == 512
    assert Arch(1, 1, 8, 8, max_positions=512).max_seq_len == 512


def test_parse_size():
    assert parse_size("4,8,1024,768") == (4, 8, 1024, 768)
    with pytest.raises(UserError, match="four positive integers"):
        parse_size("4,8,1024")
    with pytest.raises(UserError, match="multiple of heads"):
        parse_size("4,3,1024,768")
