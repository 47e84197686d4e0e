"""Step time and peak memory: MDPOTrainer vs stock TRL DPOTrainer on the same tiny VLM and image pairs.

    python benchmarks/mdpo_speed.py [--family llava|qwen2_vl] [--batch_size 8] [--steps 12] [--repeats 3]

mDPO runs the policy and the reference on 3B rows (chosen, rejected, chosen with the corrupted image) per step where
DPO runs 2B, in one forward each, so the expected step-time ratio is about 1.5; "mdpo_anchor_only"
(conditional_weight=0) runs DPO's forwards only and should match DPO.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run by path: make `harness` importable

from harness import compare, ratio_table  # noqa: E402

THIS_FILE = str(Path(__file__).resolve())


def build(trainer_name: str, model_path: str, steps: int, batch_size: int, output_dir: str, family: str):
    import numpy as np
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoModelForImageTextToText
    from trl import DPOConfig, DPOTrainer

    from trl_extras import MDPOConfig, MDPOTrainer
    from trl_extras.testing._vlm import load_tiny_vlm_processor

    rng = np.random.default_rng(0)
    n = batch_size * steps
    dataset = Dataset.from_dict(
        {
            "images": [[Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))] for _ in range(n)],
            "prompt": [[{"role": "user", "content": "Describe the picture in a few words."}]] * n,
            "chosen": [[{"role": "assistant", "content": "Coloured noise, no objects."}]] * n,
            "rejected": [[{"role": "assistant", "content": "A dog on a sofa."}]] * n,
        }
    )
    common = dict(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=1e-4,
        max_length=None,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1000,
        gradient_checkpointing=False,
    )
    if trainer_name == "dpo":
        trainer_class, args = DPOTrainer, DPOConfig(**common)
    elif trainer_name == "mdpo":
        trainer_class, args = MDPOTrainer, MDPOConfig(**common)
    else:
        trainer_class, args = MDPOTrainer, MDPOConfig(**common, conditional_weight=0.0)
    return trainer_class(
        model=AutoModelForImageTextToText.from_pretrained(model_path),
        args=args,
        train_dataset=dataset,
        processing_class=load_tiny_vlm_processor(model_path),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="llava", choices=["llava", "qwen2_vl"])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from trl_extras.testing import build_tiny_vlm

    workdir = tempfile.mkdtemp(prefix="trl-extras-bench-mdpo-")
    model_path = build_tiny_vlm(f"{workdir}/model", family=args.family)
    kwargs = dict(model_path=model_path, steps=args.steps, batch_size=args.batch_size, family=args.family)
    configurations = {
        name: (f"{THIS_FILE}:build", {"trainer_name": name, "output_dir": f"{workdir}/{name}", **kwargs})
        for name in ("dpo", "mdpo", "mdpo_anchor_only")
    }
    results = compare(configurations, repeats=args.repeats)
    print(ratio_table(results, baseline="dpo"))


if __name__ == "__main__":
    main()
