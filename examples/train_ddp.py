"""Data-parallel training under torchrun (DDP, gloo on CPU): nothing in it knows about prefetching.

    torchrun --nproc-per-node 2 examples/train_ddp.py --steps 8
    prefetch record --out traces/ddp -- torchrun --nproc-per-node 2 examples/train_ddp.py
    prefetch run --compare --json out/ddp.json -- torchrun --nproc-per-node 2 examples/train_ddp.py

Each rank trains the same MLP on its own data; DDP averages the gradients in buckets.
With `--prefetch POLICY` (or `--record DIR`) every rank uses the Python API itself
(`runtime.prefetching` / `runtime.record`) instead, and writes its report to
`--report-dir` as `report.r<rank>.json`.
"""

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP


class TinyMLP(nn.Module):
    def __init__(self, width: int = 256, depth: int = 3):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))  # (B, width)
        return self.head(x).squeeze(-1)  # (B,)


def train(model, optimizer, steps: int, gen: torch.Generator, batch: int) -> float:
    for _ in range(steps):
        x = torch.randn(batch, 256, generator=gen)
        y = x[:, :8].sum(-1)
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--prefetch", default=None, metavar="POLICY", help="use runtime.prefetching in each rank")
    parser.add_argument("--record", default=None, metavar="DIR", help="use runtime.record in each rank")
    parser.add_argument("--report-dir", default=None, help="where --prefetch writes report.r<rank>.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP also broadcasts them)
    model = DDP(TinyMLP())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(args.seed + 1 + rank)  # each rank its own data
    if args.prefetch:
        import runtime

        with runtime.prefetching(model, optimizer, policy=args.prefetch, budget=0.5) as pf:
            loss = train(model, optimizer, args.steps, gen, args.batch)
        report = {**pf.report(), "rank": rank, "world_size": dist.get_world_size(), "workload": "train_ddp"}
        out = Path(args.report_dir or ".") / f"report.r{rank}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=str))
    elif args.record:
        import runtime

        with runtime.record(model, optimizer, out=args.record, workload="train_ddp"):
            loss = train(model, optimizer, args.steps, gen, args.batch)
    else:
        loss = train(model, optimizer, args.steps, gen, args.batch)
    print(f"train_ddp rank {rank}/{dist.get_world_size()} (pid {os.getpid()}): final loss {loss:.6f}")
    dist.barrier()  # no rank tears gloo down while another still talks to it (a std::terminate at exit)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
