"""The fault suite's job: a small residual MLP (a module of its own: `conftest` names clash across test folders)."""

from __future__ import annotations

import torch


class Net(torch.nn.Module):
    """Three residual blocks: 256 KiB weights and 128 KiB saved activations, all managed."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(128, 512), torch.nn.GELU(), torch.nn.Linear(512, 128)) for _ in range(3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = x + b(x)
        return x


def make_job(seed: int = 0):
    """(model, optimizer, step) where step() runs one AdamW step and returns the loss."""
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)

    def step() -> float:
        opt.zero_grad()
        loss = model(torch.randn(64, 128, generator=g)).pow(2).mean()
        loss.backward()
        opt.step()
        return loss.item()

    return model, opt, step
