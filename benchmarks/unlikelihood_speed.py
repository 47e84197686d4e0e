"""Step time and peak memory: UnlikelihoodTrainer vs stock TRL DPOTrainer, same model, data and batch.

    python benchmarks/unlikelihood_speed.py                       # CPU-sized defaults
    python benchmarks/unlikelihood_speed.py --hidden_size 1024 --num_layers 8 --batch_size 16   # a GPU

Each trainer runs in its own fresh process (``benchmarks/harness.py``); the table gives the median step time and peak
memory of each, and their ratio to DPO, plus the weights each trainer holds (policy, and DPO's reference copy). DPO keeps a frozen reference copy of the policy and runs it forward on every
step; unlikelihood training has neither, so both ratios should come out below 1. The model is the offline tiny Llama
scaled up through ``build_tiny_causal_lm``'s config overrides, so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run by path: make `harness` importable

from harness import compare, ratio_table, training_args  # noqa: E402

THIS_FILE = str(Path(__file__).resolve())


def _dataset(num_pairs: int, words: int):
    from datasets import Dataset

    good = "the film was great fun and the cast was superb and the story lovely".split()
    bad = "the film was dull and boring and the acting awful and the plot thin".split()

    def text(vocab, i):
        return " " + " ".join(vocab[(i + k) % len(vocab)] for k in range(words)) + "."

    return Dataset.from_list(
        [
            {"prompt": f"Review {i}: what did you think?", "chosen": text(good, i), "rejected": text(bad, i)}
            for i in range(num_pairs)
        ]
    )


def _build(trainer_name: str, model_path: str, steps: int, batch_size: int, words: int, output_dir: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if trainer_name == "dpo":
        from trl import DPOConfig as Config
        from trl import DPOTrainer as Trainer
    else:
        from trl_extras import UnlikelihoodConfig as Config
        from trl_extras import UnlikelihoodTrainer as Trainer

    torch.manual_seed(0)
    args = training_args(Config, output_dir, steps, batch_size, 1e-5, max_length=None)
    trainer = Trainer(
        model=AutoModelForCausalLM.from_pretrained(model_path),
        args=args,
        train_dataset=_dataset(steps * batch_size, words),
        processing_class=AutoTokenizer.from_pretrained(model_path),
    )

    def benchmark_extras():  # read by the harness after training
        held = [m for m in (trainer.model, trainer.ref_model) if m is not None]
        weights = sum(p.numel() * p.element_size() for m in held for p in m.parameters())
        return {"models_held": len(held), "weights_mb": weights / 2**20}

    trainer.benchmark_extras = benchmark_extras
    return trainer


def build_dpo(**kwargs):
    return _build("dpo", **kwargs)


def build_unlikelihood(**kwargs):
    return _build("unlikelihood", **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden_size", type=int, default=512)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--words", type=int, default=24, help="words per completion (about 2-3 tokens each)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1, help="runs per trainer, interleaved")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    args = parser.parse_args()

    from trl_extras.testing import build_tiny_causal_lm

    workdir = tempfile.mkdtemp(prefix="trl-extras-bench-ul-")
    model_path = build_tiny_causal_lm(
        f"{workdir}/model",
        hidden_size=args.hidden_size,
        intermediate_size=2 * args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=max(1, args.hidden_size // 64),
        num_key_value_heads=max(1, args.hidden_size // 64),
    )
    common = dict(model_path=model_path, steps=args.steps, batch_size=args.batch_size, words=args.words)
    results = compare(
        {
            "dpo": (f"{THIS_FILE}:build_dpo", {**common, "output_dir": f"{workdir}/dpo"}),
            "unlikelihood": (f"{THIS_FILE}:build_unlikelihood", {**common, "output_dir": f"{workdir}/ul"}),
        },
        repeats=args.repeats,
    )
    print(
        f"model: Llama hidden {args.hidden_size}, {args.num_layers} layers; batch {args.batch_size} pairs; "
        f"{args.steps} steps (first 2 dropped)"
    )
    print(ratio_table(results, baseline="dpo", keys=("median_step_s", "peak_mem_mb", "weights_mb")))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
