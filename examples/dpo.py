"""Stock TRL DPO on the built-in offline default (a tiny model built locally; no network needed).

    python examples/dpo.py

Pass ``--model_name_or_path`` to train a real model instead.
"""

import argparse
import tempfile

import torch

from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

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
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="trl-extras-dpo-")
    model_path = args.model_name_or_path or build_tiny_causal_lm(f"{workdir}/model")
    model = AutoModelForCausalLM.from_pretrained(model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    dataset = Dataset.from_list(PAIRS * 8)
    config = DPOConfig(
        output_dir=args.output_dir or f"{workdir}/out",
        max_steps=args.max_steps,
        per_device_train_batch_size=4,
        learning_rate=5e-3,
        logging_steps=5,
        report_to="none",
        bf16=torch.cuda.is_available(),
        save_strategy="no",
    )
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    metrics = [log for log in trainer.state.log_history if "rewards/accuracies" in log]
    print(
        f"reward accuracy: first log {metrics[0]['rewards/accuracies']:.2f}, last log {metrics[-1]['rewards/accuracies']:.2f}"
    )


if __name__ == "__main__":
    main()
