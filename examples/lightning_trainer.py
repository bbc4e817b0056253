"""A Lightning Trainer fit prefetched by adding one callback, checked against all resident.

    python examples/lightning_trainer.py                       # replay policy, 40% budget, 2 epochs
    python examples/lightning_trainer.py --policy markov --budget 0.3 --json out/lightning.json
    python examples/lightning_trainer.py --record traces/lightning    # record a trace instead

A LightningModule of four Linear(256, 256) layers on random data, on the CPU, with automatic
optimization (the step's forward and backward run inside `optimizer.step(closure)`), gradient
accumulation, clipping and a validation pass every epoch. The fit is done twice, all resident
and with `PrefetchCallback`; the losses, final parameters and optimizer state must match bit
for bit (exit code 1 if not). Needs `pip install 'learned-prefetch[zoo]'`.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

try:
    import runtime  # noqa: F401
except ImportError:  # a fresh clone, not installed: the repository root holds the packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L
import torch

from runtime import state_compare
from runtime.lightning import PrefetchCallback, RecordCallback
from runtime.trainer_session import compare_with_resident

WIDTH, BATCH, BATCHES = 256, 512, 8  # 256 KiB weights and (512, 256) activations: managed


class Net(L.LightningModule):
    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.layers = torch.nn.Sequential(*(torch.nn.Sequential(torch.nn.Linear(WIDTH, WIDTH), torch.nn.GELU())
                                            for _ in range(4)))
        self.losses: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layers(x), y)
        self.losses.append(loss.item())
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.losses.append(torch.nn.functional.mse_loss(self.layers(x), y).item())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def loader(seed: int) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(BATCH * BATCHES, WIDTH, generator=g)
    data = torch.utils.data.TensorDataset(x, torch.tanh(x.flip(-1)))
    return torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=False, num_workers=0)


def fit(args: argparse.Namespace, callback: Any = None) -> tuple[Net, L.Trainer]:
    net = Net(args.seed)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=args.epochs, accumulate_grad_batches=2,
                        gradient_clip_val=1.0, limit_val_batches=2, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[callback] if callback is not None else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on num_workers and the like
        trainer.fit(net, loader(args.seed), loader(args.seed))
    return net, trainer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs of 4 optimizer steps (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policy", default="replay", help="none | replay | markov | learned:MODEL_DIR")
    parser.add_argument("--budget", default="0.4", help="fraction of managed bytes, or a size (2MiB)")
    parser.add_argument("--json", type=Path, default=None, help="write the prefetch report here")
    parser.add_argument("--record", type=Path, default=None, help="record a trace to this folder instead")
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    torch.set_num_threads(1)
    if args.record is not None:
        rec = RecordCallback(out=args.record, workload="lightning-mlp")
        fit(args, rec)
        print(f"trace: {rec.stem}.events.arrow")
        return 0
    try:
        cb = PrefetchCallback(policy=args.policy, budget=args.budget)  # "0.4", "40%", "2MiB": all parsed
    except ValueError as exc:
        print(f"lightning_trainer: error: {exc}", file=sys.stderr)
        return 2
    ref, ref_trainer = fit(args)
    run, trainer = fit(args, cb)
    ok = compare_with_resident(cb.report, state_compare.snapshot(ref, ref_trainer.optimizers[0]),
                               state_compare.snapshot(run, trainer.optimizers[0]), losses=run.losses,
                               reference_losses=ref.losses, json_path=args.json)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
