import subprocess
import sys
from pathlib import Path

import pandas as pd

from bortsearch import load_space, param_count
from bortsearch.cli import main

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"


def test_space_csv_is_exactly_the_table(capsys):
    assert main(["space", str(SPACES / "bort.toml"), "--csv"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "layers,heads,hidden,intermediate,params,effective_params,flops"
    assert len(lines) == 301
    from io import StringIO

    table = pd.read_csv(StringIO(out))
    assert table["params"].is_monotonic_increasing
    arch = load_space(SPACES / "bort.toml").base_arch().with_size(*table.iloc[0, :4])
    assert table["params"].iloc[0] == param_count(arch)


def test_space_vocab_and_seq_len_flags(capsys):
    main(["space", str(SPACES / "demo.toml"), "--csv", "--vocab-size", "1000", "--seq-len", "32"])
    small = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    main(["space", str(SPACES / "demo.toml"), "--csv", "--vocab-size", "2000", "--seq-len", "64"])
    big = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert (big["params"] > small["params"]).all() and (big["flops"] > small["flops"]).all()


def test_console_script_reports_bad_input_on_one_line():
    exe = Path(sys.executable).parent / "bortsearch"
    r = subprocess.run([str(exe), "space", "nope.toml"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == ("bortsearch: error: nope.toml: no such space file; "
                                "pass a TOML file such as search_spaces/demo.toml")


def test_space_scope_flag_adds_the_head(capsys):
    from bortsearch.model.proxies import forward_flops

    main(["space", str(SPACES / "demo.toml"), "--csv", "--vocab-size", "1000"])
    encoder = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    main(["space", str(SPACES / "demo.toml"), "--csv", "--vocab-size", "1000",
          "--inference-scope", "mlm"])
    mlm = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    base = load_space(SPACES / "demo.toml").base_arch(vocab_size=1000)
    for table, scope in ((encoder, "encoder"), (mlm, "mlm")):
        assert all(r.flops == forward_flops(base.with_size(r.layers, r.heads, r.hidden,
                                                           r.intermediate), 1, 128, scope)
                   for r in table.itertuples())


def test_finetune_and_glue_commands_report_bad_input_on_one_line(tmp_path, capsys):
    golden = Path(__file__).resolve().parent / "golden" / "student_bert"
    cases = [
        (["finetune", str(golden), "--task", "glue9", "--data", str(tmp_path),
          "--out", str(tmp_path / "o")], "--task glue9: not a GLUE task"),
        (["finetune", str(golden), "--task", "sst2", "--data", str(tmp_path / "nope"),
          "--out", str(tmp_path / "o")], "no such folder"),
        (["glue", str(golden), "--data", str(tmp_path), "--tasks", "sst2", "squad"],
         "--out is required"),
        (["glue", str(golden), "--data", str(tmp_path), "--out", str(tmp_path / "g"),
          "--tasks", "squad"], "squad not GLUE task"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("bortsearch: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists() and not (tmp_path / "g").exists()


def test_space_latency_column_in_each_runtime(tmp_path, capsys):
    """`space --latency RUNTIME` measures every architecture, ALBERT's axes included."""
    from io import StringIO

    f = tmp_path / "s.toml"
    f.write_text('name = "s"\nlayers = [1, 2]\nheads = [2]\nhidden = [32]\nintermediate = [64]\n'
                 'embedding = [16, "H"]\ngroups = ["D"]\nvocab_size = 300\n')
    for runtime in ("xla", "onnx-int8"):
        assert main(["space", str(f), "--csv", "--seq-len", "16", "--latency", runtime]) == 0
        table = pd.read_csv(StringIO(capsys.readouterr().out))
        assert len(table) == 4 and (table[f"latency_ms_{runtime}"] > 0).all()
