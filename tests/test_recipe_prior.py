"""The recipe's drop-cost prior on tiny data: a policy network that starts as the static
"cheapest blocks first" policy (``curriculum.prior``), every block learned from the first step
(``curriculum.cl_step=None``), and several policy draws per gamma (``curriculum.draws``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from blockdrop.checkpoint import load_blockdrop_net, read_meta
from blockdrop.data import load_dataset, make_loader, split_train_val, take_subset
from blockdrop.recipes.config import (
    AdaptConfig,
    BaselinesConfig,
    CurriculumConfig,
    EvalConfig,
    Preset,
    SelectionConfig,
)
from blockdrop.training.drop_costs import keep_prior, single_drop_costs

CL = CurriculumConfig(
    prior=True,
    prior_keep=(0.2, 0.8),
    prior_images=20,
    cl_step=None,
    steps_per_epoch=1,
    extra_epochs=1,
    lr=1e-3,
    batch_size=8,
    amp="off",
)
TINY = Preset(
    name="tiny",
    summary="test",
    n_val=12,
    gammas=(1.0,),
    adapt=AdaptConfig(steps=2, distill=0.5, batch_size=8, amp="off"),
    curriculum=CL,
    finetune=None,
    baselines=BaselinesConfig(first_random_k=False, static_k=()),
    selection=SelectionConfig(thresholds=(0.4, 0.5)),
    evaluation=EvalConfig(speed_batch=4),
)


@pytest.fixture(scope="module")
def tiny(tiny_recipe_data: dict[str, Path]) -> dict[str, Path]:
    return tiny_recipe_data


def _subset_loader(train_path: Path, n: int, seed: int = 0):
    """The images the recipe measures costs on: ``n`` of the training split (seed + 1)."""
    train, _ = split_train_val(load_dataset(train_path, "train", seed=seed), TINY.n_val, seed=seed)
    return make_loader(take_subset(train, n, seed=seed + 1).dataset, 250, train=False)


def test_presets_validate_the_prior_settings() -> None:
    for bad in (
        dict(prior_keep=(0.0, 0.5)),
        dict(prior_keep=(0.6, 0.5)),
        dict(prior_images=0),
        dict(cl_step=0),
        dict(draws=0),
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            dataclasses.replace(CL, **bad)


def test_reproduce_with_the_drop_cost_prior(tiny: dict[str, Path], tmp_path: Path) -> None:
    from blockdrop.recipes import reproduce as rep

    out = tmp_path / "run"
    logs: list[str] = []
    rep.reproduce(
        TINY,
        "resnet8",
        tiny["train"],
        tiny["test"],
        tiny["weights"],
        out,
        device="cpu",
        progress=False,
        log=logs.append,
    )
    # curriculum: costs of the (frozen) backbone it learns over; the policy started at the prior
    cl = out / "gamma1" / "curriculum" / "last"
    net, _ = load_blockdrop_net(cl.with_suffix(".safetensors"))
    meta = read_meta(cl.with_suffix(".safetensors"))
    costs = single_drop_costs(net.backbone, _subset_loader(tiny["train"], CL.prior_images))
    torch.testing.assert_close(torch.tensor(meta["drop_costs"]), costs.float(), atol=1e-5, rtol=1e-5)
    prior_logit = torch.logit(keep_prior(costs, *CL.prior_keep))
    steps = meta["progress"]["global_step"]
    assert steps == 2 and meta["config"]["cl_step"] == net.backbone.num_blocks
    # Adam moves each parameter by at most about lr per step
    moved = (net.policy_net.fc.bias.detach() - prior_logit).abs().max()
    assert moved <= steps * CL.lr * 1.01, moved
    assert any("policy prior from single-block drop costs" in line for line in logs), logs
    assert any("every block learned" in line for line in logs), logs


def test_policy_draws_are_candidates_and_resume(tiny: dict[str, Path], tmp_path: Path) -> None:
    """curriculum.draws = 2: two policies from seeds 0 and 1 over the same backbone, both evaluated on
    validation at every threshold; the report names the chosen draw; resume reuses both."""
    from blockdrop.recipes import reproduce as rep

    p = TINY.replace(curriculum=dataclasses.replace(CL, draws=2))
    out = tmp_path / "draws"
    report = rep.reproduce(
        p,
        "resnet8",
        tiny["train"],
        tiny["test"],
        tiny["weights"],
        out,
        device="cpu",
        progress=False,
        log=lambda s: None,
    )
    d0 = load_blockdrop_net(out / "gamma1" / "curriculum" / "last.safetensors")[0]
    d1 = load_blockdrop_net(out / "gamma1" / "curriculum_draw1" / "last.safetensors")[0]
    assert read_meta(out / "gamma1" / "curriculum_draw1")["config"]["seed"] == 1
    assert not torch.equal(d0.policy_net.stem[0].weight, d1.policy_net.stem[0].weight)
    for k, t in d0.backbone.state_dict().items():  # one backbone, frozen in both
        assert torch.equal(t, d1.backbone.state_dict()[k]), k
    draws = {(q["draw"], q["threshold"]) for q in report["val"]["points"]}
    assert {(0, 0.4), (0, 0.5), (1, 0.4), (1, 0.5)} <= draws
    assert report["draw"] in (0, 1)
    chosen = [r for r in report["results"] if r.get("chosen")]
    assert len(chosen) == 1 and chosen[0]["draw"] == report["draw"]
    logs: list[str] = []
    again = rep.reproduce(
        p,
        "resnet8",
        tiny["train"],
        tiny["test"],
        tiny["weights"],
        out,
        device="cpu",
        progress=False,
        resume=True,
        log=logs.append,
    )
    assert any(line.startswith("[gamma 1, draw 1] reusing") for line in logs), logs
    assert again["accuracy"] == report["accuracy"] and again["draw"] == report["draw"]
