"""A small plain-PyTorch training script: nothing in it knows about prefetching.

    python examples/train_tiny.py --steps 12
    prefetch run -- python examples/train_tiny.py --steps 12            # prefetched, unchanged
    prefetch run --compare -- python examples/train_tiny.py              # + bit-identity vs all resident
    prefetch record --out traces/tiny -- python examples/train_tiny.py

An MLP of four 256x256 layers (256 KiB weights each) on a batch of 128 (128 KiB
activations): every weight and saved activation is at least 64 KiB, so it is managed.
"""

import argparse

import torch
from torch import nn


class TinyMLP(nn.Module):
    def __init__(self, width: int = 256, depth: int = 4):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))  # (B, width)
        return self.head(x).squeeze(-1)  # (B,)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = TinyMLP()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed + 1)
    for step in range(args.steps):
        x = torch.randn(args.batch, 256, generator=gen)
        y = x[:, :8].sum(-1)
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    print(f"train_tiny: {args.steps} steps, final loss {loss.item():.6f}")


if __name__ == "__main__":
    main()
