"""`bortsearch.setup_process()` asks XLA for deterministic GPU programs
(bortsearch/determinism.py), leaves a user's own setting alone, and changes nothing on the
CPU; `import bortsearch` alone changes nothing."""

import os
import subprocess
import sys

import pytest

from bortsearch.determinism import FLAG, OPT_OUT, deterministic_gpu_programs, flag_value

PROBE = ("import os, bortsearch; bortsearch.setup_process(); "
         "print(os.environ.get('XLA_FLAGS', ''))")


def _run(program: str, **env) -> str:
    """`program`'s output in a fresh process without the suite's XLA_FLAGS or opt-out."""
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", OPT_OUT)}
    return subprocess.run([sys.executable, "-c", program], env={**base, **env},
                          capture_output=True, text=True, check=True).stdout.strip()


def _flags_after_import(**env) -> str:
    return _run(PROBE, **env)


def test_import_alone_changes_no_flag():
    assert _run("import os, bortsearch; print(os.environ.get('XLA_FLAGS', ''))") == ""


def test_setup_turns_deterministic_gpu_programs_on_and_keeps_other_flags():
    assert _flags_after_import() == f"--{FLAG}=true"
    assert _flags_after_import(XLA_FLAGS="--xla_force_host_platform_device_count=2") == \
        f"--xla_force_host_platform_device_count=2 --{FLAG}=true"


def test_a_users_own_setting_and_the_opt_out_are_respected():
    assert _flags_after_import(XLA_FLAGS=f"--{FLAG}=false") == f"--{FLAG}=false"
    assert _flags_after_import(**{OPT_OUT: "1"}) == ""


@pytest.mark.parametrize("flags, value", [
    (f"--{FLAG}=true", True), (f"--{FLAG}", True), (f"--{FLAG}=FALSE", False),
    (f"--{FLAG}=0", False), (f"--{FLAG}=true --{FLAG}=false", False),
    (f"--{FLAG}_level=2", None), ("", None)])
def test_flag_value_reads_what_xla_will_read(monkeypatch, flags, value):
    monkeypatch.setenv("XLA_FLAGS", flags)
    assert flag_value() == value


def test_the_function_is_idempotent(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.delenv(OPT_OUT, raising=False)
    assert deterministic_gpu_programs() and deterministic_gpu_programs()
    assert os.environ["XLA_FLAGS"] == f"--{FLAG}=true"


GRADIENT = """
import hashlib, jax, jax.numpy as jnp, numpy as np
from bortsearch import Arch, Encoder, init_params, setup_process
setup_process()
arch = Arch(2, 2, 32, 64, vocab_size=300, max_positions=64)
params = init_params(arch, 0)
ids = np.random.default_rng(0).integers(0, 300, (4, 32)).astype(np.int32)
ones = np.ones_like(ids)
loss = lambda p: jax.nn.log_softmax(Encoder(arch).apply(p, ids, ones, 0 * ones)).mean()
grads = jax.jit(jax.grad(loss))(params)
print(hashlib.sha256(b"".join(np.asarray(g).tobytes() for g in jax.tree.leaves(grads))).hexdigest())
"""


def test_the_flag_changes_nothing_on_the_cpu():
    """The embedding gradient (a scatter-add) and the rest, bit for bit."""
    assert _run(GRADIENT) == _run(GRADIENT, **{OPT_OUT: "1"})
