"""Fine-tuning throughput: bortsearch (JAX) against Hugging Face transformers
(PyTorch), the same model, batch and length, where torch is installed.

One training step of sequence classification as run_glue does it (dropout 0.1,
AdamW with weight decay and linear schedule, gradient clipping 1.0), batch 32,
length 128 (every row full length), vocabulary 30522. The two sides run
interleaved in one process, in rounds, so machine load hits both alike.

CPU (default): one thread each side (XLA's and torch's), and the figure is CPU
time per step (process time), since wall time on a shared machine swings with
load; the load average is printed with the figures. GPU (`--gpu`): wall time per
step, each side synchronised.

    python bench/finetune_bench.py [--gpu] [--sizes 3,4,128,512 ...] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--sizes", nargs="+", default=["3,4,128,512", "4,4,256,1024", "6,8,512,2048"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5, help="steps per side per round")
    return p.parse_args()


ARGS = parse()
if not ARGS.gpu:  # before JAX and torch start their thread pools
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false"
                               " intra_op_parallelism_threads=1")
    os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bortsearch.arch import Arch  # noqa: E402
from bortsearch.downstream.finetune import finetune_step, initial_params  # noqa: E402
from bortsearch.model import Model, init_params  # noqa: E402
from bortsearch.train import OptimConfig, init_state  # noqa: E402


def timer():
    return time.perf_counter() if ARGS.gpu else time.process_time()


def jax_side(arch: Arch, batch):
    cfg = OptimConfig(steps=1000, warmup=0.1, weight_decay=0.01, adam_eps=1e-8, clip=1.0)
    enc = Model(arch, {"params": {k: v for k, v in init_params(arch, 0)["params"].items()
                                  if k != "head"}})
    state = init_state(initial_params(enc, 2, 0), 2e-5, cfg)
    state = jax.device_put(state)
    batch = jax.device_put(batch)
    key = jax.random.key(0)
    box = {"state": state, "i": 0}

    def run(n):
        for _ in range(n):
            box["state"], loss = finetune_step(box["state"], batch,
                                               jax.random.fold_in(key, box["i"]), arch=arch,
                                               num_labels=2, dropout=0.1, cfg=cfg)
            box["i"] += 1
        jax.block_until_ready(box["state"])
    return run


def torch_side(arch: Arch, batch):
    import torch
    from transformers import BertConfig, BertForSequenceClassification, get_linear_schedule_with_warmup

    torch.set_num_threads(1) if not ARGS.gpu else None
    device = "cuda" if ARGS.gpu else "cpu"
    config = BertConfig(vocab_size=arch.vocab_size, hidden_size=arch.hidden,
                        num_hidden_layers=arch.layers, num_attention_heads=arch.heads,
                        intermediate_size=arch.intermediate, max_position_embeddings=arch.max_positions,
                        num_labels=2)
    config._attn_implementation = "eager"
    model = BertForSequenceClassification(config).to(device).train()
    decay = [p for n, p in model.named_parameters() if not n.endswith("bias") and "LayerNorm" not in n]
    rest = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": rest, "weight_decay": 0.0}], lr=2e-5, eps=1e-8)
    sched = get_linear_schedule_with_warmup(opt, 100, 1000)
    t = {k: torch.tensor(np.asarray(batch[k]), dtype=torch.long, device=device)
         for k in ("input_ids", "attention_mask", "token_type_ids", "labels")}

    def run(n):
        for _ in range(n):
            out = model(**t)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        if ARGS.gpu:
            torch.cuda.synchronize()
    return run


def main():
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    load = os.getloadavg()[0]
    print(f"fine-tuning step, batch {ARGS.batch}, length {ARGS.length}, vocabulary {ARGS.vocab}; "
          f"{'GPU ' + jax.devices()[0].device_kind + ', wall time' if ARGS.gpu else 'CPU, 1 thread each side, CPU time'}"
          f"; load average {load:.1f}")
    if not have_torch:
        print("(torch/transformers not installed: bortsearch's side only)")
    print(f"{'D,A,H,I':<16} {'jax ms/step':>12} {'jax ex/s':>9} {'torch ms/step':>14} "
          f"{'torch ex/s':>11} {'jax/torch speed':>16}")
    rng = np.random.default_rng(0)
    for size in ARGS.sizes:
        d, a, h, i = map(int, size.split(","))
        arch = Arch(d, a, h, i, vocab_size=ARGS.vocab, max_positions=max(512, ARGS.length))
        batch = {"input_ids": rng.integers(5, ARGS.vocab, (ARGS.batch, ARGS.length)).astype(np.int32),
                 "attention_mask": np.ones((ARGS.batch, ARGS.length), np.int32),
                 "token_type_ids": np.zeros((ARGS.batch, ARGS.length), np.int32),
                 "labels": rng.integers(0, 2, ARGS.batch).astype(np.int32),
                 "weights": np.ones(ARGS.batch, np.float32)}
        sides = {"jax": jax_side(arch, batch)}
        if have_torch:
            sides["torch"] = torch_side(arch, batch)
        for run in sides.values():
            run(2)  # compile / warm up
        times = {k: [] for k in sides}
        for _ in range(ARGS.rounds):
            for name, run in sides.items():
                t0 = timer()
                run(ARGS.steps)
                times[name].append((timer() - t0) / ARGS.steps)
        ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        row = f"{size:<16} {ms['jax']:>12.1f} {ARGS.batch / ms['jax'] * 1e3:>9.1f}"
        if have_torch:
            row += (f" {ms['torch']:>14.1f} {ARGS.batch / ms['torch'] * 1e3:>11.1f} "
                    f"{ms['torch'] / ms['jax']:>15.2f}x")
        print(row, flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
