"""Train each trainer 2 steps with plain SGD and save its parameters: run once as 1 process and once as 2 (gloo).

``python tests/multiprocess_parity.py MODELS OUT TRAINER...`` (or under ``accelerate launch``/``torchrun``): the
global batch is ``GLOBAL_BATCH`` rows whatever the number of processes (``GLOBAL_BATCH / WORLD_SIZE`` per process),
so a 2-process run must end where a 1-process run ends. ``MODELS`` holds ``lm/``, ``rm/`` and ``vlm/`` (the tiny
models of ``trl_extras.testing``); each trainer writes ``OUT/<trainer>.pt`` (parameters before and after) from the
main process. Used by ``tests/test_multiprocess.py``.
"""

from __future__ import annotations

import os
import sys
import time

import torch

GLOBAL_BATCH = 4
STEPS = 2
PROMPTS = ["The film was", "I thought the plot", "My family said", "The music in it"]


def _common(world_size: int, out: str) -> dict:
    return dict(
        output_dir=out,
        per_device_train_batch_size=GLOBAL_BATCH // world_size,
        max_steps=STEPS,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,  # no clipping: a 2-process step is exactly the mean of the two halves' gradients
        logging_steps=1,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        gradient_checkpointing=False,
        dataloader_drop_last=True,
        seed=0,
    )


def _preference_rows(n=GLOBAL_BATCH * STEPS):
    good, bad = [" great fun.", " a joy to watch.", " lovely."], [" a bore.", " awful.", " too long and dull."]
    return [
        {"prompt": PROMPTS[i % 4], "chosen": good[i % 3], "rejected": bad[(i + 1) % 3] + " Really."[: i % 5]}
        for i in range(n)
    ]


def _vision_rows(n=GLOBAL_BATCH * STEPS):
    import numpy as np
    from PIL import Image

    answers = ["Red.", "A blue square.", "Green.", "A white cat on a mat."]
    return [
        {
            "images": [Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8))],
            "prompt": [{"role": "user", "content": "What is in the picture?"}],
            "chosen": [{"role": "assistant", "content": answers[i % 4]}],
            "rejected": [{"role": "assistant", "content": "A dog." if i % 2 else "Nothing at all."}],
        }
        for i in range(n)
    ]


def target_fraction(completion_ids, **kwargs):
    """A reward that is a function of the completion alone: the fraction of its tokens in a fifth of the vocabulary."""
    return [sum(100 <= t < 164 for t in ids) / max(len(ids), 1) for ids in completion_ids]


class ContentSeededSampling:
    """Sampling whose randomness depends on the row's tokens so far and its place in its group, not on a process's
    random stream: Gumbel-max over the logits with noise drawn from a generator seeded by a hash of (prompt and
    completion tokens without padding, row index modulo ``group_size``). Used with ``do_sample=False``, it draws from
    softmax(logits) exactly as sampling does, and the same prompt gets the same completions in 1 or 2 processes."""

    def __init__(self, group_size: int, pad_token_id: int):
        self.group_size, self.pad_token_id = group_size, pad_token_id

    def __call__(self, input_ids, scores):
        import hashlib

        noise = torch.empty_like(scores)
        for row in range(scores.size(0)):
            tokens = [t for t in input_ids[row].tolist() if t != self.pad_token_id]
            digest = hashlib.sha256(repr((tokens, row % self.group_size)).encode()).digest()
            generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
            uniform = torch.rand(scores.size(1), generator=generator, dtype=torch.float64).clamp_min(1e-12)
            noise[row] = (-torch.log(-torch.log(uniform))).to(scores.dtype)
        return torch.log_softmax(scores.float(), dim=-1).to(scores.dtype) + noise


def deterministic_sampling(trainer, group_size: int):
    """Make ``trainer``'s sampled generations :class:`ContentSeededSampling` (greedy calls stay greedy)."""
    import copy

    from transformers import LogitsProcessorList

    model = trainer.model
    generate = model.generate
    processor = ContentSeededSampling(group_size, trainer.processing_class.pad_token_id)

    def seeded_generate(*args, generation_config=None, **kwargs):
        if generation_config is not None and generation_config.do_sample:
            generation_config = copy.copy(generation_config)
            generation_config.do_sample = False
            # after the caller's processors (ReMax's greedy rows are one-hot by then, and stay their argmax)
            kwargs["logits_processor"] = LogitsProcessorList([*(kwargs.get("logits_processor") or []), processor])
        return generate(*args, generation_config=generation_config, **kwargs)

    model.generate = seeded_generate
    return trainer


def build(name: str, models: str, world_size: int, out: str):
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText

    lm, rm, vlm = (os.path.join(models, sub) for sub in ("lm", "rm", "vlm"))
    common = _common(world_size, os.path.join(out, name))
    preferences = Dataset.from_list(_preference_rows())
    if name == "sft":
        from trl import SFTConfig, SFTTrainer

        rows = [{"prompt": row["prompt"], "completion": row["chosen"]} for row in _preference_rows()]
        return SFTTrainer(lm, args=SFTConfig(**common), train_dataset=Dataset.from_list(rows))
    if name == "reward":
        from trl import RewardConfig, RewardTrainer

        return RewardTrainer(rm, args=RewardConfig(**common), train_dataset=preferences)
    if name == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer(lm, args=DPOConfig(**common), train_dataset=preferences)
    if name == "unlikelihood":
        from trl_extras import UnlikelihoodConfig, UnlikelihoodTrainer

        return UnlikelihoodTrainer(lm, args=UnlikelihoodConfig(**common), train_dataset=preferences)
    if name == "mdpo":
        from trl_extras import MDPOConfig, MDPOTrainer
        from trl_extras.testing import load_tiny_vlm_processor

        return MDPOTrainer(
            model=AutoModelForImageTextToText.from_pretrained(vlm),
            args=MDPOConfig(**common, max_length=None),
            train_dataset=Dataset.from_list(_vision_rows()),
            processing_class=load_tiny_vlm_processor(vlm),
        )
    online = dict(max_completion_length=6, num_generations=2, temperature=1.0, top_k=0, top_p=1.0)
    prompts = Dataset.from_dict({"prompt": PROMPTS * STEPS})
    if name == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        trainer = GRPOTrainer(lm, target_fraction, args=GRPOConfig(**common, **online), train_dataset=prompts)
        return deterministic_sampling(trainer, online["num_generations"])
    if name == "rloo":
        from trl import RLOOConfig, RLOOTrainer

        trainer = RLOOTrainer(lm, target_fraction, args=RLOOConfig(**common, **online), train_dataset=prompts)
        return deterministic_sampling(trainer, online["num_generations"])
    if name == "remax":
        from trl_extras import ReMaxConfig, ReMaxTrainer

        trainer = ReMaxTrainer(lm, target_fraction, args=ReMaxConfig(**common, **online), train_dataset=prompts)
        return deterministic_sampling(trainer, online["num_generations"])
    raise SystemExit(f"unknown trainer {name!r}")


def main(models: str, out: str, names: list[str]) -> None:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    for name in names:
        start = time.perf_counter()
        trainer = build(name, models, world_size, out)
        before = {key: value.detach().clone() for key, value in trainer.model.named_parameters()}
        trainer.train()
        if trainer.accelerator.is_main_process:
            after = {key: value.detach().clone() for key, value in trainer.model.named_parameters()}
            losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
            torch.save(
                {"before": before, "after": after, "losses": losses, "world_size": trainer.accelerator.num_processes},
                os.path.join(out, f"{name}.pt"),
            )
            print(f"{name}: {time.perf_counter() - start:.1f} s", flush=True)
        trainer.accelerator.wait_for_everyone()
    if world_size > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
