"""``blockdrop convert``: an official BlockDrop checkpoint (``.t7``) to a blockdrop checkpoint
that ``blockdrop eval`` and ``blockdrop.load`` read like any other."""

from __future__ import annotations

import argparse
from typing import Any

from blockdrop.cli._args import add_runtime

__all__ = ["register"]


def register(sub: Any) -> None:
    from blockdrop.interop import OFFICIAL_NAMES

    c = sub.add_parser("convert", help="an official BlockDrop .t7 checkpoint -> .safetensors")
    c.add_argument("checkpoint", metavar="OFFICIAL.t7")
    c.add_argument("--official", required=True, choices=OFFICIAL_NAMES, help="which official model")
    c.add_argument("--out", required=True, metavar="FILE.safetensors")
    c.add_argument(
        "--trust-pickle",
        action="store_true",
        help="fully unpickle the file (runs code from it: only for a file you trust); by "
        "default only tensors, containers and numbers are read",
    )
    add_runtime(c)
    c.set_defaults(func=run)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from blockdrop.checkpoint import save_blockdrop_net
    from blockdrop.interop.official import load_official, official_meta

    net = load_official(args.checkpoint, args.official, trust_pickle=args.trust_pickle)
    path = save_blockdrop_net(
        args.out, net, {**official_meta(args.official), "stage": "official", "source": str(args.checkpoint)}
    )
    norm = official_meta(args.official)["input_normalization"]
    print(
        f"wrote {path}: official {args.official}, K={net.num_blocks}; inputs "
        + ("in [0, 1], not normalised" if norm is None else f"normalised with mean {norm['mean']}")
    )
    return 0
