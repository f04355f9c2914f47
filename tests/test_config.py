"""Options declared once (bortsearch/config.py): a config's fields make the command's
flags, defaults and validation, and the run's settings record."""

import argparse
import dataclasses

import pytest

from bortsearch.cli import build_parser
from bortsearch.config import add_flags, fingerprint, flag_name, flagged, from_args, option
from bortsearch.downstream.finetune import FinetuneConfig
from bortsearch.errors import UserError
from bortsearch.search.config import SearchConfig
from bortsearch.search.student import PretrainConfig
from bortsearch.train.teacher import TeacherConfig

RAY = {"executor", "ray_address", "worker_cpus", "worker_gpus", "max_retries"}
# each command's flags that are not fields of its config
NOT_CONFIG = {
    "search": {"help", "run", "quiet", "storage", *RAY},
    "pretrain": {"help", "run", "out", "arch", "corpus", "quiet", "coordinator",
                 "num_processes", "process_id"},
    "finetune": {"help", "model", "task", "data", "out", "text_fields", "label_field",
                 "regression", "int8", "quiet", *RAY},
    "glue": {"help", "models", "data", "tasks", "out", "int8", "quiet", *RAY},
    "teacher": {"help", "space", "out", "arch", "init_from", "corpus", "text_field",
                "vocab_size", "quiet", "coordinator", "num_processes", "process_id"},
}
CONFIGS = {"search": SearchConfig, "pretrain": PretrainConfig, "finetune": FinetuneConfig,
           "glue": FinetuneConfig, "teacher": TeacherConfig}


def _command(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_every_option_has_exactly_one_flag_and_the_configs_default(command):
    cls = CONFIGS[command]
    actions = [a for a in _command(command)._actions if a.dest not in NOT_CONFIG[command]]
    fields = {f.name: f for f in flagged(cls)}
    assert sorted(a.dest for a in actions) == sorted(fields)  # one flag each, no other
    for a in actions:
        f = fields[a.dest]
        assert a.option_strings == [flag_name(f)]
        if f.metadata["repeat"]:
            assert a.default is None  # the config's default when the flag is not given
        elif not f.metadata["required"]:
            assert a.default == f.default
    # every field of the config is a flag
    assert {f.name for f in dataclasses.fields(cls)} == set(fields)


def test_the_parsed_flags_build_the_config():
    p = _command("search")
    assert from_args(SearchConfig, p.parse_args(["--space", "s.toml", "--run", "r"])) \
        == SearchConfig(space="s.toml")
    cfg = from_args(SearchConfig, p.parse_args(
        ["--space", "s.toml", "--run", "r", "--lr", "1e-4", "--lr", "2e-4", "--halving", "0",
         "--corpus", "a.txt", "--data", "glue/SST-2", "--task", "sst2"]))
    assert cfg.lrs == (1e-4, 2e-4) and cfg.halving is None and cfg.corpus == ("a.txt",)
    assert cfg.task_data == "glue/SST-2" and cfg.task == "sst2"


@pytest.mark.parametrize("change, message", [
    ({"steps": 0}, "--steps must be >= 1"),
    ({"lrs": (1e-3, -1.0)}, "--lr must be positive and finite"),
    ({"halving": 1.5}, r"--halving must be in \[0, 1\)"),
    ({"inference": "guess"}, "--inference must be one of analytic, measured, fitted"),
    ({"confirm": -1}, "--confirm must be >= 0"),
    ({"space": None}, "--space: required"),
    ({"dtype": None}, "--dtype must be one of float32, bfloat16, got None"),
])
def test_the_config_refuses_what_its_flags_refuse(change, message):
    with pytest.raises(UserError, match=message):
        SearchConfig(**{"space": "s.toml", **change})


def test_loss_weights_may_be_zero_but_not_negative():
    assert PretrainConfig(ce_weight=0.0, kd_weight=1.0).ce_weight == 0.0
    assert PretrainConfig(init=None).init is None  # None: as the run's candidates started
    with pytest.raises(UserError, match="--kd-weight must be non-negative and finite"):
        PretrainConfig(kd_weight=-1.0)


def test_the_run_settings_are_the_fields_marked_so():
    # the keys a resumed run compares (run folders written before the spine have them)
    assert set(fingerprint(SearchConfig(space="s.toml"))) == {
        "steps", "lrs", "batch_size", "seq_len", "seed", "inference", "inference_scope",
        "seeds", "init", "dtype", "halving", "inherit", "inherit_layers"}


def test_a_small_config_round_trips_through_its_flags():
    @dataclasses.dataclass(frozen=True)
    class Cfg:
        steps: int = option(200, "training steps")
        names: tuple = option(("a",), "names", repeat=True)
        on: bool = option(False, "switch")

    p = argparse.ArgumentParser()
    add_flags(p, Cfg)
    assert "(default: 200)" in p.format_help()
    assert from_args(Cfg, p.parse_args([])) == Cfg()
    assert from_args(Cfg, p.parse_args(["--steps", "5", "--names", "x", "--names", "y",
                                        "--on"])) == Cfg(5, ("x", "y"), True)


def test_a_flag_shared_by_several_commands_is_declared_once():
    """The training options several commands share (AdamW's, the loss's, the batches',
    the loop's) are declared on OptimConfig, LossConfig, BatchSpec and LoopConfig, and the
    commands' configs take them from there with their own defaults: no help text or
    check is restated."""
    from bortsearch.data.batches import BatchSpec
    from bortsearch.train.fit import LoopConfig
    from bortsearch.train.step import LossConfig, OptimConfig

    owners = {c.__name__: c for c in (OptimConfig, LossConfig, BatchSpec, LoopConfig)}
    seen: dict = {}
    for cls in (SearchConfig, PretrainConfig, TeacherConfig, FinetuneConfig):
        for f in flagged(cls):
            owner = f.metadata.get("owner")
            if owner is not None:  # the owner's declaration, unchanged but for the default
                declared = {g.name: g for g in dataclasses.fields(owners[owner])}[f.name]
                for key in ("type", "choices", "minimum", "flag"):
                    assert f.metadata[key] == declared.metadata[key], (cls, f.name, key)
                assert f.metadata["help"].startswith(declared.metadata["help"])
            seen.setdefault((flag_name(f), f.metadata["help"]), set()).add(owner or cls.__name__)
    restated = {k: v for k, v in seen.items() if len(v) > 1}
    assert restated == {}
    # and the values reach the training: a config's own default, through `part`
    from bortsearch.config import part

    optim = part(OptimConfig, FinetuneConfig(), steps=10)
    assert (optim.warmup, optim.adam_eps) == (0.1, 1e-8)
    assert part(LossConfig, PretrainConfig(temperature=3.0)).temperature == 3.0
    assert part(BatchSpec, SearchConfig(space="s.toml", seq_len=32)).seq_len == 32


def test_a_run_records_its_config_and_older_records_read_as_they_ran(tmp_path):
    import json

    from bortsearch.search.config import SearchRecord

    cfg = SearchConfig(space="s.toml", corpus=("a.txt", "b.txt"), lrs=(1e-4,), epsilon=3,
                       halving=None)
    assert cfg.init == "teacher"
    SearchRecord(cfg, "teacher/", "two files").write(tmp_path)
    back = SearchRecord.read(tmp_path)
    assert back == SearchRecord(cfg, "teacher/", "two files")
    assert SearchConfig.from_run(tmp_path) == cfg
    # written before --init existed: its candidates started from random weights
    recorded = json.loads((tmp_path / "search.json").read_text())
    del recorded["init"]
    recorded["a_setting_from_a_later_version"] = 1
    (tmp_path / "search.json").write_text(json.dumps(recorded))
    assert SearchConfig.from_run(tmp_path).init == "random"
    with pytest.raises(UserError, match="no search.json"):
        SearchConfig.from_run(tmp_path / "elsewhere")
