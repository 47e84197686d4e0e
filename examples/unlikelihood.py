"""Unlikelihood training (trl-extras) on the built-in offline default (a tiny model built locally; no network needed).

    python examples/unlikelihood.py                                  # token level (Welleck et al. 2019)
    python examples/unlikelihood.py --unlikelihood_type sequence     # the DPO paper's unbounded baseline

Pass ``--model_name_or_path`` to train a real model instead. The script is examples/dpo.py with
``DPOConfig``/``DPOTrainer`` replaced by ``UnlikelihoodConfig``/``UnlikelihoodTrainer``; it prints the log-probability
of the chosen and rejected completions before and after training.
"""

import argparse
import tempfile

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_extras import UnlikelihoodConfig, UnlikelihoodTrainer
from trl_extras.testing import build_tiny_causal_lm

PAIRS = [
    {"prompt": "The movie was", "chosen": " great and fun.", "rejected": " bad and dull."},
    {"prompt": "I thought the film was", "chosen": " wonderful.", "rejected": " terrible."},
    {"prompt": "The acting was", "chosen": " superb.", "rejected": " awful."},
    {"prompt": "Overall the story was", "chosen": " lovely.", "rejected": " boring."},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", default=None)
    parser.add_argument("--output_dir", default=None)
    parser.add_argument("--max_steps", type=int, default=20)
    parser.add_argument("--unlikelihood_type", choices=["token", "sequence"], default="token")
    parser.add_argument("--rejected_weight", type=float, default=1.0)
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="trl-extras-unlikelihood-")
    model_path = args.model_name_or_path or build_tiny_causal_lm(f"{workdir}/model")
    model = AutoModelForCausalLM.from_pretrained(model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    dataset = Dataset.from_list(PAIRS * 8)
    config = UnlikelihoodConfig(
        output_dir=args.output_dir or f"{workdir}/out",
        unlikelihood_type=args.unlikelihood_type,
        rejected_weight=args.rejected_weight,
        max_steps=args.max_steps,
        per_device_train_batch_size=4,
        learning_rate=5e-3,
        logging_steps=5,
        report_to="none",
        bf16=torch.cuda.is_available(),
        save_strategy="no",
    )
    trainer = UnlikelihoodTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    eval_dataset = Dataset.from_list(PAIRS)
    before = trainer.evaluate(eval_dataset)
    trainer.train()
    after = trainer.evaluate(eval_dataset)
    for name in ("chosen", "rejected"):
        key = f"eval_logps/{name}"
        print(f"log p({name} | prompt), mean over pairs: {before[key]:.2f} before, {after[key]:.2f} after")
    margin = {
        run: logs["eval_logps/chosen"] - logs["eval_logps/rejected"]
        for run, logs in (("before", before), ("after", after))
    }
    print(f"margin log p(chosen) - log p(rejected): {margin['before']:.2f} before, {margin['after']:.2f} after")


if __name__ == "__main__":
    main()
