"""Architectures: one frozen dataclass for teacher, maximum point and candidates.

Sizes are data. `Arch` holds the four search axes ⟨D, A, H, I⟩ plus the settings
a BERT or RoBERTa checkpoint needs; the model in `bortsearch.model` is built from
it and nothing else.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from bortsearch.errors import UserError

ModelType = Literal["bert", "roberta"]
MODEL_TYPES: tuple[str, ...] = ("bert", "roberta")


@dataclasses.dataclass(frozen=True)
class Arch:
    """A BERT-family masked-LM encoder.

    Attributes:
      layers: D, the number of encoder layers.
      heads: A, attention heads per layer; `hidden` must be a multiple of it.
      hidden: H, the hidden (model) size.
      intermediate: I, the feed-forward inner size.
      vocab_size: rows of the word-embedding table.
      max_positions: rows of the position table, as Hugging Face's
        `max_position_embeddings` (RoBERTa's 514 includes its padding offset).
      type_vocab_size: rows of the token-type table; 0 means no such table.
      layer_norm_eps: LayerNorm epsilon (BERT 1e-12, RoBERTa 1e-5).
      pad_token_id: the padding token; RoBERTa positions are counted from it.
      tie_decoder: whether the output projection is the word-embedding table.
      model_type: "bert" (positions 0..L-1) or "roberta" (positions start after
        the padding index and skip padding, as in Hugging Face).
    """

    layers: int
    heads: int
    hidden: int
    intermediate: int
    vocab_size: int = 30522
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    tie_decoder: bool = True
    model_type: ModelType = "bert"

    def __post_init__(self):
        for name in ("layers", "heads", "hidden", "intermediate", "vocab_size", "max_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Arch.{name} must be a positive integer, got {name}={value!r}")
        if self.type_vocab_size < 0:
            raise ValueError(f"Arch.type_vocab_size must be >= 0, got {self.type_vocab_size=}")
        if self.hidden % self.heads:
            raise ValueError(
                f"hidden must be a multiple of heads, got hidden={self.hidden}, heads={self.heads}"
            )
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type=}")

    @property
    def size(self) -> tuple[int, int, int, int]:
        """The search axes ⟨D, A, H, I⟩."""
        return (self.layers, self.heads, self.hidden, self.intermediate)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def max_seq_len(self) -> int:
        """The longest input the position table allows."""
        offset = self.pad_token_id + 1 if self.model_type == "roberta" else 0
        return self.max_positions - offset

    def with_size(self, layers: int, heads: int, hidden: int, intermediate: int) -> Arch:
        """The same family settings with other search axes."""
        return dataclasses.replace(
            self, layers=layers, heads=heads, hidden=hidden, intermediate=intermediate
        )

    def label(self) -> str:
        return f"⟨D={self.layers}, A={self.heads}, H={self.hidden}, I={self.intermediate}⟩"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Arch:
        return cls(**d)


def parse_size(text: str) -> tuple[int, int, int, int]:
    """Parse a `D,A,H,I` flag value, e.g. "4,8,1024,768"."""
    parts = text.replace(" ", "").split(",")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) != 4 or min(size) < 1:
        raise UserError(
            f"--arch must be four positive integers D,A,H,I (layers, heads, hidden, "
            f"intermediate), e.g. --arch 4,8,1024,768; got {text!r}"
        )
    d, a, h, i = size
    if h % a:
        raise UserError(
            f"--arch {text}: hidden ({h}) must be a multiple of heads ({a}); "
            f"pick heads that divide {h}"
        )
    return size  # type: ignore[return-value]
