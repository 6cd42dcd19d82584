"""BlockDrop with real batched speedup: per-image block policies executed by skipping work.

import blockdrop
model = blockdrop.models.cifar_resnet(depth=110)      # or load_cifar_resnet / from_torchvision
logits = blockdrop.dynamic_forward(model, x, policy)  # x: [N, 3, H, W], policy: [N, K] of 0/1
net = blockdrop.load("runs/quick/blockdrop.safetensors")  # a BlockDropNet from `blockdrop reproduce`
logits, policy = net(x)
logits = blockdrop.capacity_forward(model, x, scores, capacity)  # block k on the top-C_k images
"""

__version__ = "0.2.0"

from . import interop, models
from .blockdrop_net import BlockDropNet
from .capacity import capacity_forward
from .checkpoint import load
from .engine import dynamic_forward
from .evaluation.accounting import flops, ideal_speedup
from .graphs import cuda_graphed

# Every spec kind is registered once the package is imported: models (cifar, torchvision, timm,
# the policy nets), interop (the official networks) and the fixed baseline policies here.
from .training import baselines  # noqa: E402,F401

del baselines  # reached as blockdrop.training.baselines

__all__ = [
    "BlockDropNet",
    "__version__",
    "capacity_forward",
    "cuda_graphed",
    "dynamic_forward",
    "flops",
    "ideal_speedup",
    "interop",
    "load",
    "models",
]
