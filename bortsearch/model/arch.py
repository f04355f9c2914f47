"""Architectures: one frozen dataclass for teacher, maximum point and candidates.

Sizes are data. `Arch` holds the four search axes ⟨D, A, H, I⟩ plus the settings
a checkpoint of its family needs; the model in `bortsearch.model.encoder` is built from
it and nothing else.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from bortsearch.errors import UserError

ModelType = Literal["bert", "roberta", "albert", "distilbert", "xlm-roberta", "electra",
                    "modernbert"]
ACTIVATIONS: tuple[str, ...] = ("gelu", "gelu_new")  # exact (erf) GELU; tanh approximation


@dataclasses.dataclass(frozen=True)
class Family:
    """What a Hugging Face encoder family adds to the four axes, as data: the model
    reads these fields and never the family's name.

    Attributes:
      name: config.json's `model_type`.
      title: its name in prose ("XLM-RoBERTa").
      classes: transformers' class-name stem (`{classes}ForMaskedLM`).
      prefix: the base model's tensor-name prefix (`{prefix}.embeddings…`).
      layout: the layers' tensor names: "bert" (`encoder.layer.N.attention.self.query`),
        "distilbert" (`transformer.layer.N.attention.q_lin`) or "albert" (groups).
      positions: "absolute" (a learned table, 0..L-1), "padded" (RoBERTa's: counted
        from pad_token_id + 1 over the non-padding tokens), "rotary" (no table: the
        queries and keys rotated by position, ModernBERT's) or "relative" (no table:
        DeBERTa's disentangled attention, content-to-position and position-to-content
        scores from a table of bucketed relative positions).
      classifier: the sequence-classification head on the first token: "pooler"
        (act(pooler(x₀)) → classifier; BERT, ALBERT, DistilBERT's pre_classifier),
        "dense" (act(dense(x₀)) → out_proj; RoBERTa, ELECTRA) or "head"
        (norm(act(dense(x₀))) → classifier; ModernBERT).
      classifier_act: that head's activation, "tanh", "relu" or "gelu".
      embedding: E as this family has it: "albert" (always projected, an axis),
        "electra" (a family setting: projected when E ≠ H) or "none" (E = H).
      token_types: whether it has a token-type table (DistilBERT has none).
      norm: where the LayerNorms sit: "post" (BERT's, after each residual add) or "pre"
        (before each sublayer, none before the first layer's attention, one after the
        last layer; ModernBERT's).
      ffn: the feed-forward block: "mlp" (act(x·W₁)·W₂) or "glu" (GeGLU:
        (act(x·W_in) ⊙ x·W_gate)·W₂, ModernBERT's).
      bias: whether the dense layers and LayerNorms have biases (ModernBERT's have
        none; its decoder and classifier do).
      padded_vocab: whether released checkpoints have embedding rows past their
        tokenizer's last token (DeBERTa-v3: 128,100 rows, 128,001 tokens).
    """

    name: str
    title: str
    classes: str
    prefix: str
    layout: str = "bert"
    positions: str = "absolute"
    classifier: str = "pooler"
    classifier_act: str = "tanh"
    embedding: str = "none"
    token_types: bool = True
    norm: str = "post"
    ffn: str = "mlp"
    bias: bool = True
    padded_vocab: bool = False


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("bert", "BERT", "Bert", "bert", embedding="albert"),
    Family("roberta", "RoBERTa", "Roberta", "roberta", positions="padded", classifier="dense"),
    Family("albert", "ALBERT", "Albert", "albert", layout="albert", embedding="albert"),
    Family("distilbert", "DistilBERT", "DistilBert", "distilbert", layout="distilbert",
           classifier_act="relu", token_types=False),
    Family("xlm-roberta", "XLM-RoBERTa", "XLMRoberta", "roberta", positions="padded",
           classifier="dense"),
    Family("electra", "ELECTRA", "Electra", "electra", classifier="dense",
           classifier_act="gelu", embedding="electra"),
    Family("deberta-v2", "DeBERTa-v2/v3", "DebertaV2", "deberta", layout="deberta",
           positions="relative", classifier_act="gelu", padded_vocab=True),
    Family("modernbert", "ModernBERT", "ModernBert", "model", layout="modernbert",
           positions="rotary", classifier="head", classifier_act="gelu", token_types=False,
           norm="pre", ffn="glu", bias=False),
)}
MODEL_TYPES: tuple[str, ...] = tuple(FAMILIES)


def family_of(model_type: str) -> Family:
    return FAMILIES[model_type]


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
      model_type: the Hugging Face family (`FAMILIES`, whose `Family` says what it
        changes): "bert", "roberta" (positions start after the padding index and
        skip padding), "albert" (always an E→H projection), "distilbert",
        "xlm-roberta" or "electra" (E a family setting).
      embedding: E, the width of the embedding tables [ALBERT's factorised
        embedding; ELECTRA's embedding_size]: None means E = H and no projection;
        set, the embeddings are E wide, a dense E→H maps them to the layers, and
        the masked-LM head maps H→E before the decoder tied to the E-wide word table.
      groups: G, distinct layer parameter groups [ALBERT's cross-layer sharing]:
        layer i uses group ⌊i·G/D⌋ (contiguous blocks, Hugging Face's layout);
        None means G = D, no sharing.
      activation: "gelu" (exact, BERT's) or "gelu_new" (tanh approximation,
        ALBERT's default), in the feed-forward layers and the masked-LM head.
      rope_theta: the rotary base of the global-attention layers (a "rotary"
        family's; ModernBERT's global_rope_theta).
      local_rope_theta: the rotary base of the local-attention layers.
      local_window: None (every layer attends globally), or the local layers' window:
        a token attends to those at most local_window // 2 positions away
        (ModernBERT's local_attention).
      global_every: with a local window, layer i attends globally where
        i % global_every == 0, locally otherwise (global_attn_every_n_layers).
      relative_buckets: a "relative" family's position buckets (DeBERTa's
        position_buckets; 0: none, every distance up to max_relative its own).
      max_relative: the largest relative distance (max_relative_positions).
      pooling: what a "head" classifier reads: the first token ("cls") or the mean
        of the unpadded tokens ("mean"; ModernBERT's classifier_pooling).
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
    embedding: int | None = None
    groups: int | None = None
    activation: str = "gelu"
    rope_theta: float = 160000.0
    local_rope_theta: float = 10000.0
    local_window: int | None = None
    global_every: int = 1
    relative_buckets: int = 0
    max_relative: int = 0
    pooling: str = "cls"

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
        for name in ("embedding", "groups"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 1):
                raise ValueError(f"Arch.{name} must be a positive integer or None, "
                                 f"got {name}={value!r}")
        if self.groups is not None and self.layers % self.groups:
            raise ValueError(f"groups must divide layers, got layers={self.layers}, "
                             f"groups={self.groups}")
        if family_of(self.model_type).positions != "rotary" and \
                (self.local_window is not None or self.global_every != 1):
            raise ValueError(f"local attention is a rotary family's (ModernBERT); the "
                             f"{self.model_type} family attends globally")
        relative = family_of(self.model_type).positions == "relative"
        if relative != (self.max_relative > 0) or self.relative_buckets < 0:
            raise ValueError(f"max_relative must be >= 1 for a relative-position family and 0 "
                             f"otherwise, and relative_buckets >= 0; got {self.model_type=}, "
                             f"{self.max_relative=}, {self.relative_buckets=}")
        if self.pooling not in ("cls", "mean") or (
                self.pooling == "mean" and family_of(self.model_type).classifier != "head"):
            raise ValueError(f"pooling must be 'cls', or 'mean' for a family whose classifier "
                             f"pools (ModernBERT); got {self.pooling=} for {self.model_type}")
        if self.global_every < 1 or (self.local_window is not None and self.local_window < 2):
            raise ValueError(f"global_every must be >= 1 and local_window >= 2, got "
                             f"{self.global_every=}, {self.local_window=}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation=}")
        family = FAMILIES[self.model_type]
        if self.type_vocab_size and not family.token_types:
            raise ValueError(f"the {self.model_type} family has no token types: "
                             f"type_vocab_size must be 0, got {self.type_vocab_size}")
        if (self.groups and family.embedding != "albert") or \
                (self.embedding and family.embedding == "none"):
            raise ValueError(f"ALBERT's factorised embedding and layer sharing are not "
                             f"available for the {self.model_type} family; use a bert "
                             f"family space")

    def is_global(self, layer: int) -> bool:
        """Whether layer `layer` attends over the whole input (else within its window)."""
        return self.local_window is None or layer % self.global_every == 0

    @property
    def family(self) -> Family:
        """The family's features (`FAMILIES[model_type]`)."""
        return FAMILIES[self.model_type]

    @property
    def embedding_size(self) -> int:
        """E: the embedding width (H unless factorised)."""
        return self.embedding if self.embedding is not None else self.hidden

    @property
    def num_groups(self) -> int:
        """G: distinct layer parameter groups (D unless shared)."""
        return self.groups if self.groups is not None else self.layers

    @property
    def albert(self) -> bool:
        """Whether ALBERT's axes are in use (it then exports as an ALBERT model)."""
        return self.model_type == "albert" or self.groups is not None or (
            self.embedding is not None and self.family.embedding == "albert")

    @property
    def projected(self) -> bool:
        """Whether a dense E→H maps the embeddings to the layers: ALBERT always (an
        identity where E = H), ELECTRA where E ≠ H."""
        return self.albert or self.embedding is not None

    @property
    def size(self) -> tuple[int, ...]:
        """The search axes: ⟨D, A, H, I⟩, or ⟨D, A, H, I, E, G⟩ with ALBERT's axes."""
        base = (self.layers, self.heads, self.hidden, self.intermediate)
        if not self.albert:  # ELECTRA's E is a family setting, not an axis
            return base
        return base + (self.embedding_size, self.num_groups)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def has_position_table(self) -> bool:
        return self.family.positions not in ("rotary", "relative")

    @property
    def relative_span(self) -> int:
        """k: the relative-position table has 2k rows (DeBERTa's pos_ebd_size)."""
        return self.relative_buckets or self.max_relative

    @property
    def max_seq_len(self) -> int:
        """The longest input the position table allows."""
        offset = self.pad_token_id + 1 if self.family.positions == "padded" else 0
        return self.max_positions - offset

    def with_size(self, layers: int, heads: int, hidden: int, intermediate: int,
                  embedding: int | None = None, groups: int | None = None) -> Arch:
        """The same family settings with other search axes. E = H and G = D are
        stored as None (no projection, no sharing), so ⟨D, A, H, I, H, D⟩ is
        ⟨D, A, H, I⟩, except for an ALBERT checkpoint's family, which always
        has its projection. ELECTRA's E is a family setting: kept when not given."""
        if self.family.embedding == "electra" and embedding is None and groups is None:
            embedding = self.embedding
        if self.model_type != "albert":
            embedding = None if embedding == hidden else embedding
            groups = None if groups == layers else groups
        return dataclasses.replace(
            self, layers=layers, heads=heads, hidden=hidden, intermediate=intermediate,
            embedding=embedding, groups=groups)

    def label(self) -> str:
        extra = (f", E={self.embedding_size}, G={self.num_groups}"
                 if len(self.size) == 6 else "")
        return (f"⟨D={self.layers}, A={self.heads}, H={self.hidden}, "
                f"I={self.intermediate}{extra}⟩")

    def to_dict(self) -> dict:
        """As a dict; ALBERT's and the later families' fields (`OPTIONAL_FIELDS`) only where
        they differ from their defaults, so the records of architectures without them are
        as before."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in OPTIONAL_FIELDS or v != defaults[k]}

    @classmethod
    def from_dict(cls, d: dict) -> Arch:
        return cls(**d)


# Fields a record leaves out at their defaults (`Arch.to_dict`): those added after the
# first records were written, so that those records and their fingerprints stay valid.
OPTIONAL_FIELDS = ("embedding", "groups", "activation", "rope_theta", "local_rope_theta",
                   "local_window", "global_every", "relative_buckets", "max_relative",
                   "pooling")


def parse_size(text: str) -> tuple[int, ...]:
    """Parse a `D,A,H,I` (or `D,A,H,I,E,G`) flag value, e.g. "4,8,1024,768"."""
    parts = text.replace(" ", "").split(",")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) not in (4, 6) or min(size) < 1:
        raise UserError(
            f"--arch must be four positive integers D,A,H,I (layers, heads, hidden, "
            f"intermediate), or six with ALBERT's E,G (embedding width, layer groups), "
            f"e.g. --arch 4,8,1024,768; got {text!r}"
        )
    d, a, h, i = size[:4]
    if h % a:
        raise UserError(
            f"--arch {text}: hidden ({h}) must be a multiple of heads ({a}); "
            f"pick heads that divide {h}"
        )
    if len(size) == 6:
        e, g = size[4:]
        if e > h:
            raise UserError(f"--arch {text}: embedding E ({e}) must be at most hidden H ({h})")
        if d % g:
            raise UserError(f"--arch {text}: groups G ({g}) must divide layers D ({d})")
    return size


def row_size(row) -> tuple[int, ...]:
    """The search axes of a results-table row (a pandas row or a dict): ⟨D, A, H, I⟩,
    with ⟨E, G⟩ where the table has ALBERT's columns and the row uses them."""
    get = row.get if isinstance(row, dict) else (lambda k, d=None: getattr(row, k, d))
    d, a, h, i = (int(get(k)) for k in ("layers", "heads", "hidden", "intermediate"))
    e, g = get("embedding"), get("groups")
    if e is None or g is None or e != e or g != g:  # absent, or NaN
        return (d, a, h, i)
    e, g = int(e), int(g)
    return (d, a, h, i) if (e, g) == (h, d) else (d, a, h, i, e, g)
