"""The settings of ``blockdrop reproduce``: one :class:`Preset` per compute budget.

``official`` is the authors' schedule (Tushar-N/blockdrop: curriculum 5000 epochs at batch 2048,
one block freed per epoch, gamma 1; joint finetuning 2000 epochs at batch 256, gamma 5, lr x0.1 at
epoch 1600; no backbone adaptation, no distillation) -- about 10^4 times what fits in an hour of
a 2-core CPU. ``quick``, ``cpu`` and ``gpu`` are this library's recipe at smaller budgets; every
deviation from ``official`` and the measurement behind it is in docs/TRAINING.md.

The recipe, stage by stage (steps are optimisation steps of ``batch_size`` images):

1. **adapt** -- the pretrained backbone learns to tolerate dropped blocks: ``adapt_steps`` of
   stochastic depth (each block of each image kept with probability ``adapt_keep``) through the
   gather path, SGD with a cosine decay, loss blended with the pretrained network's soft targets
   (``adapt_distill``; with ``adapt_inplace`` the network's own full path is the teacher and is
   trained by cross-entropy in the same step);
   With ``soup_full`` > 0 the backbone the next stages start from is the adapted one averaged,
   weight by weight, with the full network finetuned alike (stage 4's, trained first; share
   ``soup_full`` of it; :mod:`blockdrop.training.averaging`);
2. **curriculum** -- the policy network alone (backbone frozen), the last blocks freed first,
   ``cl_step`` more every ``cl_steps_per_epoch`` steps (``None``: every block from the first
   step); with ``cl_prior`` the policy network starts as the static policy that drops the
   blocks whose single drop costs least first (:mod:`blockdrop.training.drop_costs`, measured on
   ``prior_images`` training images; keep-probabilities ``prior_keep``, cheapest .. dearest)
   and REINFORCE learns per-image departures from it; with ``cl_on_adapted`` over the adapted
   backbone before averaging, the learnt policy then put on the averaged one;
3. **finetune** -- policy and backbone jointly (Adam, lr x0.1 at 80%), the backbone's loss on
   the sampled sub-networks (official) or, with ``ft_backbone_on="greedy"``, on the thresholded
   ones that evaluation executes; that loss also distilled from the adapted full network
   (``ft_distill``);
4. **baselines** -- the full network finetuned alike (from the pretrained weights: stage 1's
   steps, optimiser and loss, then stage 3's, every block for every image); FirstK and RandomK at
   BlockDrop's validation block counts, finetuned from the adapted backbone like stage 3.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from blockdrop.training.trainer import BACKBONE_PASSES

__all__ = ["Preset", "PRESETS", "SELECT_RULES", "check_select_rule", "get_preset"]

#: How the reported operating point is chosen on validation (blockdrop.recipes.selection):
#: "tolerance", the fewest blocks within ``tolerance`` of the full network (else the most
#: accurate); "budget", each trained model at the most blocks inside ``max_blocks``, then the
#: most accurate of those.
SELECT_RULES = ("tolerance", "budget")


def check_select_rule(rule: str, max_blocks: float | None) -> None:
    """ValueError unless ``rule`` is one of :data:`SELECT_RULES` with what it needs ("budget":
    a block budget ``max_blocks``)."""
    if rule not in SELECT_RULES:
        raise ValueError(f"select_rule: expected one of {', '.join(SELECT_RULES)}, got {rule!r}")
    if rule == "budget" and max_blocks is None:
        raise ValueError("select_rule 'budget': expected a block budget max_blocks, got None")


@dataclass(frozen=True)
class Preset:
    """One budget's settings (see the module docstring for the stages)."""
    name: str
    summary: str
    n_val: int = 5000                 # images held out of the training set to choose settings
    batch_size: int = 128
    # 0. pretrain (only without pretrained weights): SGD lr 0.1, cosine, stochastic depth
    pretrain_steps: int = 0
    pretrain_keep: float = 0.5
    # 1. adapt
    adapt_steps: int = 0
    adapt_keep: float = 0.7
    adapt_lr: float = 0.01
    adapt_distill: float = 0.0
    adapt_inplace: bool = False               # teacher = the network's own full path (else the pretrained one)
    adapt_temperature: float = 4.0
    adapt_full_distill: float = 0.0           # in place: the pretrained network's soft targets in the full path's loss
    adapt_anchor: float = 0.0                 # > 0: weight decay toward the pretrained weights (L2-SP)
    soup_full: float = 0.0                    # > 0: BlockDrop's backbone = the adapted one averaged with the full network finetuned alike, this share of the latter
    cl_on_adapted: bool = False               # with soup_full: the curriculum learns over the adapted backbone before averaging, the model executes on the average
    # 2. curriculum
    policy_width: int = 16                    # channels of the ResNet-8 policy net's first stage
    cl_prior: bool = False                    # the policy starts as the static "cheapest blocks first" policy
    prior_keep: tuple[float, float] = (0.3, 0.9)  # its keep-probabilities, cheapest .. dearest block
    prior_images: int = 2000                  # training images the single-block drop costs are measured on
    cl_step: int | None = 1                   # None: every block learned from the first step
    cl_steps_per_epoch: int | None = None     # None: whole epochs over the training set
    cl_epochs: int | None = None              # None: ceil(K / cl_step) + cl_extra_epochs
    cl_extra_epochs: int = 0
    cl_batch_size: int | None = None          # None: batch_size
    cl_lr: float = 1e-3
    cl_gamma: float = 1.0
    cl_draws: int = 1                         # policies trained per gamma (seeds seed .. seed + n - 1), each a validation candidate
    # 3. finetune
    ft_steps: int | None = None               # None: ft_epochs whole epochs
    ft_epochs: int = 1
    ft_lr: float = 1e-4
    ft_distill: float = 0.0
    ft_bn: str = "train"
    ft_alpha: float = 0.8                     # exploration bound of the joint stage's sampled policies
    ft_backbone_on: str = "sample"            # the backbone's loss on the sampled (official) or the thresholded sub-network
    ft_teacher: str = "backbone"              # ft_distill's teacher: the backbone as it starts, or the "full" network finetuned alike
    ft_baseline_eval: bool = False
    ft_cl_candidate: bool = True              # with finetune steps, the curriculum's policy (draw 0) is a validation candidate too
    gammas: tuple[float, ...] = (5.0,)        # the penalties swept (finetune; curriculum if no finetune)
    thresholds: tuple[float, ...] = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)  # keep if p >= t
    threshold_refine: int = 2                 # bisections at the tolerance boundary (on val)
    tolerance: float = 0.01                   # val accuracy the chosen point may give up
    max_blocks: float | None = None           # block budget: the chosen point keeps at most this share of the K blocks (val)
    select_rule: str = "tolerance"            # SELECT_RULES
    # 4. baselines
    first_random_k: bool = True               # FirstK / RandomK (the full network always runs)
    strategy: str = "gather"
    amp: str = "bf16"                         # training precision (runtime.AMP_MODES)
    speed_repeats: int = 5                    # interleaved rounds of the measured speedup

    def __post_init__(self) -> None:
        if self.cl_on_adapted and not self.soup_full:
            raise ValueError("cl_on_adapted: the curriculum learns over the backbone before weight "
                             "averaging, so it needs soup_full > 0 (got 0)")
        lo, hi = self.prior_keep
        if not 0 < lo <= hi < 1:
            raise ValueError(f"prior_keep: expected 0 < lo <= hi < 1, got {self.prior_keep}")
        if self.cl_draws < 1:
            raise ValueError(f"cl_draws: expected >= 1, got {self.cl_draws}")
        if self.prior_images < 1:
            raise ValueError(f"prior_images: expected >= 1, got {self.prior_images}")
        if self.cl_step is not None and self.cl_step < 1:
            raise ValueError(f"cl_step: expected >= 1 or None (every block learned at once), got {self.cl_step}")
        if self.ft_backbone_on not in BACKBONE_PASSES:
            raise ValueError(f"ft_backbone_on: expected {' or '.join(map(repr, BACKBONE_PASSES))}, "
                             f"got {self.ft_backbone_on!r}")
        if self.ft_teacher not in ("backbone", "full"):
            raise ValueError(f"ft_teacher: expected 'backbone' or 'full', got {self.ft_teacher!r}")
        if not 0.5 <= self.ft_alpha <= 1.0:
            raise ValueError(f"ft_alpha: expected an exploration bound in [0.5, 1], got {self.ft_alpha}")
        if self.max_blocks is not None and not 0 < self.max_blocks <= 1:
            raise ValueError(f"max_blocks: expected a share of the blocks in (0, 1], got {self.max_blocks}")
        check_select_rule(self.select_rule, self.max_blocks)

    def with_overrides(self, **kw: Any) -> "Preset":
        """A copy with some fields replaced (unknown names raise TypeError)."""
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields."""
        return asdict(self)


PRESETS: dict[str, Preset] = {
    "official": Preset(
        name="official",
        summary="the authors' schedule (days on a GPU); no adaptation, no distillation",
        batch_size=256, cl_batch_size=2048, cl_step=1, cl_epochs=5000, cl_gamma=1.0,
        ft_epochs=2000, ft_lr=1e-4, ft_bn="train", gammas=(5.0,), first_random_k=False,
        thresholds=(0.5,), threshold_refine=0, strategy="masked", amp="off"),
    "quick": Preset(
        name="quick", summary="ResNet-56 in <= 15 minutes on 2 CPU cores",
        adapt_steps=400, adapt_keep=0.8, adapt_lr=0.01, adapt_distill=0.4, soup_full=0.25,
        cl_prior=True, prior_keep=(0.3, 0.9), prior_images=1000, cl_step=None,
        cl_steps_per_epoch=25, cl_extra_epochs=4, cl_lr=3e-3, cl_gamma=2.0, cl_draws=2,
        ft_steps=100, ft_lr=3e-4, ft_distill=0.4, ft_backbone_on="greedy", ft_cl_candidate=False,
        gammas=(2.0,), first_random_k=False, select_rule="budget", max_blocks=0.845,
        thresholds=(0.55, 0.6, 0.65, 0.7), threshold_refine=2, speed_repeats=3),
    "cpu": Preset(
        name="cpu", summary="ResNet-56 in <= 90 minutes per gamma on 2 CPU cores",
        adapt_steps=1500, adapt_keep=0.7, adapt_lr=0.01, adapt_distill=1.0, adapt_inplace=True,
        adapt_temperature=1.0, cl_step=3, cl_steps_per_epoch=30, cl_extra_epochs=2, cl_gamma=1.0,
        ft_steps=500, ft_lr=1e-4, ft_distill=0.5, gammas=(2.0, 5.0, 10.0)),
    "gpu": Preset(
        name="gpu", summary="ResNet-56 in <= 8 minutes on one H100/H200 (not yet run on one)",
        batch_size=256, adapt_steps=3000, adapt_keep=0.7, adapt_lr=0.02, adapt_distill=1.0,
        adapt_inplace=True, adapt_temperature=1.0, cl_step=3, cl_steps_per_epoch=40,
        cl_extra_epochs=3, cl_gamma=1.0, ft_steps=1000, ft_distill=0.5, gammas=(2.0, 5.0, 10.0)),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (ValueError naming the choices otherwise)."""
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {', '.join(PRESETS)}, got {name!r}")
    return PRESETS[name]
