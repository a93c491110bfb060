"""A tiny BERT (built from a config, nothing downloaded) trained by the HF Trainer on synthetic
tokens, steered live with HotCBHFCallback.

    python examples/hf_tiny.py --run-dir runs/hf --steps 2000

In another terminal, while it trains:

    hotcb --dir runs/hf status
    hotcb --dir runs/hf set lr=1e-3 --wait         # survives the Trainer's linear schedule
    hotcb --dir runs/hf set max_grad_norm=0.5      # a custom knob: TrainingArguments.max_grad_norm
    hotcb --dir runs/hf checkpoint                 # the Trainer saves output/checkpoint-<step>
    hotcb --dir runs/hf evaluate                   # control.should_evaluate: eval right after
    hotcb --dir runs/hf extend --steps 500         # state.max_steps += 500 (up to the last epoch)
    hotcb --dir runs/hf pause                      # ... then: hotcb --dir runs/hf resume
    hotcb --dir runs/hf stop                       # control.should_training_stop

Ctrl-C or SIGTERM: the Trainer saves output/checkpoint-<step> at the next step and train()
returns (Ctrl-C twice stops at once).

Resume (hotcb's state is in each checkpoint folder as hotcb_state.json); `--resume` defaults to
`$HOTCB_RESUME_FROM` and `--run-dir` to `$HOTCB_RUN_DIR`, which `hotcb launch` sets:

    python examples/hf_tiny.py --run-dir runs/hf --resume runs/hf/output/checkpoint-300
    hotcb --dir runs/hf-b launch --resume-from runs/hf/output/checkpoint-300 -- python examples/hf_tiny.py

Under torchrun (CPU, gloo; every rank applies each command at the same step):

    torchrun --nproc-per-node 2 examples/hf_tiny.py --run-dir runs/hf-ddp --steps 500
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from hotcb import ActuatorType, HotKernel, attr_actuator, mutable_state
from hotcb.adapters.hf import HotCBHFCallback

VOCAB, SEQ = 64, 12


class SyntheticTokens(torch.utils.data.Dataset):
    """Random token sequences; the label says whether token 7 occurs (learnable, no download)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, VOCAB, (n, SEQ), generator=g)
        self.labels = (self.ids == 7).any(dim=1).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=SEQ,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


class StepDelay(TrainerCallback):
    """Slow training down enough to steer it by hand."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.seconds:
            time.sleep(self.seconds)


class Trace(TrainerCallback):
    """``--trace-dir``: per rank, one JSON line per step (lr, max_grad_norm) and final weights,
    to check that every rank applied each command at the same step."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        os.makedirs(folder, exist_ok=True)

    def _path(self, state: Any, name: str) -> str:
        rank = int(os.environ.get("RANK", "0"))
        return os.path.join(self.folder, f"{name}_rank{rank}")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        row = {
            "step": state.global_step,
            "lr": kwargs["optimizer"].param_groups[0]["lr"],
            "max_grad_norm": args.max_grad_norm,
            "stop": control.should_training_stop,
        }
        with open(self._path(state, "trace") + ".jsonl", "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = kwargs["model"]
        torch.save(model.state_dict(), self._path(state, "weights") + ".pt")


def build(
    run_dir: str,
    steps: int,
    *,
    step_delay: float = 0.0,
    lr: float = 5e-3,
    save_steps: int = 0,
    eval_steps: int = 0,
    resume_from: str | None = None,
    extra_callbacks: list[Any] | None = None,
) -> tuple[Trainer, HotKernel]:
    """The Trainer and its kernel (tests build theirs here too); ``resume_from``: the checkpoint
    folder ``trainer.train(resume_from_checkpoint=...)`` will get, whose hotcb state to restore
    (without it the adapter looks in this run's own ``output/checkpoint-<step>``)."""
    args = TrainingArguments(
        output_dir=os.path.join(run_dir, "output"),
        max_steps=steps,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=64,
        learning_rate=lr,
        lr_scheduler_type="linear",
        logging_steps=1,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps or None,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    # the Trainer reads args.max_grad_norm at every step, so it is a live knob
    knobs = [attr_actuator(args, "max_grad_norm", ActuatorType.FLOAT, min_value=0.0, max_value=1e3)]
    kernel = HotKernel(run_dir, mutable_state=mutable_state(knobs))
    trainer = Trainer(
        model=tiny_bert(),
        args=args,
        train_dataset=SyntheticTokens(512),
        eval_dataset=SyntheticTokens(128, seed=1),
        # the Trainer has an eval dataset even when eval_steps=0: `hotcb evaluate` may use it
        callbacks=[
            HotCBHFCallback(kernel, can_evaluate=True, resume_from=resume_from),
            StepDelay(step_delay),
            *(extra_callbacks or []),
        ],
    )
    return trainer, kernel


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--run-dir",
        default=os.environ.get("HOTCB_RUN_DIR") or "runs/hf",
        help="run directory (default: $HOTCB_RUN_DIR, which hotcb launch sets, else runs/hf)",
    )
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--step-delay", type=float, default=0.01)
    ap.add_argument("--save-steps", type=int, default=0)
    ap.add_argument("--eval-steps", type=int, default=100)
    ap.add_argument(
        "--resume",
        default=os.environ.get("HOTCB_RESUME_FROM") or None,
        help="a checkpoint folder to resume from (default: $HOTCB_RESUME_FROM)",
    )
    ap.add_argument("--trace-dir", help="per-rank trace of lr and max_grad_norm (for tests)")
    args = ap.parse_args(argv)
    trainer, kernel = build(
        args.run_dir,
        args.steps,
        step_delay=args.step_delay,
        save_steps=args.save_steps,
        eval_steps=args.eval_steps,
        resume_from=args.resume,
        extra_callbacks=[Trace(args.trace_dir)] if args.trace_dir else None,
    )
    trainer.train(resume_from_checkpoint=args.resume)
    kernel.close()
    if trainer.is_world_process_zero():
        print(f"done at step {trainer.state.global_step}", flush=True)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # under torchrun the Trainer opened a gloo group; leaving it to interpreter exit
        # can abort a rank ("terminate called without an active exception")
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
