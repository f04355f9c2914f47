"""The `bortsearch` command line: parses flags and calls the library.

Every user mistake surfaces as one `bortsearch: error: ...` line on stderr and
exit status 2; nothing here holds logic that Python users cannot reach.
"""

from __future__ import annotations

import argparse
import sys

from bortsearch.config import (
    add_flags,
    from_args,
    positive_float,
    positive_int,
)
from bortsearch.errors import UserError
from bortsearch.process import setup_process


def cmd_space(args) -> None:
    from bortsearch.search.space import load_space, space_table

    space = load_space(args.file)
    table = space_table(space, args.vocab_size, args.batch_size, args.seq_len,
                        args.inference_scope)
    if args.latency:
        table[f"latency_ms_{args.latency}"] = _latencies(space, table, args)
    if args.csv:
        sys.stdout.write(table.to_csv(index=False))
    else:
        print(f"{len(table)} architectures, sorted by parameters "
              f"(flops of the {args.inference_scope} at batch {args.batch_size}, "
              f"length {args.seq_len})")
        print(table.to_string(index=False))


def _latencies(space, table, args) -> list[float]:
    """`space --latency RUNTIME`: each architecture's measured median latency (ms)."""
    from bortsearch.deploy.latency import measure_latency
    from bortsearch.model.arch import row_size
    from bortsearch.runio import progress_bar

    if args.latency != "xla":
        from bortsearch.deploy.onnx_export import require_onnx

        require_onnx()
    archs = {a.size: a for a in space.architectures(vocab_size=args.vocab_size)}
    out = []
    for row in progress_bar(iterable=list(table.itertuples()), desc=f"latency ({args.latency})",
                            unit="arch", disable=args.csv):
        m = measure_latency(archs[row_size(row)], args.batch_size, args.seq_len,
                            scope=args.inference_scope, runtime=args.latency)
        out.append(1e3 * m["median_s"])
    return out




def _add_corpus_flags(p) -> None:
    """The corpus and tokenizer flags of the teacher command."""
    p.add_argument("--corpus", action="append", metavar="PATH",
                   help="a text file, folder, glob or .jsonl file; repeat for more (default: "
                        "the embedded Python-documentation corpus)")
    p.add_argument("--text-field", default="text", help="the text field of .jsonl corpora")
    p.add_argument("--vocab-size", type=positive_int, default=None,
                   help="vocabulary of the WordPiece tokenizer trained on the corpus when "
                        "there is no teacher (default 4096)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_distributed_flags(p) -> None:
    g = p.add_argument_group("multi-process (data parallel over every device of every "
                             "process; JAX's own names)")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address and a free "
                   "port, the same on every process; 'auto' under SLURM or Open MPI")
    g.add_argument("--num-processes", type=positive_int, help="processes in the job")
    g.add_argument("--process-id", type=int, help="this process's rank, 0..N-1 (0 writes the "
                   "files)")


def _join_job(args) -> None:
    from bortsearch.train.distributed import initialize

    initialize(args.coordinator, args.num_processes, args.process_id)


def _corpus_and_tokenizer(args):
    from bortsearch.data.corpus import resolve_corpus
    from bortsearch.data.tokenizer import DEFAULT_VOCAB_SIZE, train_tokenizer

    corpus = resolve_corpus(args.corpus, args.text_field)
    return corpus, train_tokenizer(corpus, args.vocab_size or DEFAULT_VOCAB_SIZE)


def cmd_teacher(args) -> None:
    from bortsearch.model.arch import parse_size
    from bortsearch.search.space import load_space
    from bortsearch.train.teacher import TeacherConfig, train_teacher

    _join_job(args)
    new_head = False
    if args.init_from:  # continued pretraining: the folder's shape and tokenizer
        from bortsearch.data.corpus import resolve_corpus
        from bortsearch.model.hf import (
            has_mlm_head_files,
            load_checkpoint,
            load_encoder_with_new_head,
        )

        if args.space or args.arch or args.vocab_size:
            raise UserError("--init-from takes the architecture and tokenizer of its folder; "
                            "drop --space, --arch and --vocab-size")
        load_checkpoint(args.init_from, tokenizer="none", part="encoder")  # checks it
        new_head = not has_mlm_head_files(args.init_from)
        start = (load_encoder_with_new_head(args.init_from, args.seed) if new_head
                 else load_checkpoint(args.init_from))
        corpus, tokenizer, arch = resolve_corpus(args.corpus, args.text_field), \
            start.tokenizer, start.arch
    else:
        if not args.space:
            raise UserError("give --space (its maximum point is trained), or --init-from a "
                            "masked-LM folder to continue its training")
        space = load_space(args.space)
        size = parse_size(args.arch) if args.arch else None
        corpus, tokenizer = _corpus_and_tokenizer(args)
        arch = (space.sized(tokenizer.vocab_size, size) if size
                else space.maximum_point(tokenizer.vocab_size, args.seq_len))
    cfg = from_args(TeacherConfig, args).resolved(new_head)
    how = ""
    if args.init_from:
        how = (f", a new masked-LM head on the encoder of {args.init_from} ({cfg.head_steps} "
               f"steps of the head alone, then the whole model with the encoder at lr "
               f"{cfg.body_lr:g})" if new_head else f", continuing {args.init_from}")
    print(f"teacher {arch.label()} on {corpus.name}, vocabulary {tokenizer.vocab_size}{how}")
    summary = train_teacher(args.out, arch, corpus, tokenizer, cfg, progress=not args.quiet,
                            init_from=args.init_from,
                            init_model=start if args.init_from else None)
    q = summary["heldout"]
    if "kept" in summary:
        print(f"kept the {summary['kept']} stage's weights (the lower held-out "
              f"cross-entropy at [MASK] positions)")
    print(f"held-out masked-LM accuracy at [MASK] positions {q['mask_accuracy']:.3f} "
          f"(always the most frequent token: {q['mask_frequency_baseline']:.3f}), "
          f"perplexity {q['mask_perplexity']:.1f}, {q['mask_unigram_gap']:.2f} nats better "
          f"than token frequencies; at every selected position {q['accuracy']:.3f} "
          f"(baseline {q['frequency_baseline']:.3f}); checkpoint: {args.out}")


def cmd_search(args) -> None:
    from bortsearch.search.run import SearchConfig, run_search
    from bortsearch.search.show import show

    cfg = from_args(SearchConfig, args)
    from bortsearch.search.executors import make_executor

    executor = make_executor(args.executor, args.ray_address, args.worker_cpus,
                             args.worker_gpus, args.max_retries, args.storage)
    result = run_search(args.run, cfg, progress=not args.quiet, executor=executor)
    table, plot = show(args.run)
    print(table)
    if result.best is None:
        print("no architecture is smaller and faster than the maximum point within the "
              "constraints; see the notes above")
    else:
        b = result.best
        error, w = ((b.confirmed_error, b.confirmed_w) if result.confirmed else (b.error, b.w))
        from bortsearch.model.proxies import param_count

        size = (f"params {param_count(b.arch):,}"
                + (f" ({b.proxies.params:,} non-embedding)" if cfg.size_proxy == "non-embedding"
                   else ""))
        print(f"chosen: {b.arch.label()}  {size}  {cfg.error} {error:.4f}  "
              f"W {w:.4g}" + ("  (by the confirmed errors)" if result.confirmed else ""))
    print(f"results: {args.run}/results.csv  plot: {plot}")


def cmd_show(args) -> None:
    from bortsearch.search.show import show

    table, plot = show(args.run)
    print(table)
    print(f"plot: {plot}")


def cmd_audit(args) -> None:
    from bortsearch.search.show import audit

    text, plot = audit(args.run)
    print(text)
    print(f"plot: {plot}")


def cmd_export(args) -> None:
    from bortsearch.model.arch import parse_size
    from bortsearch.search.student import export

    size = parse_size(args.arch) if args.arch else None
    out = export(args.run, args.out, size, onnx=args.onnx, int8=args.int8)
    weights = (out / "model.safetensors").is_file()
    graphs = [f for f in ("model.onnx", "model_quantized.onnx") if (out / f).is_file()]
    print(f"exported to {out} ({'with' if weights else 'no'} weights; config, tokenizer, "
          f"README.md model card{''.join(', ' + g for g in graphs)})")


def cmd_onnx(args) -> None:
    from bortsearch.deploy.onnx_export import export_onnx

    out = export_onnx(args.model, args.out, args.int8)
    print(f"wrote {out / 'model.onnx'}" + (f" and {out / 'model_quantized.onnx'} (int8)"
                                           if args.int8 else "")
          + " beside the folder's config and tokenizer files")


def cmd_pretrain(args) -> None:
    from bortsearch.model.arch import parse_size
    from bortsearch.search.student import PretrainConfig, pretrain_many

    _join_job(args)
    sizes = [parse_size(a) for a in args.arch] if args.arch else [None]
    if len(set(sizes)) < len(sizes):
        raise UserError("the same --arch is given twice; give each student once")
    cfg = from_args(PretrainConfig, args)
    from pathlib import Path

    outs = {size: Path(args.out) if len(sizes) == 1 else Path(args.out) / "-".join(map(str, size))
            for size in sizes}
    summaries = pretrain_many(args.run, outs, cfg, corpus=args.corpus, progress=not args.quiet)
    for (size, out), s in zip(outs.items(), summaries):
        if "task" in s:  # a task run's student: a classifier
            print(f"{out.name if len(sizes) > 1 else 'held-out'}: accuracy on the held-out "
                  f"training rows of {s['task']} {s['heldout_accuracy']:.4f} (teacher "
                  f"{s['teacher_heldout_accuracy']:.4f}), KD cross-entropy "
                  f"{s['heldout_kd_ce']:.4f}")
            continue
        print(f"{out.name if len(sizes) > 1 else 'held-out'}: masked-LM accuracy "
              f"{s['heldout_accuracy']:.4f} (teacher {s['teacher_heldout_accuracy']:.4f}), at "
              f"[MASK] positions {s.get('heldout_mask_accuracy', float('nan')):.4f} (teacher "
              f"{s.get('teacher_heldout_mask_accuracy', float('nan')):.4f}), KD cross-entropy "
              f"{s['heldout_kd_ce']:.4f}")
        if "heldout_sop_accuracy" in s:
            print(f"held-out sentence-order accuracy {s['heldout_sop_accuracy']:.4f}")
    s = summaries[0]
    if "model_flops_per_s" not in s:  # a task run's summary: no FLOP figures
        print(f"{s['tokens_per_s']:.0f} tokens/s\nexported with weights to {args.out}")
        return
    print(f"{s['tokens_per_s']:.0f} tokens/s; GFLOP/s: student{'s' if len(sizes) > 1 else ''} "
          f"{sum(x['model_flops_per_s'] for x in summaries) / 1e9:.1f}, teacher's forward "
          f"{s['teacher_flops_per_s'] / 1e9:.1f} ({100 * s['teacher_flops_share']:.0f}% of the "
          f"FLOPs, once per batch for {len(sizes)} student{'s' if len(sizes) > 1 else ''}), "
          f"total {s['total_flops_per_s'] / 1e9:.1f}")
    print(f"exported with weights to {args.out}")








def _finetune_config(args):
    from bortsearch.downstream.finetune import FinetuneConfig

    return from_args(FinetuneConfig, args)


def cmd_finetune(args) -> None:
    from bortsearch.downstream.finetune import finetune

    m = finetune(args.model, args.task, args.data, args.out, _finetune_config(args),
                 text_fields=args.text_fields, label_field=args.label_field,
                 regression=args.regression, progress=not args.quiet, int8=args.int8,
                 executor=_trials_executor(args))
    dev = ", ".join(f"{k} {v:.4f}" for k, v in m["dev"].items())
    base = ", ".join(f"{k} {v:.4f}" for k, v in m["majority"].items())
    c = m["chosen"]
    print(f"{m['task']} dev: {dev} (lr {c['lr']:g}, seed {c['seed']}, epoch {c['epoch']:g}; "
          f"majority class: {base})")
    if len(m["grid"]) > 1:
        for lr, med in m["median_over_seeds"].items():
            print(f"  lr {lr}: median score over seeds {med['score']:.4f}")
    if "int8" in m:
        q = m["int8"]
        print("int8 (ONNX Runtime): " + ", ".join(f"{k} {v:.4f}" for k, v in q["dev"].items())
              + f"; {q['latency_ms']:.2f} ms against {q['fp32_latency_ms']:.2f} ms float32 at "
              f"batch 1, length {q['latency_length']}")
    print(f"fine-tuned model: {args.out} (metrics.json; loads with "
          f"AutoModelForSequenceClassification)")


def cmd_glue(args) -> None:
    from bortsearch.downstream.glue import format_table, glue

    table = glue(args.models, args.data, args.out, args.tasks, _finetune_config(args),
                 progress=not args.quiet, int8=args.int8, executor=_trials_executor(args))
    tasks = [c for c in table.columns if c not in (
        "model", "path", "layers", "heads", "hidden", "intermediate", "params",
        "effective_params", "latency_ms", "average", "average_int8", "latency_int8_ms",
        "latency_onnx_ms") and not c.endswith("_int8")]
    print(format_table(table, tasks))
    out = args.out or f"{args.models[0]}/glue"
    print(f"table: {out}/glue.csv, {out}/glue.md  plot: {out}/glue.png  "
          f"({table.attrs['wall_seconds']:.0f} s)")


def _add_finetune_flags(p) -> None:
    from bortsearch.downstream.finetune import FinetuneConfig

    add_flags(p, FinetuneConfig)  # every fine-tuning option, declared once in its config
    p.add_argument("--int8", action="store_true",
                   help="also evaluate the classifier quantised to int8 in ONNX Runtime "
                        "(writes model.onnx and model_quantized.onnx; bortsearch[onnx])")
    _add_executor_flags(p, "the trials", "(model, task, learning rate, seed)",
                        "the fine-tuning stops with an error")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_executor_flags(p, things: str, one: str, after: str) -> None:
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help=f"where {things} train: this process (default), or a Ray cluster, "
                        f"one task per {one} (the results are the same)")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="with --executor ray: a running cluster (e.g. auto, or "
                        "ray://host:10001); default: start a local one")
    p.add_argument("--worker-cpus", type=positive_float, default=None, metavar="N",
                   help="CPUs each Ray task declares (default 1)")
    p.add_argument("--worker-gpus", type=float, default=None, metavar="N",
                   help="GPUs each Ray task declares (default 1 where the cluster has GPUs, "
                        "else 0)")
    p.add_argument("--max-retries", type=int, default=2, metavar="N",
                   help=f"times a Ray task whose worker died is run again before {after} "
                        f"(default 2)")


def _trials_executor(args):
    """finetune's and glue's `--executor`: None (here) or Ray tasks."""
    if args.executor == "local":
        return None
    from bortsearch.downstream.executors import RayTrials

    return RayTrials(args.ray_address, args.worker_cpus, args.worker_gpus, args.max_retries)


def build_parser() -> argparse.ArgumentParser:
    from bortsearch.deploy.latency import RUNTIMES
    from bortsearch.model.proxies import DEFAULT_BATCH, DEFAULT_SEQ_LEN

    parser = _Parser(
        prog="bortsearch",
        description="Optimal BERT sub-architecture extraction (the Bort FPTAS).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    p = sub.add_parser("space", help="list a search space with its size and speed proxies")
    p.add_argument("file", help="a search-space TOML file, e.g. search_spaces/demo.toml")
    p.add_argument("--vocab-size", type=positive_int, default=None,
                   help="vocabulary size for the counts (default: the space file's, "
                        "else the family's)")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH,
                   help=f"batch size of the FLOPs reference input (default {DEFAULT_BATCH})")
    p.add_argument("--seq-len", type=positive_int, default=DEFAULT_SEQ_LEN,
                   help=f"sequence length of the FLOPs reference input "
                        f"(default {DEFAULT_SEQ_LEN})")
    p.add_argument("--inference-scope", choices=["encoder", "mlm"], default="encoder",
                   help="FLOPs of the encoder alone (default) or with the masked-LM head")
    p.add_argument("--latency", choices=RUNTIMES, default=None,
                   help="also measure each architecture's latency (median ms, random "
                        "weights, this machine) in xla, onnx or onnx-int8")
    p.add_argument("--csv", action="store_true", help="print CSV and nothing else")
    p.set_defaults(func=cmd_space)

    from bortsearch.train.teacher import TeacherConfig

    p = sub.add_parser("teacher", help="train the maximum point of a space as a teacher")
    p.add_argument("--space", help="a search-space TOML file: its maximum point is trained")
    p.add_argument("--out", required=True, help="the checkpoint folder to write (must not "
                   "exist, or hold an unfinished run of the same settings)")
    p.add_argument("--arch", help="train D,A,H,I instead of the space's maximum point")
    p.add_argument("--init-from", metavar="DIR", help="continue training this checkpoint "
                   "folder (its shape and tokenizer; a fresh warm-up and decay) instead of "
                   "a space's maximum point from random weights: a masked-LM folder, or an "
                   "encoder without a masked-LM head (a bare BertModel/RobertaModel/"
                   "AlbertModel export, a sentence-transformers folder, a classifier), "
                   "which gets a new head tied to its word embeddings")
    add_flags(p, TeacherConfig)  # every training option, declared once in its config
    _add_corpus_flags(p)
    _add_distributed_flags(p)
    p.set_defaults(func=cmd_teacher)

    from bortsearch.search.config import SearchConfig

    p = sub.add_parser("search", help="run Algorithm 1 (the FPTAS) over a space")
    p.add_argument("--run", required=True, help="the run folder (created; re-run to resume)")
    add_flags(p, SearchConfig)  # every option of the search, declared once in its config
    _add_executor_flags(p, "candidates", "candidate", "the candidate is recorded failed")
    p.add_argument("--storage", default=None, metavar="DIR",
                   help="with --executor ray: a folder every worker mounts (shared disk, "
                        "NFS) for the candidates' checkpoints, so that a retried task "
                        "continues where its worker died (default: it starts again)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("show", help="print a run's ranked results and write pareto.png")
    p.add_argument("run", help="a search run folder")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("audit", help="how far to trust a run's answer: noise, what decided "
                       "it, short vs confirmed errors; writes audit.png")
    p.add_argument("run", help="a search run folder")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("export", help="write the chosen student as a Hugging Face folder")
    p.add_argument("run", help="a finished search run folder")
    p.add_argument("--out", required=True, help="the folder to write (must not hold files)")
    p.add_argument("--arch", help="export D,A,H,I instead of the run's W-optimum")
    p.add_argument("--onnx", action="store_true",
                   help="also write model.onnx (needs weights: a pretrained student)")
    p.add_argument("--int8", action="store_true",
                   help="with --onnx, also model_quantized.onnx (ONNX Runtime's dynamic int8)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("onnx", help="write a Hugging Face folder's model as ONNX "
                                    "(float32, and int8 with --int8)")
    p.add_argument("model", help="a Hugging Face folder: an export, a teacher, a fine-tuned "
                                 "classifier")
    p.add_argument("--out", required=True, help="the folder to write (must not hold files)")
    p.add_argument("--int8", action="store_true",
                   help="also model_quantized.onnx: ONNX Runtime's dynamic quantisation")
    p.set_defaults(func=cmd_onnx)

    from bortsearch.search.student import PretrainConfig

    p = sub.add_parser("pretrain", help="distil the chosen student from the run's teacher")
    p.add_argument("run", help="a finished search run folder")
    p.add_argument("--out", required=True, help="the export folder to write at the end (with "
                   "several --arch: a folder holding one export per student, OUT/D-A-H-I)")
    p.add_argument("--arch", action="append", metavar="D,A,H,I",
                   help="pretrain D,A,H,I instead of the run's W-optimum; repeat it to "
                        "pretrain several students under one budget in one group, paying "
                        "the teacher's forward pass once per batch for all of them (each "
                        "ends as it would alone)")
    add_flags(p, PretrainConfig)  # every training option, declared once in its config
    p.add_argument("--corpus", action="append", metavar="PATH",
                   help="corpus to pretrain on (default: the search's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_distributed_flags(p)
    p.set_defaults(func=cmd_pretrain)

    from bortsearch.data.tasks import GLUE

    p = sub.add_parser("finetune", help="fine-tune a Hugging Face encoder folder on a GLUE or "
                       "custom task; writes a Hugging Face classifier and metrics.json")
    p.add_argument("model", help="a Hugging Face folder of a family bortsearch reads (BERT, "
                   "RoBERTa, ALBERT, DistilBERT, ELECTRA, DeBERTa-v2, ModernBERT; masked-LM "
                   "head or none)")
    p.add_argument("--task", required=True, help=f"a GLUE task ({', '.join(GLUE)}), or a "
                   "name for your own task (with --text-fields and --label-field)")
    p.add_argument("--data", required=True, help="the task's folder (train.tsv, dev.tsv) or "
                   "the GLUE folder holding it; custom tasks: train and dev .csv/.tsv/.jsonl")
    p.add_argument("--out", required=True, help="the folder to write (re-run to resume)")
    p.add_argument("--text-fields", metavar="A[,B]", help="custom task: the text field(s)")
    p.add_argument("--label-field", help="custom task: the label field")
    p.add_argument("--regression", action="store_true",
                   help="custom task: the label is a number (mean squared error; Pearson "
                        "and Spearman)")
    _add_finetune_flags(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("glue", help="fine-tune models on GLUE tasks and tabulate score "
                       "against size and CPU latency (student vs teacher)")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="Hugging Face folders, or one search run folder (its teacher and "
                        "pretrained students)")
    p.add_argument("--data", required=True, help="the GLUE folder (CoLA/, SST-2/, ...)")
    p.add_argument("--tasks", nargs="+", metavar="TASK",
                   help="GLUE tasks (default: every one with train and dev under --data)")
    p.add_argument("--out", help="where runs and the table go (default RUN/glue for a run)")
    _add_finetune_flags(p)
    p.set_defaults(func=cmd_glue)
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one `bortsearch: error:` line, as every other
    error (argparse's default prints the usage first)."""

    def error(self, message):
        self.exit(2, f"bortsearch: error: {message} (see `{self.prog} --help`)\n")


def main(argv: list[str] | None = None) -> int:
    setup_process()  # before JAX starts a backend (bortsearch/process.py)
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"bortsearch: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `bortsearch space S | head`: the reader left; not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:  # the environment: full disk, read-only location, ...
        from bortsearch.errors import describe_os_error

        print(f"bortsearch: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bortsearch: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:
        from bortsearch.train.distributed import in_job, leave_failed_job

        if in_job():  # a peer died: say so and leave now, not after JAX's shutdown barrier
            leave_failed_job(e)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
