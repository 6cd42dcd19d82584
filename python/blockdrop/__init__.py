"""BlockDrop with real batched speedup: per-image block policies executed by skipping work.

    import blockdrop
    model = blockdrop.models.cifar_resnet(depth=110)      # or load_cifar_resnet / from_torchvision
    logits = blockdrop.dynamic_forward(model, x, policy)  # x: [N, 3, H, W], policy: [N, K] of 0/1
"""

from . import models
from .accounting import flops, ideal_speedup
from .engine import dynamic_forward

# --- BlockDropNet (policy net + backbone) is added here by the trainer work: -------------------
from .blockdrop_net import BlockDropNet
# ------------------------------------------------------------------------------------------------

__all__ = ["BlockDropNet", "dynamic_forward", "flops", "ideal_speedup", "models"]
