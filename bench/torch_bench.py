"""bortsearch (JAX) against Hugging Face transformers (PyTorch eager) at equal work.

Workloads (each the same model, batch and length on both sides):

  layer      one BERT layer, forward + backward (B 32, L 64, H 64, A 2, I 128)
  candidate  the search's candidate step: B 32, L 64, distillation at the 10 masked
             positions per row (the Bort loss, teacher logits given), AdamW, clip 1;
             four shapes at vocabulary 4096 and 30522
  pretrain   a pretraining step with the teacher's forward in it: the demo's
             W-optimum ⟨2,4,64,256⟩ distilled from its maximum point ⟨3,4,128,512⟩
  infer      batch-1 inference of the encoder (no head), length 128, as the search's
             latency proxy measures it
  finetune   a GLUE fine-tuning step (dropout 0.1, AdamW, linear schedule, clip 1),
             batch 32, length 128, vocabulary 30522

The two sides run interleaved in one process, one round each in turn, so machine
load hits both alike; the figure is the median over the rounds. CPU (default): the
process is pinned to one core (so neither side's thread pool runs in parallel), CPU
time per step (process time; wall time on a shared machine swings with load), wall
time beside it, and the load average. GPU (`--gpu`): wall time, each side
synchronised. Beside each row: the step's model FLOPs per second
(`train.train_flops_per_token`: 3 x the forward for a training step; the teacher's
forward counted in pretrain) as a share of JAX's measured float32 matrix-product
peak, and the bound: torch's time over the step's model FLOPs at the higher of the
two sides' peaks, so that no implementation doing those FLOPs at that peak beats
torch by more. Without torch and transformers (`pip install torch transformers`, or
`make golden`'s .golden-venv) only bortsearch's side runs.

With `--compile`, the candidate and inference rows also time the transformers model
under torch.compile (inductor; the optimiser step eager), and print jax's speed-up
over it.

With `--family modernbert` or `--family deberta-v2`, the candidate rows are that
family's models on both sides (transformers' from the config bortsearch writes).

    python bench/torch_bench.py [--gpu] [--only candidate,infer] [--rounds 10] [--compile]
        [--family bert|modernbert|deberta-v2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

WORKLOADS = ("layer", "candidate", "pretrain", "infer", "finetune")


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--only", default=",".join(WORKLOADS),
                   help=f"comma-separated workloads among {', '.join(WORKLOADS)}")
    p.add_argument("--rounds", type=int, default=10, help="measured rounds per side (median)")
    p.add_argument("--quick", action="store_true", help="fewer shapes (vocabulary 4096 only)")
    p.add_argument("--family", default="bert",
                   help="the encoder family of the candidate workload (bert, modernbert, "
                        "deberta-v2): the same step, each side's model of that family")
    p.add_argument("--compile", action="store_true",
                   help="a third side: the same transformers model under torch.compile "
                        "(inductor; the optimiser step stays eager)")
    return p.parse_args()


ARGS = parse()
if not ARGS.gpu:  # before JAX and torch start their thread pools: one core for both
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false")
    os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import bortsearch  # noqa: E402

bortsearch.setup_process()  # first: its allocator settings hold for both sides

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bortsearch.downstream.finetune import finetune_step, initial_params  # noqa: E402
from bortsearch.model.arch import Arch  # noqa: E402
from bortsearch.model.encoder import Encoder, Layer, Model, init_params  # noqa: E402
from bortsearch.train.step import (  # noqa: E402
    LossConfig,
    OptimConfig,
    distill_targets,
    forward_flops_per_token,
    init_state,
    teacher_targets,
    train_flops_per_token,
    train_step,
)

try:
    import torch
    import transformers  # noqa: F401
    HAVE_TORCH = True
    if not ARGS.gpu:
        torch.set_num_threads(1)
except ImportError:
    HAVE_TORCH = False

DEVICE = "cuda" if ARGS.gpu else "cpu"
LOSS = LossConfig()
B, L = 32, 64


def predictions(seq_len: int) -> int:
    return max(1, round(seq_len * 80 / 512))


def mlm_batch(rng, vocab: int, batch: int, length: int) -> dict[str, np.ndarray]:
    p = predictions(length)
    return {"input_ids": rng.integers(5, vocab, (batch, length)).astype(np.int32),
            "attention_mask": np.ones((batch, length), np.int32),
            "positions": np.sort(np.stack([rng.choice(length, p, replace=False)
                                           for _ in range(batch)]), 1).astype(np.int32),
            "labels": rng.integers(5, vocab, (batch, p)).astype(np.int32),
            "weights": np.ones((batch, p), np.float32)}


# ---------------------------------------------------------------- bortsearch (JAX)

def jax_runner(step):
    """`step()` advances one step and returns something to block on."""
    def run(n):
        out = None
        for _ in range(n):
            out = step()
        jax.block_until_ready(out)
    return run


def jax_layer(arch: Arch):
    x = jax.random.normal(jax.random.key(0), (B, L, arch.hidden))
    bias = jnp.zeros((B, 1, 1, L))
    layer = Layer(arch)
    params = layer.init(jax.random.key(1), x, bias)
    grad = jax.jit(jax.grad(lambda p, x: (layer.apply(p, x, bias)[0] ** 2).sum(), argnums=(0, 1)))
    return jax_runner(lambda: grad(params, x))


def jax_distill(arch: Arch, batch, teacher: Arch | None, teacher_out=None):
    """The candidate step (the teacher's targets given, computed once per batch for
    all candidates) or the pretraining step (teacher forward included)."""
    cfg = OptimConfig(steps=1000, warmup=0.05)
    box = {"state": jax.device_put(init_state(init_params(arch, 0), 1e-3, cfg))}
    batch = jax.device_put(batch)
    t_params = jax.device_put(init_params(teacher, 1)) if teacher is not None else None
    teacher_out = (jax.device_put(distill_targets(teacher_out, LOSS.temperature))
                   if teacher_out is not None else None)

    def step():
        t = teacher_out if teacher is None else teacher_targets(teacher, t_params, batch,
                                                                LOSS.temperature)
        box["state"], metrics = train_step(box["state"], batch, t, arch=arch, cfg=cfg,
                                           loss_cfg=LOSS)
        return box["state"].params
    return jax_runner(step)


def jax_infer(arch: Arch, ids):
    params = jax.device_put(init_params(arch, 0))
    fwd = jax.jit(lambda p, i, m: Encoder(arch, head=False).apply(p, i, m))
    ids, mask = jax.device_put(ids), jax.device_put(np.ones_like(ids))
    return jax_runner(lambda: fwd(params, ids, mask))


def jax_finetune(arch: Arch, batch):
    cfg = OptimConfig(steps=1000, warmup=0.1, weight_decay=0.01, adam_eps=1e-8, clip=1.0)
    enc = Model(arch, {"params": {k: v for k, v in init_params(arch, 0)["params"].items()
                                  if k != "head"}})
    box = {"state": jax.device_put(init_state(initial_params(enc, 2, 0), 2e-5, cfg)), "i": 0}
    batch = jax.device_put(batch)
    key = jax.random.key(0)

    def step():
        box["state"], loss = finetune_step(box["state"], batch, jax.random.fold_in(key, box["i"]),
                                           arch=arch, num_labels=2, dropout=0.1, cfg=cfg)
        box["i"] += 1
        return loss
    return jax_runner(step)


# ------------------------------------------------------- transformers (PyTorch eager)

def torch_runner(step):
    def run(n):
        for _ in range(n):
            step()
        if ARGS.gpu:
            torch.cuda.synchronize()
    return run


def bert_config(arch: Arch, dropout: float = 0.0, **kw):
    from transformers import BertConfig

    config = BertConfig(vocab_size=arch.vocab_size, hidden_size=arch.hidden,
                        num_hidden_layers=arch.layers, num_attention_heads=arch.heads,
                        intermediate_size=arch.intermediate,
                        max_position_embeddings=arch.max_positions,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, **kw)
    config._attn_implementation = "eager"
    return config


def adamw(model, lr: float, eps: float, steps: int, warmup: int):
    from transformers import get_linear_schedule_with_warmup

    named = list(model.named_parameters())
    decay = [p for n, p in named if not n.endswith("bias") and "LayerNorm" not in n]
    rest = [p for n, p in named if n.endswith("bias") or "LayerNorm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": rest, "weight_decay": 0.0}], lr=lr, eps=eps)
    return opt, get_linear_schedule_with_warmup(opt, warmup, steps)


def tensors(batch, long=("input_ids", "attention_mask", "positions", "labels", "token_type_ids")):
    return {k: torch.tensor(np.asarray(v), dtype=torch.long if k in long else torch.float32,
                            device=DEVICE) for k, v in batch.items()}


def torch_layer(arch: Arch):
    from transformers.models.bert.modeling_bert import BertLayer

    layer = BertLayer(bert_config(arch)).to(DEVICE)
    x = torch.randn(B, L, arch.hidden, requires_grad=True, device=DEVICE)
    mask = torch.zeros(B, 1, 1, L, device=DEVICE)

    def step():
        y = layer(x, attention_mask=mask)
        y = y[0] if isinstance(y, tuple) else y
        (y * y).sum().backward()
    return torch_runner(step)


def torch_mlm_logits(model, t):
    """Logits at the masked positions only, as bortsearch computes them (the family's
    base model, then its head on the picked states)."""
    base = getattr(model, "bert", None) or getattr(model, "deberta", None) or model.model
    hidden = base(input_ids=t["input_ids"], attention_mask=t["attention_mask"])[0]
    picked = torch.gather(hidden, 1, t["positions"][..., None].expand(-1, -1, hidden.shape[-1]))
    if hasattr(model, "cls"):  # BERT, DeBERTa (transformers' default head)
        return model.cls(picked)
    return model.decoder(model.head(picked))  # ModernBERT


def maybe_compiled(module, compiled: bool):
    """`module` itself, or its torch.compile'd forward (the parameters shared)."""
    return torch.compile(module) if compiled else module


def family_model(arch: Arch):
    """transformers' masked-LM model of `arch`'s family, from the config bortsearch writes
    for it (eager attention)."""
    from transformers import AutoConfig, AutoModelForMaskedLM, BertForMaskedLM

    from bortsearch.model.hf import config_from_arch

    if arch.model_type == "bert":
        return BertForMaskedLM(bert_config(arch))
    config = dict(config_from_arch(arch))
    config = AutoConfig.for_model(config.pop("model_type"), **config)
    config._attn_implementation = "eager"
    return AutoModelForMaskedLM.from_config(config)


def family_arch(size, vocab: int) -> Arch:
    """A candidate of `--family` (its family settings as the goldens' and the released
    models' have them: ModernBERT's window 128 and period 3; DeBERTa-v3's 256 buckets)."""
    extra = {"bert": {},
             "modernbert": dict(type_vocab_size=0, local_window=128, global_every=3,
                                layer_norm_eps=1e-5),
             "deberta-v2": dict(type_vocab_size=0, relative_buckets=256, max_relative=512,
                                layer_norm_eps=1e-7)}[ARGS.family]
    return Arch(*size, vocab_size=vocab, model_type=ARGS.family, **extra)


def torch_distill(arch: Arch, batch, teacher: Arch | None, teacher_out=None, compiled=False):
    from transformers import BertForMaskedLM

    model = family_model(arch).to(DEVICE).train()
    opt, sched = adamw(model, 1e-3, 1e-6, 1000, 50)
    forward = maybe_compiled(lambda t: torch_mlm_logits(model, t), compiled)
    t = tensors(batch)
    teacher_model = (BertForMaskedLM(bert_config(teacher)).to(DEVICE).eval()
                     if teacher is not None else None)
    tau = LOSS.temperature
    # The candidate step gets the teacher's softened log-probabilities computed once,
    # as the search computes them once per batch for every candidate (equal work).
    fixed = (torch.log_softmax(torch.tensor(np.asarray(teacher_out), device=DEVICE) / tau, -1)
             if teacher_out is not None else None)

    def step():
        if teacher_model is not None:
            with torch.no_grad():
                t_logp = torch.log_softmax(torch_mlm_logits(teacher_model, t) / tau, -1)
        else:
            t_logp = fixed
        logits = forward(t)
        w = t["weights"]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), t["labels"],
                                                reduction="none")
        ce = (nll * w).sum() / w.sum().clamp(min=1)
        s_logp = torch.log_softmax(logits / tau, -1)
        kl = ((t_logp.exp() * (t_logp - s_logp)).sum(-1) * w).sum() / w.sum().clamp(min=1)
        loss = LOSS.ce_weight * ce + LOSS.kd_weight * kl * tau**2
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return torch_runner(step)


def torch_infer(arch: Arch, ids, compiled=False):
    from transformers import BertModel

    model = maybe_compiled(BertModel(bert_config(arch), add_pooling_layer=False).to(DEVICE).eval(),
                           compiled)
    t = torch.tensor(ids, dtype=torch.long, device=DEVICE)
    mask = torch.ones_like(t)

    def step():
        with torch.no_grad():
            model(input_ids=t, attention_mask=mask)
    return torch_runner(step)


def torch_finetune(arch: Arch, batch):
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification(bert_config(arch, 0.1, num_labels=2)).to(DEVICE).train()
    opt, sched = adamw(model, 2e-5, 1e-8, 1000, 100)
    t = {k: v for k, v in tensors(batch).items() if k != "weights"}

    def step():
        model(**t).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return torch_runner(step)


# ------------------------------------------------------------------------ driver

def step_flops(arch: Arch, tokens: int, seq_len: int, predictions: int,
               train: bool = True) -> float:
    """Model FLOPs of one training step, or of one forward pass."""
    per_token = train_flops_per_token if train else forward_flops_per_token
    return per_token(arch, seq_len, predictions) * tokens


def cases(rng):
    """(workload, label, steps per round, tokens per step, model FLOPs per step,
    jax factory, torch factory)."""
    only = set(ARGS.only.split(","))
    unknown = only - set(WORKLOADS)
    if unknown:
        sys.exit(f"--only: unknown workload(s) {', '.join(sorted(unknown))}; "
                 f"choose among {', '.join(WORKLOADS)}")
    if "layer" in only:
        arch = Arch(1, 2, 64, 128, vocab_size=100)
        yield ("layer", "H64 A2 I128", 10, B * L, step_flops(arch, B * L, L, 0),
               lambda: jax_layer(arch), lambda: torch_layer(arch))
    if "candidate" in only:
        for vocab in (4096,) if ARGS.quick else (4096, 30522):
            for size in ((2, 2, 64, 128), (2, 4, 128, 512), (4, 8, 256, 1024), (4, 8, 512, 768)):
                arch = family_arch(size, vocab)
                batch = mlm_batch(rng, vocab, B, L)
                t_out = rng.standard_normal((B, predictions(L), vocab)).astype(np.float32)
                name = "" if ARGS.family == "bert" else f" {ARGS.family}"
                yield ("candidate", f"{size} V{vocab}{name}", 3, B * L,
                       step_flops(arch, B * L, L, predictions(L)),
                       lambda a=arch, b=batch, t=t_out: jax_distill(a, b, None, t),
                       lambda a=arch, b=batch, t=t_out, c=False: torch_distill(a, b, None, t, c))
    if "pretrain" in only:
        student, teacher = (Arch(2, 4, 64, 256, vocab_size=4096),
                            Arch(3, 4, 128, 512, vocab_size=4096))
        batch = mlm_batch(rng, 4096, B, L)
        yield ("pretrain", "(2, 4, 64, 256) from (3, 4, 128, 512) V4096", 3, B * L,
               step_flops(student, B * L, L, predictions(L))
               + step_flops(teacher, B * L, L, predictions(L), train=False),
               lambda: jax_distill(student, batch, teacher),
               lambda: torch_distill(student, batch, teacher))
    if "infer" in only:
        for size in ((2, 4, 64, 256), (3, 4, 128, 512), (12, 12, 768, 3072)):
            arch = Arch(*size, vocab_size=30522)
            ids = rng.integers(5, 30522, (1, 128)).astype(np.int32)
            yield ("infer", f"{size} b1 L128", 10, 128, step_flops(arch, 128, 128, 0, train=False),
                   lambda a=arch, i=ids: jax_infer(a, i),
                   lambda a=arch, i=ids, c=False: torch_infer(a, i, c))
    if "finetune" in only:
        for size in ((3, 4, 128, 512),) if ARGS.quick else ((3, 4, 128, 512), (4, 4, 256, 1024)):
            arch = Arch(*size, vocab_size=30522)
            batch = {"input_ids": rng.integers(5, 30522, (32, 128)).astype(np.int32),
                     "attention_mask": np.ones((32, 128), np.int32),
                     "token_type_ids": np.zeros((32, 128), np.int32),
                     "labels": rng.integers(0, 2, 32).astype(np.int32),
                     "weights": np.ones(32, np.float32)}
            yield ("finetune", f"{size} B32 L128 V30522", 1, 32 * 128,
                   step_flops(arch, 32 * 128, 128, 0),
                   lambda a=arch, b=batch: jax_finetune(a, b),
                   lambda a=arch, b=batch: torch_finetune(a, b))


def matmul_peaks(sizes=(512, 1024, 2048)) -> dict[str, float]:
    """Each side's float32 matrix-product FLOP/s at its best square size, timed as
    the workloads are (CPU time on one core; wall time on a GPU)."""
    def best(product) -> float:
        rates = []
        for n in sizes:
            run = product(n)
            run(2)
            t = measure({"x": run}, 3)["x"][0]
            rates.append(2 * n**3 / t)
        return max(rates)

    def jax_product(n):
        a = jax.device_put(jnp.ones((n, n), jnp.float32))
        f = jax.jit(lambda x: x @ x)
        return jax_runner(lambda: f(a))

    def torch_product(n):
        a = torch.ones((n, n), device=DEVICE)
        return torch_runner(lambda: a @ a)

    peaks = {"jax": best(jax_product)}
    if HAVE_TORCH:
        peaks["torch"] = best(torch_product)
    return peaks


def measure(sides: dict, steps: int) -> dict[str, tuple[float, float]]:
    """Median (CPU or device-synchronised wall, wall) seconds per step per side."""
    for run in sides.values():
        run(2)  # compile / warm up
    cpu = {k: [] for k in sides}
    wall = {k: [] for k in sides}
    for _ in range(ARGS.rounds):
        for name, run in sides.items():
            c0, w0 = time.process_time(), time.perf_counter()
            run(steps)
            cpu[name].append((time.process_time() - c0) / steps)
            wall[name].append((time.perf_counter() - w0) / steps)
    return {k: (statistics.median(wall[k] if ARGS.gpu else cpu[k]), statistics.median(wall[k]))
            for k in sides}


def main():
    kind = (f"GPU {jax.devices()[0].device_kind}, wall time" if ARGS.gpu
            else "CPU, 1 thread each side, CPU time (wall beside it)")
    print(f"bortsearch (JAX {jax.__version__}) against transformers "
          f"(torch {torch.__version__ if HAVE_TORCH else '-'}) — "
          f"{time.strftime('%Y-%m-%d %H:%M')}; "
          f"{kind}; median of {ARGS.rounds} interleaved rounds; "
          f"load average {os.getloadavg()[0]:.1f}")
    if not HAVE_TORCH:
        print("(torch/transformers not installed: bortsearch's side only; "
              "`pip install torch transformers` for the comparison)")
    peaks = matmul_peaks()
    peak = max(peaks.values())
    print("float32 matrix-product peak, " + ", ".join(
        f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items()) + " (best of 512², 1024², 2048²)")
    print("GFLOP/s and % peak: the model FLOPs of the step (3 x forward for training; the "
          "teacher's forward counted in pretrain) over the jax time; bound: torch's time over "
          "those FLOPs at the higher peak, the most any implementation doing the model FLOPs "
          "could be faster than torch")
    print(f"{'workload':<10} {'shape':<44} {'jax ms':>9} {'(wall)':>8} {'torch ms':>9} "
          f"{'(wall)':>8} {'jax tok/s':>10} {'GFLOP/s':>8} {'% peak':>7} {'speed-up':>9} "
          f"{'bound':>7}")
    rng = np.random.default_rng(0)
    for workload, label, steps, tokens, flops, make_jax, make_torch in cases(rng):
        sides = {"jax": make_jax()}
        if HAVE_TORCH:
            sides["torch"] = make_torch()
            if ARGS.compile and workload in ("candidate", "infer"):
                sides["compiled"] = make_torch(c=True)
        t = measure(sides, steps)
        row = (f"{workload:<10} {label:<44} {1e3 * t['jax'][0]:>9.2f} {1e3 * t['jax'][1]:>8.2f}")
        if HAVE_TORCH:
            row += f" {1e3 * t['torch'][0]:>9.2f} {1e3 * t['torch'][1]:>8.2f}"
        else:
            row += f" {'-':>9} {'-':>8}"
        row += (f" {tokens / t['jax'][0]:>10.0f} {flops / t['jax'][0] / 1e9:>8.1f}"
                f" {100 * flops / t['jax'][0] / peaks['jax']:>6.0f}%")
        if HAVE_TORCH:
            row += f" {t['torch'][0] / t['jax'][0]:>8.2f}x {t['torch'][0] * peak / flops:>6.2f}x"
        if "compiled" in t:
            row += (f"  torch.compile {1e3 * t['compiled'][0]:.2f} ms: "
                    f"{t['compiled'][0] / t['jax'][0]:.2f}x")
        print(row, flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
