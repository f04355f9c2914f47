"""Hugging Face encoder checkpoints (BERT, RoBERTa, ALBERT, DistilBERT, XLM-RoBERTa,
ELECTRA, ModernBERT, DeBERTa-v2/v3), read and written.

Reading accepts a directory with `config.json` and `model.safetensors` or
`pytorch_model.bin`. A `.bin` is a pickle; it is read by a restricted unpickler
that builds tensors and nothing else (as torch's `weights_only` loading does),
so a planted pickle cannot run code. Writing produces `config.json`,
`model.safetensors` (Hugging Face names) and the tokenizer files, which
`transformers.AutoModelForMaskedLM.from_pretrained` reads.
"""

from __future__ import annotations

import collections
import json
import pickle
import zipfile
from pathlib import Path
from typing import Literal, get_args

import jax
import ml_dtypes
import numpy as np

from bortsearch.errors import UserError
from bortsearch.model.arch import FAMILIES, MODEL_TYPES, Arch, Family
from bortsearch.model.encoder import Model, param_shapes

# Hugging Face `hidden_act` -> ours: exact GELU, or the tanh approximation.
SUPPORTED_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new"}

# Tensors a checkpoint may hold that the masked-LM model does not use.
UNUSED_SUFFIXES = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids",
                   "cls.seq_relationship.weight", "cls.seq_relationship.bias")
# Heads a checkpoint may carry that no class here uses (DeBERTa-v3's replaced-token
# detection head, saved beside its masked-LM head).
UNUSED_PREFIXES = ("mask_predictions.",)

Part = Literal["mlm", "encoder", "auto"]  # what `load_checkpoint` reads of a folder
TokenizerNeed = Literal["required", "if-present", "none"]


# The masked-LM head's tensors by family: transform (H→E), its LayerNorm, the output
# bias and the decoder (tied to the word table unless the config says otherwise).
_HEADS = {
    "albert": ("predictions.dense", "predictions.LayerNorm", "predictions.bias",
               "predictions.decoder"),
    "bert": ("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
             "cls.predictions.bias", "cls.predictions.decoder"),
    "roberta": ("lm_head.dense", "lm_head.layer_norm", "lm_head.bias", "lm_head.decoder"),
    "distilbert": ("vocab_transform", "vocab_layer_norm", "vocab_projector.bias",
                   "vocab_projector"),
    "electra": ("generator_predictions.dense", "generator_predictions.LayerNorm",
                "generator_lm_head.bias", "generator_lm_head"),
    "model": ("head.dense", "head.norm", "decoder.bias", "decoder"),  # ModernBERT
    # DeBERTa-v2/v3 as transformers' default (`legacy`) head; the original checkpoints'
    # `lm_predictions.lm_head` names are read as these (`_DEBERTA_HEAD`)
    "deberta": ("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
                "cls.predictions.bias", "cls.predictions.decoder"),
}
_DEBERTA_HEAD = {"lm_predictions.lm_head.dense.": "cls.predictions.transform.dense.",
                 "lm_predictions.lm_head.LayerNorm.": "cls.predictions.transform.LayerNorm.",
                 "lm_predictions.lm_head.bias": "cls.predictions.bias"}


def _head_names(arch: Arch) -> dict[str, str]:
    head = _HEADS[_base(arch)]
    return dict(zip(("transform.dense", "ln", "bias", "decoder"), head))


# ---------------------------------------------------------------- names

Names = dict[str, tuple[tuple[str, ...], "int | None", bool]]


def _family(arch: Arch) -> Family:
    """The Hugging Face family an architecture is written as: ALBERT's axes make it
    an ALBERT model."""
    return FAMILIES["albert"] if arch.albert else arch.family


def _base(arch: Arch) -> str:
    """The base model's tensor-name prefix (`bert`, `roberta` for XLM-RoBERTa too, …)."""
    return _family(arch).prefix


ALBERT_MAP = "albert.encoder.embedding_hidden_mapping_in"


# Each layout's layer tensors: the layer's (ALBERT: the layer group's) prefix, then its
# dense layers and LayerNorms by Hugging Face name with our parameter path.
_LAYOUTS = {
    "bert": ("{base}.encoder.layer.{i}",
             {"attention.self.query": ("attention", "query"),
              "attention.self.key": ("attention", "key"),
              "attention.self.value": ("attention", "value"),
              "attention.output.dense": ("attention", "out"),
              "intermediate.dense": ("ffn", "inner"), "output.dense": ("ffn", "outer")},
             {"attention.output.LayerNorm": ("attention_ln",), "output.LayerNorm": ("ffn_ln",)}),
    "distilbert": ("{base}.transformer.layer.{i}",
                   {"attention.q_lin": ("attention", "query"),
                    "attention.k_lin": ("attention", "key"),
                    "attention.v_lin": ("attention", "value"),
                    "attention.out_lin": ("attention", "out"),
                    "ffn.lin1": ("ffn", "inner"), "ffn.lin2": ("ffn", "outer")},
                   {"sa_layer_norm": ("attention_ln",), "output_layer_norm": ("ffn_ln",)}),
    "albert": ("{base}.encoder.albert_layer_groups.{i}.albert_layers.0",
               {"attention.query": ("attention", "query"), "attention.key": ("attention", "key"),
                "attention.value": ("attention", "value"),
                "attention.dense": ("attention", "out"),
                "ffn": ("ffn", "inner"), "ffn_output": ("ffn", "outer")},
               {"attention.LayerNorm": ("attention_ln",), "full_layer_layer_norm": ("ffn_ln",)}),
    "deberta": ("{base}.encoder.layer.{i}",
                {"attention.self.query_proj": ("attention", "query"),
                 "attention.self.key_proj": ("attention", "key"),
                 "attention.self.value_proj": ("attention", "value"),
                 "attention.output.dense": ("attention", "out"),
                 "intermediate.dense": ("ffn", "inner"), "output.dense": ("ffn", "outer")},
                {"attention.output.LayerNorm": ("attention_ln",),
                 "output.LayerNorm": ("ffn_ln",)}),
    # ModernBERT's fused Wqkv and Wi are split into these parts on reading (`_FUSED`)
    "modernbert": ("{base}.layers.{i}",
                   {"attn.Wqkv.q": ("attention", "query"), "attn.Wqkv.k": ("attention", "key"),
                    "attn.Wqkv.v": ("attention", "value"), "attn.Wo": ("attention", "out"),
                    "mlp.Wi.input": ("ffn", "inner"), "mlp.Wi.gate": ("ffn", "gate"),
                    "mlp.Wo": ("ffn", "outer")},
                   {"attn_norm": ("attention_ln",), "mlp_norm": ("ffn_ln",)}),
}

# Fused tensors of a layout: the tensor, the parts it is split into along its rows
# (the output axis), in order.
_FUSED = {"modernbert": (("attn.Wqkv", ("q", "k", "v")), ("mlp.Wi", ("input", "gate")))}


def encoder_names(arch: Arch) -> Names:
    """Hugging Face tensor name -> (our parameter path, layer index or None,
    transpose?) for the embeddings and layers. Dense kernels are stored (in, out)
    here and (out, in) there. ALBERT: E-wide embeddings, the E→H mapping, and G layer
    groups of one layer; ELECTRA: its embeddings_project where E ≠ H; DistilBERT: no
    token types, `transformer.layer.N`."""
    base = _base(arch)
    emb = f"{base}.embeddings"
    names: Names = {}
    if arch.family.layout == "modernbert":  # no position or type table; no biases
        names[f"{emb}.tok_embeddings.weight"] = (("embeddings", "word", "embedding"), None,
                                                 False)
        names[f"{emb}.norm.weight"] = (("embeddings", "ln", "scale"), None, False)
        names[f"{base}.final_norm.weight"] = (("final_ln", "scale"), None, False)
    else:
        names.update(_bert_embedding_names(arch, emb))
    if arch.family.positions == "relative":  # DeBERTa's table, shared by the layers
        names[f"{base}.encoder.rel_embeddings.weight"] = (("relative_embedding",), None, False)
        names[f"{base}.encoder.LayerNorm.weight"] = (("relative_ln", "scale"), None, False)
        names[f"{base}.encoder.LayerNorm.bias"] = (("relative_ln", "bias"), None, False)
    if arch.embedding is not None:  # ALBERT's (E = H: written as an identity), ELECTRA's
        mapping = ALBERT_MAP if arch.albert else f"{base}.embeddings_project"
        names[f"{mapping}.weight"] = (("embedding_map", "kernel"), None, True)
        names[f"{mapping}.bias"] = (("embedding_map", "bias"), None, False)
    prefix, dense, norms = _LAYOUTS["albert" if arch.albert else arch.family.layout]
    bias = arch.family.bias
    for i in range(arch.num_groups):
        layer = prefix.format(base=base, i=i)
        for hf, ours in dense.items():
            names[f"{layer}.{hf}.weight"] = (("layers", *ours, "kernel"), i, True)
            if bias:
                names[f"{layer}.{hf}.bias"] = (("layers", *ours, "bias"), i, False)
        for hf, ours in norms.items():
            if arch.family.norm == "pre" and i == 0 and ours == ("attention_ln",):
                continue  # the first layer's input is already normalised: no norm
            names[f"{layer}.{hf}.weight"] = (("layers", *ours, "scale"), i, False)
            if bias:
                names[f"{layer}.{hf}.bias"] = (("layers", *ours, "bias"), i, False)
    return names


def _bert_embedding_names(arch: Arch, emb: str) -> Names:
    names: Names = {}
    for table in ("word", "position", "token_type"):
        if (table != "token_type" or arch.type_vocab_size) and \
                (table != "position" or arch.has_position_table):
            names[f"{emb}.{table}_embeddings.weight"] = (("embeddings", table, "embedding"),
                                                        None, False)
    names[f"{emb}.LayerNorm.weight"] = (("embeddings", "ln", "scale"), None, False)
    names[f"{emb}.LayerNorm.bias"] = (("embeddings", "ln", "bias"), None, False)
    return names


def _split_fused(arch: Arch, tensors: dict) -> dict:
    """A layout's fused tensors (ModernBERT's Wqkv, Wi) as their parts' names."""
    fused = _FUSED.get(arch.family.layout, ())
    if not fused:
        return tensors
    out = dict(tensors)
    prefix = _LAYOUTS[arch.family.layout][0]
    for i in range(arch.num_groups):
        layer = prefix.format(base=_base(arch), i=i)
        for name, parts in fused:
            for kind in ("weight", "bias"):
                whole = out.pop(f"{layer}.{name}.{kind}", None)
                if whole is None:
                    continue
                if len(whole) % len(parts):
                    raise UserError(f"tensor {layer}.{name}.{kind} has {len(whole)} rows, not "
                                    f"a multiple of {len(parts)}; the weights do not match "
                                    f"config.json")
                for part, piece in zip(parts, np.split(np.asarray(whole), len(parts))):
                    out[f"{layer}.{name}.{part}.{kind}"] = piece
    return out


def _fuse(arch: Arch, tensors: dict) -> dict:
    """The inverse of `_split_fused`: the parts written as the layout's fused tensors."""
    fused = _FUSED.get(arch.family.layout, ())
    prefix = _LAYOUTS[arch.family.layout][0] if fused else ""
    for i in range(arch.num_groups if fused else 0):
        layer = prefix.format(base=_base(arch), i=i)
        for name, parts in fused:
            for kind in ("weight", "bias"):
                keys = [f"{layer}.{name}.{part}.{kind}" for part in parts]
                if keys[0] in tensors:
                    tensors[f"{layer}.{name}.{kind}"] = np.ascontiguousarray(
                        np.concatenate([tensors.pop(k) for k in keys]))
    return tensors


def mlm_head_names(arch: Arch) -> Names:
    head = _head_names(arch)
    names: Names = {
        f"{head['transform.dense']}.weight": (("head", "transform", "kernel"), None, True),
        f"{head['transform.dense']}.bias": (("head", "transform", "bias"), None, False),
        f"{head['ln']}.weight": (("head", "ln", "scale"), None, False),
        f"{head['ln']}.bias": (("head", "ln", "bias"), None, False),
        head["bias"]: (("head", "bias"), None, False),
    }
    if not arch.family.bias:  # the transform and its norm have none; the output has one
        del names[f"{head['transform.dense']}.bias"], names[f"{head['ln']}.bias"]
    if not arch.tie_decoder:
        names[f"{head['decoder']}.weight"] = (("head", "decoder", "kernel"), None, True)
    return names


# The pooler of the families whose classifier reads one ("pooler" classifiers)
_POOLERS = {"albert": "albert.pooler", "bert": "bert.pooler.dense",
            "distilbert": "pre_classifier", "deberta-v2": "pooler.dense"}


def pooler_names(arch: Arch) -> Names:
    """BERT's and ALBERT's pooler, DistilBERT's pre_classifier (RoBERTa's and ELECTRA's
    sequence classifiers have none)."""
    name = _POOLERS.get(_family(arch).name)
    if name is None:
        return {}
    return {f"{name}.weight": (("pooler", "kernel"), None, True),
            f"{name}.bias": (("pooler", "bias"), None, False)}


def classifier_names(arch: Arch) -> Names:
    """The `…ForSequenceClassification` head: a pooler and `classifier`, or
    `classifier.dense` and `classifier.out_proj` (the family's `classifier` form)."""
    if _family(arch).classifier == "pooler":
        return {**pooler_names(arch),
                "classifier.weight": (("classifier", "kernel"), None, True),
                "classifier.bias": (("classifier", "bias"), None, False)}
    if _family(arch).classifier == "head":  # ModernBERT: its prediction head, then a linear
        return {"head.dense.weight": (("classifier", "dense", "kernel"), None, True),
                "head.norm.weight": (("classifier", "ln", "scale"), None, False),
                "classifier.weight": (("classifier", "out_proj", "kernel"), None, True),
                "classifier.bias": (("classifier", "out_proj", "bias"), None, False)}
    return {f"classifier.{hf}.{w}": (("classifier", hf, ours), None, ours == "kernel")
            for hf in ("dense", "out_proj") for w, ours in (("weight", "kernel"), ("bias", "bias"))}


def sop_names(arch: Arch) -> Names:
    """The sentence-order head as transformers' pretraining classes hold it:
    `AlbertForPreTraining.sop_classifier`, or the same form as
    `BertForPreTraining`'s NSP head; RoBERTa has no pretraining class (empty)."""
    if arch.albert:
        head = "sop_classifier.classifier"
    elif _family(arch).name == "bert":
        head = "cls.seq_relationship"
    else:
        return {}
    return {**pooler_names(arch), f"{head}.weight": (("sop", "kernel"), None, True),
            f"{head}.bias": (("sop", "bias"), None, False)}


def hf_names(arch: Arch, num_labels: int = 0, sop: bool = False) -> Names:
    """Every tensor of the masked-LM model (or, with `num_labels`, of the
    sequence classifier; with `sop`, the pretraining model's order head too) by
    its Hugging Face name."""
    head = classifier_names(arch) if num_labels else mlm_head_names(arch)
    return {**encoder_names(arch), **head, **(sop_names(arch) if sop else {})}


def exports_sop(model: Model) -> bool:
    """Whether `model`'s folder carries its sentence-order head (`…ForPreTraining`)."""
    from bortsearch.model.encoder import has_sop_head

    return not model.num_labels and has_sop_head(model.params) and bool(sop_names(model.arch))


def _legacy_rename(name: str) -> str:
    """Old TF-converted checkpoints say LayerNorm.gamma/beta."""
    return name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta",
                                                                       "LayerNorm.bias")


# ---------------------------------------------------------------- config


# DistilBERT's config names for BERT's fields (its `attribute_map`, and its FFN's
# `activation`); it has no token types.
_DISTILBERT_KEYS = {"n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
                    "dim": "hidden_size", "hidden_dim": "intermediate_size",
                    "activation": "hidden_act"}

# Families transformers knows that bortsearch does not read (yet): refused by name.
UNSUPPORTED_FAMILIES = {"deberta": "DeBERTa (v1)"}

# DeBERTa-v2/v3: the settings every v3 checkpoint has that the model here supports alone
# (others are refused by name), and the relative positions as `Arch` fields.
_DEBERTA_FIXED = {"relative_attention": True, "position_biased_input": False,
                  "share_att_key": True, "norm_rel_ebd": "layer_norm", "conv_kernel_size": 0,
                  "pooler_hidden_act": "gelu", "hidden_act": "gelu"}
# what transformers takes for each when a config leaves it out
_DEBERTA_DEFAULTS = {"relative_attention": False, "position_biased_input": True,
                     "share_att_key": False, "norm_rel_ebd": "none", "conv_kernel_size": 0,
                     "pooler_hidden_act": "gelu", "hidden_act": "gelu"}


def _deberta_config(config: dict, source: str) -> dict:
    """A DeBERTa-v2 config with its relative positions as `Arch` fields."""
    for key, value in _DEBERTA_FIXED.items():
        if (given := config.get(key, _DEBERTA_DEFAULTS[key])) != value:
            raise UserError(f"{source}: {key} = {given!r}"
                            f"{'' if key in config else ' (transformers default)'} is not "
                            f"supported for DeBERTa-v2/v3; only {value!r} (as DeBERTa-v3's "
                            f"checkpoints)")
    kinds = config.get("pos_att_type") or []
    kinds = [k.strip() for k in kinds.lower().split("|")] if isinstance(kinds, str) else kinds
    if sorted(kinds) != ["c2p", "p2c"]:
        raise UserError(f"{source}: pos_att_type {config.get('pos_att_type')!r} is not "
                        f"supported; only both c2p and p2c (as DeBERTa-v3's checkpoints)")
    h = config.get("hidden_size")
    if config.get("embedding_size", h) != h or config.get("pooler_hidden_size", h) != h:
        raise UserError(f"{source}: embedding_size or pooler_hidden_size other than "
                        f"hidden_size is not supported for DeBERTa-v2/v3")
    top = int(config.get("max_relative_positions", -1))
    top = top if top >= 1 else int(config.get("max_position_embeddings", 512))
    return {**config, "type_vocab_size": config.get("type_vocab_size", 0),
            "layer_norm_eps": config.get("layer_norm_eps", 1e-7),
            "arch_fields": dict(relative_buckets=max(int(config.get("position_buckets", -1)), 0),
                           max_relative=top)}

# ModernBERT's config names for BERT's fields, and the settings every released
# ModernBERT has that the model here supports alone (others are refused by name).
_MODERNBERT_KEYS = {"norm_eps": "layer_norm_eps", "hidden_activation": "hidden_act"}
_MODERNBERT_FIXED = {"norm_bias": False, "attention_bias": False, "mlp_bias": False,
                     "classifier_bias": False, "decoder_bias": True,
                     "classifier_activation": "gelu",
                     "hidden_activation": "gelu", "tie_word_embeddings": True}
_MODERNBERT_THETAS = {"full_attention": ("global_rope_theta", 160000.0),
                      "sliding_attention": ("local_rope_theta", 10000.0)}


def _modernbert_config(config: dict, source: str) -> dict:
    """A ModernBERT config in BERT's names, with its rotary bases, local window and
    global-attention period as `Arch` fields (from transformers 5's `layer_types` and
    `rope_parameters`, or the older `global_attn_every_n_layers` and `*_rope_theta`)."""
    if config.get("rope_scaling"):
        raise UserError(f"{source}: rope_scaling {config['rope_scaling']!r} is not supported "
                        f"for ModernBERT; only unscaled rotary positions")
    for key, value in _MODERNBERT_FIXED.items():
        if config.get(key, value) != value:
            raise UserError(f"{source}: {key} = {config[key]!r} is not supported for "
                            f"ModernBERT; only {value!r} (as every released ModernBERT)")
    layers = int(config.get("num_hidden_layers", 22))
    types = config.get("layer_types")
    every = int(config.get("global_attn_every_n_layers", 3))
    if types is not None:
        every = next((n for n in range(1, layers + 1) if types == [
            "sliding_attention" if i % n else "full_attention" for i in range(layers)]), 0)
        if not every:
            raise UserError(f"{source}: layer_types {types} is not supported; only global "
                            f"attention every N layers from the first, local between")
    rope = config.get("rope_parameters") or {}
    thetas = {}
    for kind, (legacy, default) in _MODERNBERT_THETAS.items():
        params = rope.get(kind) or {}
        if params.get("rope_type", "default") != "default":
            raise UserError(f"{source}: rope_type {params['rope_type']!r} is not supported "
                            f"for ModernBERT; only 'default'")
        thetas[kind] = float(params.get("rope_theta", config.get(legacy, default)))
    local = every > 1 and layers > 1
    standard = {_MODERNBERT_KEYS.get(k, k): v for k, v in config.items()}
    standard.update(type_vocab_size=0, layer_norm_eps=config.get("norm_eps", 1e-5),
                    arch_fields=dict(rope_theta=thetas["full_attention"],
                                     local_rope_theta=thetas["sliding_attention"],
                                     local_window=int(config.get("local_attention", 128))
                                     if local else None, global_every=every if local else 1,
                                     pooling=config.get("classifier_pooling", "cls")))
    return standard


def _standard_config(config: dict, source: str) -> dict:
    """`config` in BERT's field names, with each family's own defaults; refuses what
    the family can carry and the model cannot run, by name."""
    model_type = config.get("model_type")
    if model_type in UNSUPPORTED_FAMILIES:
        raise UserError(f"{source}: {UNSUPPORTED_FAMILIES[model_type]} (model_type "
                        f"{model_type!r}) is not supported yet; supported: "
                        f"{', '.join(MODEL_TYPES)}")
    if model_type not in MODEL_TYPES:
        raise UserError(f"{source}: model_type {model_type!r} is not supported; "
                        f"supported: {', '.join(MODEL_TYPES)}")
    if model_type == "distilbert":
        if config.get("sinusoidal_pos_embds"):
            raise UserError(f"{source}: sinusoidal_pos_embds = true (fixed sinusoidal "
                            f"positions) is not supported; only learned position embeddings")
        config = {_DISTILBERT_KEYS.get(k, k): v for k, v in config.items()}
        config.update(type_vocab_size=0, layer_norm_eps=1e-12)  # transformers' fixed values
    if model_type == "modernbert":
        config = _modernbert_config(config, source)
    if model_type == "deberta-v2":
        config = _deberta_config(config, source)
    if model_type == "electra" and config.get("hidden_act", "gelu") != "gelu":
        raise UserError(f"{source}: hidden_act {config['hidden_act']!r} is not supported for "
                        f"ELECTRA, whose heads use exact GELU whatever it says; only 'gelu'")
    return config


def arch_from_config(config: dict, source: str) -> Arch:
    """An `Arch` from a Hugging Face `config.json`, refusing what the model cannot run."""
    config = _standard_config(config, source)
    model_type = config["model_type"]
    act = config.get("hidden_act", "gelu_new" if model_type == "albert" else "gelu")
    if act not in SUPPORTED_ACTIVATIONS:
        raise UserError(f"{source}: hidden_act {act!r} is not supported; supported: "
                        f"{', '.join(SUPPORTED_ACTIVATIONS)}")
    albert = {}
    if model_type == "electra":
        e = int(config.get("embedding_size") or config.get("hidden_size", 0))
        albert = dict(embedding=None if e == config.get("hidden_size") else e)
    if model_type == "albert":
        if config.get("inner_group_num", 1) != 1:
            raise UserError(f"{source}: inner_group_num {config['inner_group_num']!r} is not "
                            f"supported; only 1 (every released ALBERT has 1)")
        albert = dict(embedding=config.get("embedding_size", 128),
                      groups=config.get("num_hidden_groups", 1))
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise UserError(f"{source}: position_embedding_type "
                        f"{config['position_embedding_type']!r} is not supported; "
                        f"only 'absolute'")
    try:
        return Arch(
            layers=int(config["num_hidden_layers"]), heads=int(config["num_attention_heads"]),
            hidden=int(config["hidden_size"]), intermediate=int(config["intermediate_size"]),
            vocab_size=int(config["vocab_size"]),
            max_positions=int(config["max_position_embeddings"]),
            type_vocab_size=int(config.get("type_vocab_size", 2)),
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
            pad_token_id=int(config.get("pad_token_id") or 0),
            tie_decoder=bool(config.get("tie_word_embeddings", True)),
            model_type=model_type, activation=SUPPORTED_ACTIVATIONS[act], **albert,
            **config.get("arch_fields", {}))  # a family's own settings, as `Arch` fields
    except KeyError as e:
        raise UserError(f"{source}: config.json lacks {e.args[0]!r}; it must be a Hugging "
                        f"Face config of a supported family ({', '.join(MODEL_TYPES)})"
                        ) from None
    except (ValueError, TypeError) as e:
        raise UserError(f"{source}: config.json is inconsistent or has a value of the wrong "
                        f"type ({e}); restore the checkpoint's original config.json") from None


def config_from_arch(arch: Arch, tokenizer=None) -> dict:
    """A Hugging Face config for `arch` in its family's fields (an AlbertConfig where
    ALBERT's axes are in use, naming the tokenizer's class so that the teacher's
    tokenizer is the one loaded; DistilBERT's own names)."""
    family = _family(arch).name
    config = {
        "architectures": [f"{_family(arch).classes}ForMaskedLM"],
        "model_type": family,
        "num_hidden_layers": arch.layers, "num_attention_heads": arch.heads,
        "hidden_size": arch.hidden, "intermediate_size": arch.intermediate,
        "vocab_size": arch.vocab_size, "max_position_embeddings": arch.max_positions,
        "type_vocab_size": arch.type_vocab_size, "layer_norm_eps": arch.layer_norm_eps,
        "pad_token_id": arch.pad_token_id, "tie_word_embeddings": arch.tie_decoder,
        "hidden_act": arch.activation, "position_embedding_type": "absolute",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02, "torch_dtype": "float32",
    }
    if family == "albert":
        config.update(embedding_size=arch.embedding_size, num_hidden_groups=arch.num_groups,
                      inner_group_num=1, classifier_dropout_prob=0.1)
    if tokenizer is not None:
        config.update(bos_token_id=tokenizer.cls_id, eos_token_id=tokenizer.sep_id)
        if family == "albert":
            config["tokenizer_class"] = tokenizer.class_name
    if family == "electra":
        config["embedding_size"] = arch.embedding_size
    if family == "modernbert":
        return _modernbert_config_of(arch, config, tokenizer)
    if family == "deberta-v2":
        drop = ("position_embedding_type", "hidden_act")
        config = {k: v for k, v in config.items() if k not in drop}
        config.update(_DEBERTA_FIXED, pos_att_type=["p2c", "c2p"], legacy=True,
                      position_buckets=arch.relative_buckets or -1,
                      max_relative_positions=arch.max_relative, pooler_dropout=0.0,
                      pooler_hidden_size=arch.hidden)
        del config["conv_kernel_size"]
        return config
    if family == "distilbert":
        names = {v: k for k, v in _DISTILBERT_KEYS.items()}
        config = {names.get(k, k): v for k, v in config.items()
                  if k not in ("type_vocab_size", "position_embedding_type", "layer_norm_eps",
                               "hidden_dropout_prob", "attention_probs_dropout_prob")}
        config.update(sinusoidal_pos_embds=False, dropout=0.1, attention_dropout=0.1,
                      seq_classif_dropout=0.2, qa_dropout=0.1)
    return config


def _modernbert_config_of(arch: Arch, bert: dict, tokenizer) -> dict:
    """ModernBERT's config fields for `arch` (BERT's, renamed; its fixed settings; the
    rotary bases, window and period in the form every transformers reads)."""
    drop = ("type_vocab_size", "position_embedding_type", "layer_norm_eps", "hidden_act",
            "hidden_dropout_prob", "attention_probs_dropout_prob")
    config = {k: v for k, v in bert.items() if k not in drop}
    config.update(_MODERNBERT_FIXED, norm_eps=arch.layer_norm_eps,
                  classifier_pooling=arch.pooling,
                  global_rope_theta=arch.rope_theta, local_rope_theta=arch.local_rope_theta,
                  global_attn_every_n_layers=arch.global_every if arch.local_window else 1,
                  local_attention=arch.local_window or 128, attention_dropout=0.0,
                  embedding_dropout=0.0, mlp_dropout=0.0, classifier_dropout=0.0)
    if tokenizer is not None:
        config.update(cls_token_id=tokenizer.cls_id, sep_token_id=tokenizer.sep_id)
    return config


def classifier_config(arch: Arch, tokenizer, label_names: tuple[str, ...] | None,
                      task: str = "") -> dict:
    """A `…ForSequenceClassification` config: `id2label`/`label2id` for classes,
    one output and `problem_type` "regression" when `label_names` is None."""
    config = config_from_arch(arch, tokenizer)
    family = _family(arch).classes
    names = list(label_names) if label_names is not None else ["LABEL_0"]
    config.update(
        architectures=[f"{family}ForSequenceClassification"],
        id2label={str(i): n for i, n in enumerate(names)},
        label2id={n: i for i, n in enumerate(names)},
        problem_type="regression" if label_names is None else "single_label_classification")
    if family != "ModernBert":  # its own classifier_dropout (a number) stays
        config["classifier_dropout"] = None
    if task:
        config["finetuning_task"] = task
    return config


# ---------------------------------------------------------------- reading


def read_tensors(directory: Path) -> dict[str, np.ndarray]:
    """The tensors of `model.safetensors`, else of `pytorch_model.bin`."""
    st, binary = directory / "model.safetensors", directory / "pytorch_model.bin"
    if st.is_file():
        from safetensors.numpy import load_file

        try:
            return load_file(str(st))
        except Exception as e:
            raise UserError(f"{st}: the weights file is truncated or corrupt ({e}); "
                            f"download or copy it again") from None
    if binary.is_file():
        return read_torch_bin(binary)
    raise UserError(f"{directory}: no weights (model.safetensors or pytorch_model.bin); "
                    f"put the checkpoint's weights file in the folder")


_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _Storage:
    def __init__(self, dtype):
        self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, *_):
    data, dtype = storage
    if not size:
        return data[offset:offset + 1].reshape(())
    itemsize = np.dtype(dtype).itemsize
    return np.lib.stride_tricks.as_strided(
        data[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)).copy()


def _rebuild_parameter(tensor, *_):
    return tensor


class _TensorOnlyUnpickler(pickle.Unpickler):
    """Builds tensors, and refuses every other global the pickle names."""

    ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, source: Path):
        super().__init__(file)
        self.archive, self.prefix, self.source = archive, prefix, source

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        if module == "torch" and name in _DTYPES:
            return _Storage(_DTYPES[name])
        raise UserError(f"{self.source}: the pickle asks for {module}.{name}, which is not "
                        f"tensor data, so it was not loaded (it could run code); convert "
                        f"the checkpoint to model.safetensors with a tool you trust")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, _numel = pid
        if kind != "storage" or not isinstance(storage_type, _Storage):
            raise UserError(f"{self.source}: unexpected storage record {kind!r}; convert "
                            f"the checkpoint to model.safetensors")
        raw = self.archive.read(f"{self.prefix}/data/{key}")
        return np.frombuffer(raw, dtype=storage_type.dtype), storage_type.dtype


def read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    """A PyTorch zip checkpoint's tensors, without torch and without running code."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise UserError(f"{path}: not a PyTorch zip checkpoint (truncated, corrupt, or the "
                        f"legacy pre-1.6 format); convert it to model.safetensors") from None
    with archive:
        pkl = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if not pkl:
            raise UserError(f"{path}: no data.pkl inside; convert it to model.safetensors")
        prefix = pkl[0][: -len("/data.pkl")]
        try:
            with archive.open(pkl[0]) as f:
                state = _TensorOnlyUnpickler(f, archive, prefix, path).load()
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"{path}: the weights file is truncated or corrupt ({e}); "
                            f"download or copy it again") from None
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise UserError(f"{path}: not a state dict of tensors; convert it to model.safetensors")
    return state


def weights_sha256(folder: str | Path) -> str:
    """The first 16 hex digits of the SHA-256 of a folder's weights file ("" if none):
    what run settings record to tell one checkpoint from another."""
    from bortsearch.runio import file_sha256

    for name in ("model.safetensors", "pytorch_model.bin"):
        p = Path(folder) / name
        if p.is_file():
            return file_sha256(p)[:16]
    return ""


def load_checkpoint(directory: str | Path, tokenizer: TokenizerNeed = "required",
                    part: Part = "mlm") -> Model:
    """A Hugging Face checkpoint folder of a supported family as a `Model`.

    Every tensor is mapped by name; unknown or missing tensors, wrong shapes, and a
    tokenizer whose vocabulary differs from the checkpoint's are errors that name them.

    Args:
      directory: the folder (config.json, weights, tokenizer files).
      tokenizer: "required" (their absence is an error), "if-present" (a folder
        without tokenizer files loads too, as transformers loads a model without its
        tokenizer, leaving `Model.tokenizer` None) or "none" (not read).
      part: "mlm", the masked-LM model; "encoder", the embeddings and layers (and
        BERT's pooler) of any folder, with or without a head, as fine-tuning takes
        them; "auto", a sequence classifier as one (`Model.num_labels`) and anything
        else as a masked-LM model.
    """
    if tokenizer not in get_args(TokenizerNeed) or part not in get_args(Part):
        raise ValueError(f"load_checkpoint: tokenizer {tokenizer!r}, part {part!r}")
    d = Path(directory)
    if not d.is_dir():
        what = "is a file, not a checkpoint folder" if d.exists() else "no such checkpoint folder"
        raise UserError(f"{d}: {what}; give a Hugging Face folder (config.json and weights)")
    if not (d / "config.json").is_file():
        raise UserError(f"{d}: no config.json; a Hugging Face checkpoint folder needs its "
                        f"config.json beside the weights")
    try:
        config = json.loads((d / "config.json").read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{d / 'config.json'}: not valid JSON ({e})") from None
    arch = arch_from_config(config, str(d / "config.json"))
    num_labels = 0
    if part == "auto":
        is_classifier = any(a.endswith("ForSequenceClassification")
                            for a in config.get("architectures") or [])
        num_labels = len(config.get("id2label") or {0: 0, 1: 1}) if is_classifier else 0
        part = "classifier" if num_labels else "mlm"
    pretraining = any(a.endswith("ForPreTraining") for a in config.get("architectures") or [])
    params = params_from_tensors(arch, read_tensors(d), d, part, num_labels, sop=pretraining)
    if tokenizer == "if-present":
        from bortsearch.data.tokenizer import has_tokenizer_files

        tokenizer = "required" if has_tokenizer_files(d) else "none"
    tok = None
    if tokenizer == "required":
        from bortsearch.data.tokenizer import load_tokenizer

        tok = load_tokenizer(d, arch.model_type)
        short = tok.vocab_size < arch.vocab_size and arch.family.padded_vocab
        if tok.vocab_size != arch.vocab_size and not short:
            raise UserError(
                f"{d}: the tokenizer has {tok.vocab_size} tokens but the checkpoint's "
                f"vocabulary is {arch.vocab_size}; use the tokenizer files that came with "
                f"this checkpoint")
    return Model(arch, params, tok, num_labels)


def _normalise(arch: Arch, tensors: dict) -> dict:
    """Hugging Face names as the masked-LM classes use them: a bare base-model
    export (`BertModel.save_pretrained`: `embeddings.…`, `encoder.…`, `pooler.…`)
    gains the `bert.` / `roberta.` prefix."""
    base = _base(arch)
    if any(k.startswith(f"{base}.") for k in tensors):
        return tensors
    bare = ("embeddings.", "encoder.", "pooler.", "transformer.", "embeddings_project.",
            "layers.", "final_norm.")
    return {(f"{base}.{k}" if k.startswith(bare) else k): v for k, v in tensors.items()}


def _deberta_head_name(name: str) -> str:
    for old, new in _DEBERTA_HEAD.items():
        if name.startswith(old):
            return new + name[len(old):]
    return name


def has_mlm_head(arch: Arch, tensors: dict) -> bool:
    head = _head_names(arch)
    return f"{head['transform.dense']}.weight" in tensors


def params_from_tensors(arch: Arch, tensors: dict, source: Path, part: str = "mlm",
                        num_labels: int = 0, sop: bool = False):
    """Our parameter tree from Hugging Face tensors.

    Args:
      part: "mlm", the masked-LM model, every tensor accounted for; "encoder", the
        embeddings and layers, plus BERT's pooler when the checkpoint has one, whatever
        head it carries (an MLM head, a classifier, none); "classifier", the sequence
        classifier with `num_labels` outputs.
      sop: with "mlm", also the sentence-order head where the tensors hold it (a
        `…ForPreTraining` folder).
    """
    if part not in ("mlm", "encoder", "classifier") or (part == "classifier") != (num_labels > 0):
        raise ValueError(f"params_from_tensors: part {part!r} with {num_labels} labels")
    tensors = _split_fused(arch, _normalise(arch, {_legacy_rename(k): v
                                                   for k, v in tensors.items()}))
    if arch.family.layout == "deberta":  # the original checkpoints' head names; a
        tensors = {_deberta_head_name(k): v for k, v in tensors.items()}  # position table
        tensors.pop(f"{_base(arch)}.embeddings.position_embeddings.weight", None)  # unused
    head = _head_names(arch)
    # The decoder's own bias is what the forward pass adds (transformers 5 keeps it
    # as a separate tensor, equal to the head bias in released checkpoints).
    decoder_bias = tensors.pop(f"{head['decoder']}.bias", None)
    if decoder_bias is not None:
        tensors[head["bias"]] = decoder_bias
    if arch.tie_decoder:
        tensors.pop(f"{head['decoder']}.weight", None)  # a saved copy of the word table
    if arch.albert and arch.embedding is None:  # E = H: the identity `export_tensors` wrote
        for suffix in ("weight", "bias"):
            tensors.pop(f"{ALBERT_MAP}.{suffix}", None)
    sop = part == "mlm" and sop and all(n in tensors for n in sop_names(arch))
    if part == "encoder":
        names = encoder_names(arch)
        pooler = pooler_names(arch)
        if all(n in tensors for n in pooler):
            names.update(pooler)
        if _family(arch).classifier == "head":  # ModernBERT: its trained prediction head,
            trained = {n: v for n, v in classifier_names(arch).items()  # which the
                       if n.startswith("head.") and n in tensors}  # classifier reads
            if len(trained) == 2:
                names.update(trained)
        base = f"{_base(arch)}."
        extra = [n for n in tensors if n.startswith(base) and n not in names
                 and not n.endswith(UNUSED_SUFFIXES)]
    else:
        names = hf_names(arch, num_labels, sop)
        if part == "mlm" and not has_mlm_head(arch, tensors) and \
                all(n in tensors for n in encoder_names(arch)):
            family = _family(arch).classes
            raise UserError(
                f"{source}: the checkpoint has no masked-LM head (a bare {family}Model "
                f"export, such as a sentence-embedding model, or a fine-tuned classifier), "
                f"and a teacher needs one; give it one on your corpus with `bortsearch "
                f"teacher --init-from {source} --out TEACHER --corpus TEXT`, then use "
                f"--teacher TEACHER")
        extra = [n for n in tensors if n not in names and not n.endswith(UNUSED_SUFFIXES)
                 and not n.startswith(UNUSED_PREFIXES)]
    missing = [n for n in names if n not in tensors]
    if missing:
        raise UserError(f"{source}: missing tensors: {', '.join(missing[:5])}"
                        f"{' ...' if len(missing) > 5 else ''} ({len(missing)} in all); "
                        f"the weights do not match config.json")
    if extra:
        raise UserError(f"{source}: unknown tensors: {', '.join(extra[:5])}"
                        f"{' ...' if len(extra) > 5 else ''} ({len(extra)} in all); "
                        f"the weights do not match config.json")
    shapes = param_shapes(arch, num_labels or (2 if part == "encoder" else 0), sop)["params"]
    params: dict = {}
    for name, (path, layer, transpose) in names.items():
        value = np.asarray(tensors[name], np.float32)
        if transpose:
            value = value.T
        shape = shapes
        for key in path:
            shape = shape[key]
        shape = shape.shape if layer is None else shape.shape[1:]
        if shape != value.shape:
            raise UserError(f"{source}: tensor {name} has shape {tuple(tensors[name].shape)}, "
                            f"but config.json implies {shape[::-1] if transpose else shape}")
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        if layer is None:
            node[path[-1]] = value
        else:
            if path[-1] not in node:  # a layer without the tensor keeps 1 (a scale) or 0
                node[path[-1]] = np.full((arch.num_groups, *shape),
                                         1.0 if path[-1] == "scale" else 0.0, np.float32)
            node[path[-1]][layer] = value
    return {"params": params}


# ---------------------------------------------------------------- writing


def export_tensors(model: Model, num_labels: int = 0) -> dict[str, np.ndarray]:
    """The model's parameters under Hugging Face names (float32, contiguous):
    the masked-LM model, or with `num_labels` the sequence classifier."""
    p = jax.tree.map(np.asarray, model.params["params"])
    out = {}
    sop = not num_labels and exports_sop(model)
    for name, (path, layer, transpose) in hf_names(model.arch, num_labels, sop).items():
        node = p
        for key in path:
            node = node[key]
        value = node if layer is None else node[layer]
        out[name] = np.ascontiguousarray(value.T if transpose else value, dtype=np.float32)
    arch = model.arch
    if arch.albert and arch.embedding is None:  # ALBERT always maps E -> H
        out[f"{ALBERT_MAP}.weight"] = np.eye(arch.hidden, dtype=np.float32)
        out[f"{ALBERT_MAP}.bias"] = np.zeros(arch.hidden, np.float32)
    out = _fuse(arch, out)
    if num_labels:
        return out
    head = _head_names(model.arch)
    out[f"{head['decoder']}.bias"] = out[head["bias"]].copy()  # read by transformers 5
    return out


def write_hf_folder(folder: Path, arch: Arch, tokenizer=None, params=None,
                    extra_files: dict[str, str | bytes] | None = None,
                    labels: tuple[str, ...] | None = None, task: str = "") -> None:
    """Fill `folder` with `config.json`, the tokenizer files and, given params,
    `model.safetensors` (Hugging Face names); with `labels`, a sequence classifier
    of those classes (`classifier_config`)."""
    from safetensors.numpy import save

    folder = Path(folder)
    n = len(labels) if labels else 0
    config = classifier_config(arch, tokenizer, labels, task) if n else \
        config_from_arch(arch, tokenizer)
    if params is not None and not n and exports_sop(Model(arch, params)):
        config["architectures"] = [config["architectures"][0].replace("ForMaskedLM",
                                                                      "ForPreTraining")]
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if params is not None:  # written by Python, not by safetensors' save_file (mode 0600)
        (folder / "model.safetensors").write_bytes(
            save(export_tensors(Model(arch, params, num_labels=n), n), metadata={"format": "pt"}))
    if tokenizer is not None:
        tokenizer.save(folder, model_max_length=arch.max_seq_len)
    for name, data in (extra_files or {}).items():
        (folder / name).write_bytes(data.encode() if isinstance(data, str) else data)


def save_checkpoint(model: Model, directory: str | Path, tokenizer=None,
                    extra_files: dict[str, str | bytes] | None = None) -> None:
    """Write a Hugging Face checkpoint folder (config, safetensors, tokenizer files).

    Written into a sibling temporary folder and renamed into place, so a crash
    never leaves a half-written checkpoint under `directory`.
    """
    from bortsearch.runio import atomic_dir

    with atomic_dir(directory) as tmp:
        write_hf_folder(tmp, model.arch, tokenizer or model.tokenizer, model.params, extra_files)


def has_mlm_head_files(directory: str | Path) -> bool:
    """Whether a checkpoint folder's weights include a masked-LM head (read from
    the tensor names alone where the weights are safetensors)."""
    d = Path(directory)
    config = json.loads((d / "config.json").read_text())
    arch = arch_from_config(config, str(d / "config.json"))
    if (d / "model.safetensors").is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(d / "model.safetensors"), "numpy") as f:
                names = dict.fromkeys(f.keys())
        except Exception as e:
            raise UserError(f"{d / 'model.safetensors'}: the weights file is truncated or "
                            f"corrupt ({e}); download or copy it again") from None
    else:
        names = read_tensors(d)
    return has_mlm_head(arch, _normalise(arch, {_legacy_rename(k): v for k, v in names.items()}))


def load_encoder_with_new_head(directory: str | Path, seed: int = 0) -> Model:
    """A folder's encoder (an export of any supported family: a bare `…Model`, a
    sentence-transformers folder whose model files sit at its root, a classifier)
    with a new masked-LM head: the family's own head, its decoder tied to the word
    embeddings, drawn from Normal(0, 0.02) for `seed`. The tokenizer comes from the
    folder (an error if it has none)."""
    from bortsearch.model.encoder import init_params

    model = load_checkpoint(directory, part="encoder")
    fresh = init_params(model.arch, seed)["params"]
    body = {k: v for k, v in model.params["params"].items() if k in fresh}
    params = {"params": {**body, "head": fresh["head"]}}
    return Model(model.arch, params, model.tokenizer)


def load(directory: str | Path) -> Model:
    """`bortsearch.load(DIR)`: a Hugging Face checkpoint, an exported student or a
    fine-tuned classifier (`…ForSequenceClassification`), with its tokenizer where
    the folder has one (else `model.tokenizer` is None), ready for
    `model.logits(input_ids, attention_mask)`."""
    return load_checkpoint(directory, tokenizer="if-present", part="auto")
