"""``blockdrop`` command line: one module per command, each registering its parser with
``set_defaults(func=...)``.

==============  ====================================================================
``train``       the curriculum (:mod:`blockdrop.cli.train`)
``finetune``    joint finetuning (:mod:`blockdrop.cli.train`)
``eval``        accuracy, blocks, FLOPs, measured speedup (:mod:`blockdrop.cli.evaluate`)
``bench``       strategies against the plain network (:mod:`blockdrop.cli.bench`)
``reproduce``   the whole recipe with fair baselines (:mod:`blockdrop.cli.reproduce`)
``demo``        the recipe on scikit-learn's digits (:mod:`blockdrop.cli.demo`)
``convert``     an official BlockDrop checkpoint to ours (:mod:`blockdrop.cli.convert`)
==============  ====================================================================

Errors a user can cause (a bad file, data that does not fit a checkpoint, a run directory in
use, too little memory) end in one line on stderr naming what is wrong and exit status 2; a
dependency's traceback is shown only with ``--debug``. Argument errors exit 2 with the usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from blockdrop.cli import bench, convert, demo, evaluate, reproduce, train
from blockdrop.cli.train import train_config
from blockdrop.errors import BlockDropError

__all__ = ["main", "build_parser", "train_config"]


def build_parser() -> argparse.ArgumentParser:
    """The ``blockdrop`` argument parser."""
    p = argparse.ArgumentParser(
        prog="blockdrop",
        description=(
            "BlockDrop (Wu et al., CVPR 2018): learn per-image residual-block policies and run them "
            "with real batched skipping."
        ),
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (train, evaluate, bench, reproduce, demo, convert):
        module.register(sub)
    for sp in sub.choices.values():
        sp.set_defaults(parser=sp)
    return p


def _is_out_of_memory(e: BaseException) -> bool:
    import torch

    text = str(e)
    return isinstance(e, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``blockdrop`` console script (and ``python -m blockdrop``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    cmd = args.command
    try:
        return int(args.func(args.parser, args) or 0)
    except KeyboardInterrupt as e:
        print(f"blockdrop {cmd}: interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        return 130
    except (
        BlockDropError,
        ValueError,
        FileNotFoundError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
    ) as e:  # ValueError: the library's bad-input convention
        if args.debug:
            raise
        print(f"blockdrop {cmd}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. a full disk or an unwritable --out
        if args.debug:
            raise
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"blockdrop {cmd}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except (RuntimeError, MemoryError) as e:
        if args.debug or not _is_out_of_memory(e):
            raise
        print(
            f"blockdrop {cmd}: error: out of memory at --batch-size "
            f"{getattr(args, 'batch_size', '?')}; try a smaller --batch-size",
            file=sys.stderr,
        )
        return 2
