"""The `bortsearch` command line: parses flags and calls the library.

Every user mistake surfaces as one `bortsearch: error: ...` line on stderr and
exit status 2; nothing here holds logic that Python users cannot reach.
"""

from __future__ import annotations

import argparse
import sys

from bortsearch.errors import UserError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def cmd_space(args) -> None:
    from bortsearch.space import load_space, space_table

    table = space_table(load_space(args.file), args.vocab_size, args.batch_size, args.seq_len)
    if args.csv:
        sys.stdout.write(table.to_csv(index=False))
    else:
        print(f"{len(table)} architectures, sorted by parameters "
              f"(flops at batch {args.batch_size}, length {args.seq_len})")
        print(table.to_string(index=False))


def build_parser() -> argparse.ArgumentParser:
    from bortsearch.proxies import DEFAULT_BATCH, DEFAULT_SEQ_LEN

    parser = argparse.ArgumentParser(
        prog="bortsearch",
        description="Optimal BERT sub-architecture extraction (the Bort FPTAS).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("space", help="list a search space with its size and speed proxies")
    p.add_argument("file", help="a search-space TOML file, e.g. search_spaces/demo.toml")
    p.add_argument("--vocab-size", type=_positive_int, default=None,
                   help="vocabulary size for the counts (default: the space file's, "
                        "else the family's)")
    p.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH,
                   help=f"batch size of the FLOPs reference input (default {DEFAULT_BATCH})")
    p.add_argument("--seq-len", type=_positive_int, default=DEFAULT_SEQ_LEN,
                   help=f"sequence length of the FLOPs reference input "
                        f"(default {DEFAULT_SEQ_LEN})")
    p.add_argument("--csv", action="store_true", help="print CSV and nothing else")
    p.set_defaults(func=cmd_space)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"bortsearch: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bortsearch: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
