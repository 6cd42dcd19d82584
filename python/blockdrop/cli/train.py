"""``blockdrop train`` (the curriculum) and ``blockdrop finetune`` (joint finetuning)."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from blockdrop.cli._args import add_data, add_runtime, add_training, setup_threads
from blockdrop.errors import IncompatibleError
from blockdrop.models.registry import ARCH_HELP
from blockdrop.training.config import TrainConfig

__all__ = ["register", "train_config"]


def register(sub: Any) -> None:
    t = sub.add_parser("train", help="curriculum stage: learn the policy, backbone frozen")
    add_data(t)
    m = t.add_argument_group("model")
    m.add_argument("--weights", metavar="FILE", help="pretrained backbone (.th/.pt/.safetensors)")
    m.add_argument("--arch", help=f"backbone name: {ARCH_HELP}")
    add_training(t, "curriculum")
    add_runtime(t)
    t.set_defaults(func=lambda p, a: run(p, a, "curriculum"))

    f = sub.add_parser("finetune", help="joint finetuning of policy and backbone")
    add_data(f)
    m = f.add_argument_group("model")
    m.add_argument("--init", metavar="CKPT", help="checkpoint of the curriculum stage")
    m.add_argument("--weights", metavar="FILE", help="backbone weights (without --init)")
    m.add_argument("--arch", help=f"backbone name (without --init): {ARCH_HELP}")
    add_training(f, "finetune")
    add_runtime(f)
    f.set_defaults(func=lambda p, a: run(p, a, "finetune"))


def train_config(args: argparse.Namespace, stage: str) -> TrainConfig:
    """The :class:`~blockdrop.training.config.TrainConfig` of a parsed ``train``/``finetune``
    command line: the options given (an option sets the field of its name), every other field at
    the config's own (official) default -- the CLI defines none of its own (the epochs, unless
    given, follow the config's one rule, resolved by the trainer)."""
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if f.name not in ("stage", "progress") and getattr(args, f.name, None) is not None
    }
    return TrainConfig(stage=stage, progress=not args.no_progress, **given)


def _check_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """A run directory that already holds a checkpoint is continued (--resume) or replaced
    (--overwrite), never silently overwritten."""
    last = out / "last.safetensors"
    if out.exists() and not out.is_dir():
        raise IncompatibleError(f"--out: {out} exists and is not a directory")
    if last.exists() and not (resume or overwrite):
        raise IncompatibleError(
            f"--out: {out} already holds a run ({last.name}); pass --resume "
            f"to continue it or --overwrite to start afresh"
        )
    if resume and overwrite:
        raise IncompatibleError("--resume and --overwrite exclude each other")


def run(parser: argparse.ArgumentParser, args: argparse.Namespace, stage: str) -> int:
    from blockdrop.checkpoint import load_backbone, load_blockdrop_net
    from blockdrop.data import load_dataset
    from blockdrop.models.policy import make_policy_net
    from blockdrop.runtime import init_distributed
    from blockdrop.training.trainer import Trainer

    if stage == "finetune" and args.init and (args.weights or args.arch):
        parser.error("--init already holds the backbone; drop --weights/--arch")
    if not (getattr(args, "init", None) or args.weights or args.arch):
        parser.error(
            "give --weights (pretrained backbone) or --arch" + (" or --init" if stage == "finetune" else "")
        )
    setup_threads(args)
    out = Path(args.out)
    _check_out_dir(out, args.resume, args.overwrite)
    dist_info = init_distributed(args.device)
    train = load_dataset(args.data, "train", seed=args.seed, cache_dir=args.cache_dir)
    val = (
        load_dataset(args.val_data, "test", seed=args.seed, cache_dir=args.cache_dir)
        if args.val_data
        else None
    )
    if val is not None and val.classes != train.classes:
        raise IncompatibleError(
            f"--val-data: classes {val.classes[:5]}... differ from --data's {train.classes[:5]}..."
        )
    pnet = None
    if stage == "finetune" and args.init:
        init, meta = load_blockdrop_net(args.init)  # modes are set by the trainer
        spec, backbone, pnet = meta["backbone_spec"], init.backbone, init.policy_net
        if meta.get("classes") not in (None, train.classes):
            raise IncompatibleError(
                f"--init: {args.init} was trained on classes {meta['classes'][:5]}..., "
                f"--data has {train.classes[:5]}..."
            )
    else:
        backbone, spec = load_backbone(args.weights, args.arch, train.num_classes)
        if not args.weights:
            import sys

            print(f"warning: backbone {args.arch} is randomly initialised (no --weights)", file=sys.stderr)
    if spec.get("num_classes") != train.num_classes:
        raise IncompatibleError(
            f"the backbone has {spec.get('num_classes')} classes, --data {args.data} has {train.num_classes}"
        )
    if pnet is None:
        torch.manual_seed(args.seed)
        pnet = make_policy_net(backbone.num_blocks, train.image_size)
    k = backbone.num_blocks
    cfg = train_config(args, stage)
    teacher = copy.deepcopy(backbone).eval() if cfg.distill else None  # the starting backbone
    meta = {
        "backbone_spec": spec,
        "policy_spec": pnet.spec(),  # type: ignore[operator]  # policy modules define spec()
        "classes": train.classes,
        "image_size": train.image_size,
        "data": train.source,
    }
    trainer = Trainer(cfg, pnet, backbone, train, out, val, dist_info, meta, teacher=teacher)
    epochs = trainer.cfg.epochs
    if dist_info.is_main:
        print(
            f"[{stage}] {train.source}: {len(train.dataset)} images, {train.num_classes} classes; "
            f"backbone {spec}, K={k}; {epochs} epochs x {trainer.batches_per_epoch} steps "
            f"x {cfg.batch_size} x {dist_info.world_size} proc on {dist_info.device}",
            flush=True,
        )
    last = trainer.fit(resume=args.resume)  # Ctrl-C: checkpoint at the step's end, then exit
    if dist_info.is_main:
        print(f"[{stage}] done: {json.dumps(last)}\ncheckpoint: {trainer.checkpoint_path()}")
    if dist_info.distributed:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return 0
