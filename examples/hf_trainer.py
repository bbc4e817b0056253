"""A Hugging Face Trainer run prefetched by adding one callback, checked against all resident.

    python examples/hf_trainer.py                       # replay policy, 40% budget, 8 steps
    python examples/hf_trainer.py --policy markov --budget 0.3 --json out/hf.json
    python examples/hf_trainer.py --record traces/hf    # record a trace instead

A 2-layer GPT-2 built from a config (nothing downloaded) on random tokens, on the CPU,
with gradient accumulation, clipping and evaluation on. The run is done twice, all
resident and with `PrefetchCallback`; the losses, final parameters and optimizer state
must match bit for bit (exit code 1 if not). Needs `pip install 'learned-prefetch[zoo]'`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

try:
    import runtime  # noqa: F401
except ImportError:  # a fresh clone, not installed: the repository root holds the packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from runtime import state_compare
from runtime.hf import PrefetchCallback, RecordCallback, torch_optimizer
from runtime.trainer_session import compare_with_resident

VOCAB, SEQ = 256, 32  # hidden states (4, 32, 128) fp32 = 64 KiB: managed, as are the weights


def tiny_gpt2(seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=128, n_head=2, vocab_size=VOCAB, n_positions=SEQ))


def dataset(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(seed + 1))
    return [{"input_ids": row, "labels": row} for row in ids]


def train(out: Path, args: argparse.Namespace, callback: Any = None) -> tuple[Trainer, list[float]]:
    targs = TrainingArguments(output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=4,
                              gradient_accumulation_steps=2, max_grad_norm=1.0, learning_rate=1e-3,
                              eval_strategy="steps", eval_steps=max(1, args.steps // 2), logging_steps=1,
                              save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
                              seed=args.seed, disable_tqdm=True)
    data = dataset(64, args.seed)
    trainer = Trainer(model=tiny_gpt2(args.seed), args=targs, train_dataset=data, eval_dataset=data[:8],
                      callbacks=[callback] if callback is not None else None)
    trainer.train()
    logged = [h[k] for h in trainer.state.log_history for k in ("loss", "eval_loss") if k in h]
    return trainer, logged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policy", default="replay", help="none | replay | markov | learned:MODEL_DIR")
    parser.add_argument("--budget", default="0.4", help="fraction of managed bytes, or a size (2MiB)")
    parser.add_argument("--out", type=Path, default=None, help="Trainer output folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="write the prefetch report here")
    parser.add_argument("--record", type=Path, default=None, help="record a trace to this folder instead")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        if args.record is not None:
            rec = RecordCallback(out=args.record, workload="hf-gpt2-tiny")
            train(out / "record", args, rec)
            print(f"trace: {rec.stem}.events.arrow")
            return 0
        try:
            cb = PrefetchCallback(policy=args.policy, budget=args.budget)  # "0.4", "40%", "2MiB": all parsed
        except ValueError as exc:
            print(f"hf_trainer: error: {exc}", file=sys.stderr)
            return 2
        ref, ref_logged = train(out / "resident", args)
        run, logged = train(out / "prefetched", args, cb)
        ok = compare_with_resident(cb.report, state_compare.snapshot(ref.model, torch_optimizer(ref.optimizer)),
                                   state_compare.snapshot(run.model, torch_optimizer(run.optimizer)),
                                   losses=logged, reference_losses=ref_logged, json_path=args.json)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
