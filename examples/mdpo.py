"""mDPO on a tiny vision-language model built locally (no network needed), with synthetic images.

    python examples/mdpo.py                      # tiny Llava-style model
    python examples/mdpo.py --family qwen2_vl    # tiny Qwen2-VL-style model

Each image is a coloured square on a noisy background; the chosen answer names the colour, the rejected one a
wrong colour. mDPO adds to DPO a conditional term that prefers the chosen answer with the true image over the same
answer with a corrupted image (a random crop keeping at most 20% of it), and an anchor on the chosen reward. The
script prints the conditional reward margin r(m, q, y_w) - r(m', q, y_w) on held-out pairs before and after training.

Pass ``--model_name_or_path`` to train a real model (any ``AutoModelForImageTextToText`` with its processor).
"""

import argparse
import tempfile

import numpy as np
import torch
from datasets import Dataset
from PIL import Image, ImageDraw
from transformers import AutoModelForImageTextToText, AutoProcessor

from trl_extras import MDPOConfig, MDPOTrainer
from trl_extras.testing import build_tiny_vlm
from trl_extras.testing._vlm import load_tiny_vlm_processor

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220), "yellow": (230, 210, 40)}


def colour_square(colour: str, rng: np.random.Generator) -> Image.Image:
    background = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    image = Image.fromarray(background)
    left, top = (int(v) for v in rng.integers(4, 28, size=2))
    ImageDraw.Draw(image).rectangle((left, top, left + 31, top + 31), fill=COLOURS[colour])
    return image


def make_dataset(n: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    rows = {"images": [], "prompt": [], "chosen": [], "rejected": []}
    for i in range(n):
        colour = names[i % len(names)]
        wrong = names[(i + 1 + int(rng.integers(0, len(names) - 1))) % len(names)]
        rows["images"].append([colour_square(colour, rng)])
        rows["prompt"].append([{"role": "user", "content": "What colour is the square?"}])
        rows["chosen"].append([{"role": "assistant", "content": f"The square is {colour}."}])
        rows["rejected"].append([{"role": "assistant", "content": f"The square is {wrong}."}])
    return Dataset.from_dict(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", default=None)
    parser.add_argument("--family", default="llava", choices=["llava", "qwen2_vl"], help="tiny model family")
    parser.add_argument("--output_dir", default=None)
    parser.add_argument("--max_steps", type=int, default=20)
    parser.add_argument("--learning_rate", type=float, default=None, help="default: 1e-2 tiny, 1e-6 real model")
    parser.add_argument("--beta", type=float, default=None, help="default: 0.5 tiny, 0.1 (paper) real model")
    args = parser.parse_args()

    tiny = args.model_name_or_path is None
    workdir = tempfile.mkdtemp(prefix="trl-extras-mdpo-")
    if tiny:
        model_path = build_tiny_vlm(f"{workdir}/model", family=args.family)
        processor = load_tiny_vlm_processor(model_path)
    else:
        model_path = args.model_name_or_path
        processor = AutoProcessor.from_pretrained(model_path)
    model = AutoModelForImageTextToText.from_pretrained(model_path)

    config = MDPOConfig(
        output_dir=args.output_dir or f"{workdir}/out",
        max_steps=args.max_steps,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=args.learning_rate or (1e-2 if tiny else 1e-6),
        beta=args.beta or (0.5 if tiny else 0.1),
        max_length=None,
        logging_steps=5,
        report_to="none",
        bf16=torch.cuda.is_available(),
        save_strategy="no",
    )
    trainer = MDPOTrainer(
        model=model,
        args=config,
        train_dataset=make_dataset(16, seed=0),
        eval_dataset=make_dataset(8, seed=1),
        processing_class=processor,
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    for key in ("eval_mdpo/conditional_margin", "eval_mdpo/conditional_accuracy", "eval_rewards/accuracies"):
        print(f"{key}: before {before[key]:.3f}, after {after[key]:.3f}")


if __name__ == "__main__":
    main()
