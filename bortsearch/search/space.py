"""Search spaces: TOML files that map one-to-one onto `SearchSpace`.

A space file lists the four axes and, optionally, the model family every
architecture shares:

    name = "demo"
    description = "..."
    model_type = "bert"          # or "roberta"; sets the family defaults below
    vocab_size = 30522           # used until a tokenizer or teacher says otherwise
    max_positions = 512
    type_vocab_size = 2
    layers = [1, 2]
    heads = [2, 4]
    hidden = [64, 128]
    intermediate = [128, 256]
    embedding = [64, "H"]        # optional: ALBERT's factorised embedding width E
    groups = [1, "D"]            # optional: ALBERT's distinct layer groups G

Ξ is every combination with hidden mod heads = 0 (and, with ALBERT's axes,
E ≤ H and G dividing D), enumerated in a fixed order. "H" and "D" stand for
E = H (no factorisation) and G = D (no sharing); such architectures are exactly
those of the space without the axes.
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
from pathlib import Path

from bortsearch.errors import UserError
from bortsearch.model.arch import Arch
from bortsearch.model.proxies import DEFAULT_BATCH, DEFAULT_SEQ_LEN, forward_flops, param_count

AXES = ("layers", "heads", "hidden", "intermediate")
ALBERT_AXES = {"embedding": "H", "groups": "D"}  # optional axes and their shorthand

# What a BERT or RoBERTa checkpoint of each family has unless told otherwise.
FAMILY_DEFAULTS = {
    "bert": dict(vocab_size=30522, max_positions=512, type_vocab_size=2,
                 layer_norm_eps=1e-12, pad_token_id=0),
    "roberta": dict(vocab_size=50265, max_positions=514, type_vocab_size=1,
                    layer_norm_eps=1e-5, pad_token_id=1),
}


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The axes of Ξ and the family settings every architecture in it shares."""

    name: str
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    hidden: tuple[int, ...]
    intermediate: tuple[int, ...]
    description: str = ""
    model_type: str = "bert"
    vocab_size: int | None = None
    max_positions: int | None = None
    type_vocab_size: int | None = None
    embedding: tuple | None = None  # E values: ints, or "H"
    groups: tuple | None = None  # G values: ints, or "D"

    @property
    def albert(self) -> bool:
        return self.embedding is not None or self.groups is not None

    def base_arch(self, **overrides) -> Arch:
        """An `Arch` of this space's family; `overrides` (e.g. a tokenizer's
        vocab_size) win over the file, which wins over the family defaults."""
        settings = dict(FAMILY_DEFAULTS[self.model_type])
        for key in ("vocab_size", "max_positions", "type_vocab_size"):
            if getattr(self, key) is not None:
                settings[key] = getattr(self, key)
        settings.update({k: v for k, v in overrides.items() if v is not None})
        return Arch(self.layers[0], self.heads[0], self.hidden[0], self.intermediate[0],
                    model_type=self.model_type, **settings)

    def architectures(self, **overrides) -> list[Arch]:
        """Ξ: every valid combination, in (D, A, H, I) order."""
        base = self.base_arch(**overrides)
        out, seen = [], set()
        for d, a, h, i, e, g in itertools.product(
                self.layers, self.heads, self.hidden, self.intermediate,
                self.embedding or ("H",), self.groups or ("D",)):
            e, g = (h if e == "H" else e), (d if g == "D" else g)
            if h % a or e > h or d % g:
                continue
            arch = base.with_size(d, a, h, i, e, g)
            if arch.size not in seen:
                seen.add(arch.size)
                out.append(arch)
        return out

    def maximum_point(self, vocab_size: int, seq_len: int = DEFAULT_SEQ_LEN) -> Arch:
        """T: the architecture of Ξ with the largest (p̂, î), for this vocabulary."""
        return max(self.architectures(vocab_size=vocab_size),
                   key=lambda a: size_order(a, seq_len=seq_len))

    def sized(self, vocab_size: int, size: tuple[int, ...]) -> Arch:
        """`size` (D, A, H, I[, E, G]) in this space's family, for this vocabulary."""
        return self.base_arch(vocab_size=vocab_size).with_size(*size)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items() if v is not None}


def size_order(arch: Arch, batch: int = DEFAULT_BATCH, seq_len: int = DEFAULT_SEQ_LEN):
    """Sort key of Algorithm 1 step 3: p̂, then î (FLOPs), then (D, A, H, I)."""
    return (param_count(arch), forward_flops(arch, batch, seq_len), arch.size)


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a space file. Every problem is a `UserError` that names
    the file, the key and the fix."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a space file" if path.is_dir() else "no such space file"
        raise UserError(f"{path}: {what}; pass a TOML file such as search_spaces/demo.toml")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a valid TOML file ({e}); fix the syntax") from None
    return space_from_dict(data, source=str(path))


def space_from_dict(data: dict, source: str = "<space>") -> SearchSpace:
    fields = {f.name for f in dataclasses.fields(SearchSpace)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise UserError(f"{source}: unknown key {unknown[0]!r}; the keys a space file "
                        f"may have are: {', '.join(sorted(fields))}")
    missing = [a for a in AXES if a not in data]
    if missing:
        raise UserError(f"{source}: missing axis {missing[0]!r}; add it as a list of "
                        f"positive integers, e.g. {missing[0]} = [2, 4]")
    values = {a: _axis(source, a, data[a]) for a in AXES}
    for axis, shorthand in ALBERT_AXES.items():
        if axis in data:
            values[axis] = _axis(source, axis, data[axis], shorthand)
    model_type = data.get("model_type", "bert")
    if model_type not in ("bert", "roberta"):
        raise UserError(f"{source}: model_type = {model_type!r} is not supported; "
                        f"use one of bert, roberta")
    if model_type == "roberta" and ("embedding" in values or "groups" in values):
        raise UserError(f"{source}: the embedding and groups axes (ALBERT's) need "
                        f"model_type = \"bert\": a student with them is exported as an ALBERT "
                        f"model, which counts positions from 0 where RoBERTa counts from the "
                        f"padding id + 1, and which transformers does not pair with a "
                        f"byte-level BPE tokenizer; remove the axes or the roberta model_type")
    for value in values.get("embedding", ()):
        if value != "H" and value > max(values["hidden"]):
            raise UserError(f"{source}: embedding = {value} is larger than every hidden "
                            f"value {list(values['hidden'])}; E must be at most H (use "
                            f"\"H\" for no factorisation)")
    for value in values.get("groups", ()):
        if value != "D" and not any(d % value == 0 for d in values["layers"]):
            raise UserError(f"{source}: groups = {value} divides none of the layers "
                            f"values {list(values['layers'])}; G must divide D (layer i "
                            f"uses group ⌊i·G/D⌋; use \"D\" for no sharing)")
    family = {}
    for key in ("vocab_size", "max_positions", "type_vocab_size"):
        if key in data:
            value = data[key]
            low = 0 if key == "type_vocab_size" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise UserError(f"{source}: {key} must be an integer >= {low}, "
                                f"got {key} = {value!r}")
            family[key] = value
    for key in ("name", "description"):
        if key in data and not isinstance(data[key], str):
            raise UserError(f"{source}: {key} must be a string, got {data[key]!r}")
    space = SearchSpace(name=data.get("name", Path(source).stem), model_type=model_type,
                        description=data.get("description", ""), **values, **family)
    if not any(h % a == 0 for h in space.hidden for a in space.heads):
        raise UserError(f"{source}: no valid architecture: no hidden value "
                        f"{list(space.hidden)} is a multiple of any heads value "
                        f"{list(space.heads)}; add heads that divide a hidden size")
    return space


def _axis(source: str, name: str, value, shorthand: str | None = None) -> tuple:
    example = f"e.g. {name} = [2, 4]" if shorthand is None else \
        f"e.g. {name} = [{'128' if name == 'embedding' else '1'}, \"{shorthand}\"]"
    kinds = "integers" + (f" or \"{shorthand}\"" if shorthand else "")
    if not isinstance(value, list) or not value:
        raise UserError(f"{source}: {name} must be a non-empty list of {kinds}, "
                        f"{example}; got {name} = {value!r}")
    for v in value:
        if shorthand is not None and v == shorthand:
            continue
        if not isinstance(v, int) or isinstance(v, bool):
            raise UserError(f"{source}: {name} must hold {kinds} only, {example}; "
                            f"got {v!r}")
        if v < 1:
            raise UserError(f"{source}: {name} values must be >= 1; got {v}")
    dupes = [v for v in dict.fromkeys(value) if value.count(v) > 1]
    if dupes:
        raise UserError(f"{source}: {name} lists {dupes[0]} more than once; "
                        f"list each value once")
    return tuple(sorted(v for v in value if v != shorthand)) + \
        ((shorthand,) if shorthand in value else ())


def space_table(space: SearchSpace, vocab_size: int | None = None,
                batch: int = DEFAULT_BATCH, seq_len: int = DEFAULT_SEQ_LEN,
                scope: str = "encoder"):
    """Ξ as a table sorted by size (Algorithm 1's order), one row per architecture;
    `flops` counts the forward of `scope` (see `forward_flops`)."""
    import pandas as pd

    from bortsearch.model.proxies import effective_param_count

    archs = sorted(space.architectures(vocab_size=vocab_size),
                   key=lambda a: size_order(a, batch, seq_len))
    albert = ({"embedding": a.embedding_size, "groups": a.num_groups} if space.albert else {}
              for a in archs)
    return pd.DataFrame(
        [dict(layers=a.layers, heads=a.heads, hidden=a.hidden, intermediate=a.intermediate,
              **extra, params=param_count(a), effective_params=effective_param_count(a),
              flops=forward_flops(a, batch, seq_len, scope)) for a, extra in zip(archs, albert)])
