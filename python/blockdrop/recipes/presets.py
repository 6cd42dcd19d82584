"""The settings of ``blockdrop reproduce``: one :class:`~blockdrop.recipes.config.Preset` per
compute budget (each stage's settings are the config its trainer takes; see
:mod:`blockdrop.recipes.config`).

``official`` is the authors' schedule (Tushar-N/blockdrop: curriculum 5000 epochs at batch 2048,
one block freed per epoch, gamma 1; joint finetuning 2000 epochs at batch 256, gamma 5, lr x0.1 at
epoch 1600; no backbone adaptation, no distillation) -- about 10^4 times what fits in an hour of
a 2-core CPU. ``quick``, ``cpu`` and ``gpu`` are this library's recipe at smaller budgets; every
deviation from ``official`` and why is in docs/TRAINING.md.

The recipe, stage by stage (steps are optimisation steps of the stage's ``batch_size`` images):

1. **adapt** -- the pretrained backbone learns to tolerate dropped blocks: ``adapt.steps`` of
   stochastic depth (each block of each image kept with probability ``adapt.keep``) through the
   gather path, SGD with a cosine decay, the loss blended with the pretrained network's soft
   targets (``adapt.distill``; with ``adapt.inplace`` the network's own full path is the teacher
   and is trained by cross-entropy in the same step). With ``adapt.soup`` > 0 the backbone the
   next stages start from is the adapted one averaged, weight by weight, with the full network
   trained alike (share ``adapt.soup`` of it; :mod:`blockdrop.training.averaging`);
2. **curriculum** -- the policy network alone (backbone frozen), the last blocks freed first,
   ``curriculum.cl_step`` more every ``curriculum.steps_per_epoch`` steps (``None``: every block
   from the first step); with ``curriculum.prior`` the policy network starts as the static
   policy that drops the blocks whose single drop costs least first, and REINFORCE learns
   per-image departures from it;
3. **finetune** -- policy and backbone jointly (Adam, lr x0.1 at 80%), the backbone's loss on
   the sampled sub-networks (official) or, with ``finetune.backbone_on="greedy"``, on the
   thresholded ones that evaluation executes; that loss distilled from the backbone the stage
   starts from (``finetune.distill``);
4. **selection** -- every model at every threshold on validation, the operating point by
   ``selection.rule``;
5. **baselines** -- the full network finetuned alike (from the pretrained weights: stage 1's
   steps, optimiser and loss, then stage 3's, every block for every image); StaticK, FirstK and
   RandomK finetuned from BlockDrop's starting backbone like stage 3; the smaller networks of the
   family (when their weights are given) finetuned like the full network.
"""

from __future__ import annotations

from typing import Any

from blockdrop.recipes.config import (
    AdaptConfig,
    BaselinesConfig,
    CurriculumConfig,
    EvalConfig,
    Preset,
    SelectionConfig,
)
from blockdrop.training.config import TrainConfig

__all__ = ["PRESETS", "get_preset"]


def _finetune(**kw: Any) -> TrainConfig:
    return TrainConfig(stage="finetune", **kw)


def _recipe_curriculum(**kw: Any) -> CurriculumConfig:
    """The recipe's curriculum (quick, cpu, gpu): the drop-cost prior, every block from the first
    step, the cheap policy network, two draws at gamma 2; ``kw``: the budget's own settings."""
    common: dict[str, Any] = {"prior": True, "cl_step": None, "extra_epochs": 4, "lr": 3e-3, "gamma": 2.0}
    return CurriculumConfig(**common, draws=2, **_POLICY, **kw)


def _recipe_finetune(**kw: Any) -> TrainConfig:
    """The recipe's joint stage: distilled from its starting backbone, which learns on the
    thresholded sub-network that evaluation executes; ``kw``: steps, batch size, precision."""
    return _finetune(lr=3e-4, distill=0.4, backbone_on="greedy", **kw)


def _fewest_within_a_point() -> SelectionConfig:
    """cpu / gpu: the fewest blocks within one point of the full network on validation."""
    return SelectionConfig(
        rule="tolerance",
        tolerance=0.01,
        thresholds=(0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85),
        refine=2,
        include_curriculum=False,
    )


# the CPU presets train in bfloat16 at batch 128 (the official batch sizes are 2048 / 256)
_CPU: dict[str, Any] = {"batch_size": 128, "amp": "bf16"}
# the recipe's policy network: a ResNet-8 of 12/24/48 channels on the 2x-pooled image, 1.4% of a
# ResNet-56's FLOPs (the official agent, 16/32/64 channels on the full image, costs 10%); on
# validation it keeps the official agent's accuracy at 20-23 of 27 blocks (docs/experiments/)
_POLICY: dict[str, Any] = {"width": 12, "pool": 2}

PRESETS: dict[str, Preset] = {
    "official": Preset(
        name="official",
        summary="the authors' schedule (days on a GPU); no adaptation, no distillation",
        gammas=(5.0,),
        curriculum=CurriculumConfig(
            batch_size=2048, cl_step=1, epochs=5000, gamma=1.0, strategy="masked", amp="off"
        ),
        finetune=_finetune(epochs=2000, batch_size=256, lr=1e-4, bn="train", strategy="masked", amp="off"),
        selection=SelectionConfig(thresholds=(0.5,), refine=0),
        baselines=BaselinesConfig(first_random_k=False, static_k=()),
    ),
    "quick": Preset(
        name="quick",
        summary="ResNet-56 in <= 15 minutes on 2 CPU cores (baselines on top)",
        gammas=(2.0,),
        adapt=AdaptConfig(steps=400, keep=0.8, lr=0.01, distill=0.4, soup=0.25, **_CPU),
        curriculum=_recipe_curriculum(prior_keep=(0.3, 0.9), prior_images=1000, steps_per_epoch=25, **_CPU),
        finetune=_recipe_finetune(steps=100, **_CPU),
        selection=SelectionConfig(
            rule="budget",
            max_blocks=0.78,
            thresholds=(0.6, 0.65, 0.7, 0.75, 0.8),
            refine=2,
            include_curriculum=False,
        ),
        baselines=BaselinesConfig(first_random_k=False, static_k=(0, -3), static_images=1000),
        evaluation=EvalConfig(speed_repeats=3),
    ),
    "cpu": Preset(
        name="cpu",
        summary="ResNet-56 in <= 90 minutes on 2 CPU cores (baselines on top)",
        gammas=(2.0,),
        adapt=AdaptConfig(steps=2000, keep=0.7, lr=0.01, distill=0.4, soup=0.25, **_CPU),
        curriculum=_recipe_curriculum(prior_keep=(0.2, 0.9), prior_images=2000, steps_per_epoch=60, **_CPU),
        finetune=_recipe_finetune(steps=500, **_CPU),
        selection=_fewest_within_a_point(),
        baselines=BaselinesConfig(first_random_k=True, static_k=(0, -3), static_images=2000),
        evaluation=EvalConfig(speed_repeats=3),
    ),
    "gpu": Preset(
        name="gpu",
        summary="ResNet-56 in <= 8 minutes on one H100/H200 (not yet run on one)",
        gammas=(2.0,),
        adapt=AdaptConfig(steps=3000, keep=0.7, lr=0.02, distill=0.4, soup=0.25, batch_size=256, amp="bf16"),
        curriculum=_recipe_curriculum(
            prior_keep=(0.2, 0.9), prior_images=2000, steps_per_epoch=60, batch_size=256, amp="bf16"
        ),
        finetune=_recipe_finetune(steps=1000, batch_size=256, amp="bf16"),
        selection=_fewest_within_a_point(),
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (ValueError naming the choices otherwise)."""
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {', '.join(PRESETS)}, got {name!r}")
    return PRESETS[name]
