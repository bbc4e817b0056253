"""Vision workloads: a small ViT image classifier.

    prefetch record --workload vit --steps 20 --out traces/vit

Images are 32x32 RGB in 10 classes: each image is its class's fixed prototype (drawn
once from the seed) plus noise drawn from (seed, i), so the task is learnable and the
batch of step i is a pure function of (seed, i).
"""

from __future__ import annotations

import torch

from .base import Job, Workload
from .lm import job_config, loss_value, make_optimizer, require_transformers, step_generator

VIT_SHAPE = dict(
    image_size=32,
    patch_size=8,
    num_channels=3,
    hidden_size=384,
    num_hidden_layers=4,
    num_attention_heads=6,
    intermediate_size=1024,
)
VIT_DATA = dict(batch_size=12, num_labels=10, noise=1.0)


def build_vit(seed: int, device: torch.device | str = "cpu") -> Job:
    transformers = require_transformers()
    num_labels = VIT_DATA["num_labels"]
    config = transformers.ViTConfig(
        **VIT_SHAPE,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    model = transformers.ViTForImageClassification(config)
    model.to(device).train()
    optimizer = make_optimizer(model)

    size, channels = VIT_SHAPE["image_size"], VIT_SHAPE["num_channels"]
    batch_size, noise = VIT_DATA["batch_size"], VIT_DATA["noise"]
    # (num_labels, C, H, W): one fixed pattern per class, a function of the seed only
    prototypes = torch.randn(num_labels, channels, size, size, generator=step_generator(seed, -1, "prototypes"))

    def step(i: int) -> float:
        gen = step_generator(seed, i)
        labels = torch.randint(0, num_labels, (batch_size,), generator=gen)  # (B,)
        pixels = prototypes[labels] + noise * torch.randn(batch_size, channels, size, size, generator=gen)  # (B, C, H, W)
        labels, pixels = labels.to(device), pixels.to(device)  # drawn on the CPU: the same batch on every device
        optimizer.zero_grad(set_to_none=True)
        loss = model(pixel_values=pixels, labels=labels).loss
        loss.backward()
        optimizer.step()
        return loss_value(loss)

    return Job(model, optimizer, step, job_config(model, "vit", seed, **VIT_DATA))


VIT = Workload(
    name="vit",
    description=f"ViT image classifier ({VIT_SHAPE['image_size']}x{VIT_SHAPE['image_size']}, patch {VIT_SHAPE['patch_size']}, "
                f"{VIT_SHAPE['num_hidden_layers']} layers, d={VIT_SHAPE['hidden_size']}, {VIT_DATA['num_labels']} classes), "
                "static access order",
    dynamic=False,
    build=build_vit,
)
