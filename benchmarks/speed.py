"""Speed and memory of every trl-extras trainer against its stock TRL parent, as ratios measured in one run.

    python benchmarks/speed.py --threads 1 --docs docs/benchmarks.md     # full CPU run (about 10 minutes on 2 cores)
    python benchmarks/speed.py --preset gpu --docs docs/benchmarks.md    # on a GPU: ~0.6B-parameter models
    python benchmarks/speed.py --quick --output_dir /tmp/speed             # smoke run (CI): tiny sizes, one process

Each group runs a baseline and the trainers compared with it on the same model, batch and sequence lengths, built by
the per-trainer scripts' own build functions (``unlikelihood_speed.py``, ``mdpo_speed.py``, ``remax_speed.py``,
``diffusion_dpo_speed.py``, ``ppo_speed.py``), every configuration in its own fresh process (``harness.py``), interleaved, several
repeats; the tables give the median and spread (max - min) over repeats of the time per optimizer step, the tokens
per second and the peak memory, and each one's ratio to the group's baseline:

- preference pairs: DPO (baseline) vs Unlikelihood, with TRL's SFTTrainer (on the chosen responses, i.e. Preferred-FT)
  and RewardTrainer (on the pairs) on the same data for scale (stock trainers, no trl-extras counterpart);
- image-text pairs: DPO (baseline) vs mDPO, and mDPO with ``conditional_weight=0`` (DPO's forwards only);
- online RL: GRPO (baseline) vs RLOO and ReMax, the same number of generated tokens per step;
- ReMax vs PPO (baseline): the same prompts per step, one sample each;
- Diffusion-DPO: LoRA with a frozen copy of the UNet as the reference (baseline) vs LoRA whose reference is the same
  UNet with the adapter disabled (ours), and full fine-tuning with its reference copy for scale;
- PPO vs the last TRL release that shipped ``PPOTrainer`` (``ppo_speed.py``; needs ``--old_python``).

On a CUDA device the tables go to the ``speed-gpu`` section of ``--docs`` (the CPU tables stay), with the GPU named;
``--preset gpu`` sizes the language models at about 0.6B parameters (hidden 1536, 24 layers) so the GPU is busy.

``weights_mb`` counts the parameters every model the trainer holds (policy, reference, value model, reward models,
frozen pipeline parts), shared tensors once. ``--quick`` runs every configuration once, in this process, at tiny
sizes: a check that everything builds and trains, whose memory column means nothing.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))  # run by path: make the sibling scripts importable

import harness  # noqa: E402

THIS_FILE = str(Path(__file__).resolve())
DOCS_SECTION = "speed"
KEYS = ("median_step_s", "tokens_per_s", "peak_mem_mb", "weights_mb")
# Online RL also shows CPU time per step: generation-bound steps on a shared CPU swing most in wall time
RL_KEYS = ("median_step_s", "median_cpu_step_s", "tokens_per_s", "peak_mem_mb", "weights_mb")


# ---------------------------------------------------------------------------------------------------------------------
# what a child process builds


def _weights_mb(trainer) -> float:
    """Megabytes of parameters in every model the trainer holds, each tensor once."""
    import torch

    modules = []

    def collect(value):
        if isinstance(value, torch.nn.Module):
            modules.append(value)
        elif isinstance(value, (list, tuple)):
            for item in value:
                collect(item)
        elif hasattr(value, "components") and isinstance(value.components, dict):  # a diffusers pipeline
            collect(list(value.components.values()))

    for value in vars(trainer).values():
        collect(value)
    seen, total = set(), 0
    for module in modules:
        for parameter in module.parameters():
            if parameter.data_ptr() not in seen:
                seen.add(parameter.data_ptr())
                total += parameter.numel() * parameter.element_size()
    return total / 2**20


def build(builder: str, kwargs: dict[str, Any], count_tokens: bool = True):
    """Harness target: ``builder`` ("module:function" of a sibling script) builds the trainer; this adds the token
    count where the trainer does not keep one (TRL's online trainers count prompt and completion tokens themselves)
    and the held-weights figure."""
    module, _, function = builder.partition(":")
    trainer = getattr(importlib.import_module(module), function)(**kwargs)
    if count_tokens and trainer.args.include_num_input_tokens_seen in ("no", False, None):
        trainer.args.include_num_input_tokens_seen = "non_padding"
    own_extras = getattr(trainer, "benchmark_extras", None)  # what the builder reports (kept; weights_mb recomputed)
    trainer.benchmark_extras = lambda: {**(own_extras() if own_extras else {}), "weights_mb": _weights_mb(trainer)}
    return trainer


def build_sft_on_chosen(model_path: str, steps: int, batch_size: int, words: int, output_dir: str):
    """TRL's SFTTrainer on the chosen responses of ``unlikelihood_speed``'s pairs (Preferred-FT)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    from unlikelihood_speed import _dataset

    pairs = _dataset(steps * batch_size, words)
    data = pairs.map(lambda row: {"completion": row["chosen"]}, remove_columns=["chosen", "rejected"])
    return SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_path),
        args=harness.training_args(SFTConfig, output_dir, steps, batch_size, 1e-5, max_length=None),
        train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(model_path),
    )


def build_reward(model_path: str, steps: int, batch_size: int, words: int, output_dir: str):
    """TRL's RewardTrainer on ``unlikelihood_speed``'s pairs, the model with a one-label head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer
    from unlikelihood_speed import _dataset

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    return RewardTrainer(
        model=model,
        args=harness.training_args(RewardConfig, output_dir, steps, batch_size, 1e-5, max_length=None),
        train_dataset=_dataset(steps * batch_size, words),
        processing_class=tokenizer,
    )


# ---------------------------------------------------------------------------------------------------------------------
# the groups


def _causal_lm(workdir: str, name: str, hidden_size: int, num_layers: int) -> str:
    from trl_extras.testing import build_tiny_causal_lm

    heads = max(1, hidden_size // 64)
    return build_tiny_causal_lm(
        f"{workdir}/{name}",
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
    )


def groups(args, workdir: str) -> list[dict[str, Any]]:
    """Every comparison: title, setup line, baseline and configurations (name -> (builder, kwargs, count_tokens))."""
    import torch

    from trl_extras.testing import build_tiny_diffusion_pipeline, build_tiny_vlm

    out = []
    lm = _causal_lm(workdir, "lm", args.hidden_size, args.num_layers)
    pairs = dict(model_path=lm, steps=args.steps, batch_size=args.batch_size, words=args.words)
    out.append(
        {
            "title": "Preference pairs: Unlikelihood vs DPO",
            "setup": f"Llama hidden {args.hidden_size}, {args.num_layers} layers; {args.batch_size} pairs of about "
            f"{args.words} words per step (SFT: the chosen responses only).",
            "baseline": "dpo",
            "configurations": {
                "dpo": ("unlikelihood_speed:build_dpo", {**pairs, "output_dir": f"{workdir}/dpo"}, True),
                "unlikelihood": (
                    "unlikelihood_speed:build_unlikelihood",
                    {**pairs, "output_dir": f"{workdir}/ul"},
                    True,
                ),
                "sft (chosen)": ("speed:build_sft_on_chosen", {**pairs, "output_dir": f"{workdir}/sft"}, True),
                "reward": ("speed:build_reward", {**pairs, "output_dir": f"{workdir}/rm"}, True),
            },
        }
    )

    vlm = build_tiny_vlm(f"{workdir}/vlm", family="llava")
    vision = dict(model_path=vlm, steps=args.steps, batch_size=args.batch_size, family="llava")
    out.append(
        {
            "title": "Image-text pairs: mDPO vs DPO",
            "setup": f"tiny LLaVA; {args.batch_size} image-text pairs per step.",
            "baseline": "dpo",
            "configurations": {
                name: ("mdpo_speed:build", {"trainer_name": name, "output_dir": f"{workdir}/v-{name}", **vision}, True)
                for name in ("dpo", "mdpo", "mdpo_anchor_only")
            },
        }
    )

    rl_lm = _causal_lm(workdir, "rl-lm", args.rl_hidden_size, args.num_layers)
    half = args.rl_batch_size // 2

    def online(name, prompts, generations, **overrides):
        kwargs = dict(
            model_path=rl_lm,
            steps=args.steps,
            completion_length=args.completion_length,
            prompts_per_step=prompts,
            num_generations=generations,
            overrides=overrides,
            output_dir=f"{workdir}/{name}-{prompts}",
        )
        return (f"remax_speed:build_{name}", kwargs, False)

    rl_setup = (
        f"Llama hidden {args.rl_hidden_size}, {args.num_layers} layers; {args.completion_length} tokens per completion"
    )
    out.append(
        {
            "title": "Online RL: ReMax and RLOO vs GRPO",
            "setup": f"{rl_setup}; {args.rl_batch_size} sequences generated per step by each trainer (GRPO, RLOO: "
            f"{half} prompts x 2; ReMax: {half} prompts x (1 sample + 1 greedy), in one generate call); each at its default beta: GRPO and "
            "ReMax 0 (no reference model), RLOO 0.05 (a reference model).",
            "baseline": "grpo",
            "keys": RL_KEYS,
            "configurations": {
                "grpo": online("grpo", half, 2),
                "rloo": online("rloo", half, 2),
                "remax": online("remax", half, 1),
            },
        }
    )
    out.append(
        {
            "title": "Online RL: ReMax vs PPO",
            "setup": f"{rl_setup}; {args.rl_batch_size} prompts per step, one sample each; PPO trains a value model "
            "(one epoch per rollout), ReMax decodes a greedy completion; both keep a reference (ReMax beta=0.05).",
            "baseline": "ppo",
            "keys": RL_KEYS,
            "configurations": {
                "ppo": online("ppo", args.rl_batch_size, 1, num_ppo_epochs=1),
                "remax": online("remax", args.rl_batch_size, 1, beta=0.05),
            },
        }
    )

    sd = build_tiny_diffusion_pipeline(f"{workdir}/sd")
    bf16 = torch.cuda.is_available()
    diffusion = dict(pipeline_path=sd, resolution=32, steps=args.steps, batch_size=args.batch_size, bf16=bf16)
    out.append(
        {
            "title": "Diffusion-DPO: the reference as LoRA's disabled adapter vs a second UNet",
            "setup": f"tiny Stable Diffusion (32 x 32 images, cached latents); {args.batch_size} image pairs per "
            "step; LoRA rank 16. Baseline: the same LoRA training with a frozen copy of the UNet as the reference; "
            "full fine-tuning (with its reference copy) for scale.",
            "baseline": "lora_two_unets",
            "keys": ("median_step_s", "peak_mem_mb", "weights_mb"),
            "configurations": {
                mode: (
                    "diffusion_dpo_speed:build",
                    {"mode": mode, "output_dir": f"{workdir}/sd-{mode}", **diffusion},
                    False,
                )
                for mode in ("lora_two_unets", "lora_disabled_adapter", "full_two_unets")
            },
        }
    )
    return out


def ppo_legacy_group(args) -> tuple[dict[str, Any] | None, str]:
    """``ppo_speed.py``'s comparison: our PPOTrainer vs TRL 1.12's, in a virtualenv with ``trl==1.12.0``."""
    if not args.old_python:
        return None, "needs --old_python, a python with trl==1.12.0; see benchmarks/ppo_speed.py"
    from trl_extras.tasks import sentiment

    kwargs = {
        "policy": sentiment.default_policy_path(),
        "reward_model": sentiment.default_reward_model_path(),
        "prompts": list(sentiment.build_prompt_dataset()["prompt"]),
        "episodes": 8 if args.quick else 256,
        "batch_size": 4 if args.quick else 16,
        "completion_length": 4 if args.quick else 24,
        "num_ppo_epochs": 1 if args.quick else 4,
        "learning_rate": 1e-3,
        "kl_coef": 0.05,
    }
    return {
        "title": "PPO vs the last TRL release with PPOTrainer (1.12.0)",
        "setup": f"the sentiment task's tiny SFT policy and reward model (which also initialises the value model); "
        f"{kwargs['episodes']} episodes, {kwargs['batch_size']} per rollout, PPO epochs: {kwargs['num_ppo_epochs']}, "
        f"{kwargs['completion_length']} tokens per completion. `s_per_episode` is train() time over episodes (the two "
        "trainers' steps differ); `reward_after` the ground-truth reward after training.",
        "baseline": "trl 1.12 PPOTrainer",
        "keys": ("s_per_episode", "peak_mem_mb", "weights_mb", "reward_after"),
        "warmup_steps": 0,
        "configurations": {
            "trl 1.12 PPOTrainer": ("ppo_speed:build_old", kwargs, False, args.old_python),
            "trl-extras PPOTrainer": ("ppo_speed:build_ours", kwargs, False),
        },
    }, ""


# ---------------------------------------------------------------------------------------------------------------------
# measuring and reporting


def measure(group: dict[str, Any], repeats: int, in_process: bool, threads: int | None):
    targets = {}
    for name, (builder, kwargs, count, *python) in group["configurations"].items():
        target_kwargs = {"builder": builder, "kwargs": kwargs, "count_tokens": count}
        if python:  # another interpreter (an older TRL): the harness reads this key
            target_kwargs["__python__"] = python[0]
        targets[name] = (f"{THIS_FILE}:build", target_kwargs)
    warmup = group.get("warmup_steps", 2)
    if not in_process:
        env = {"OMP_NUM_THREADS": str(threads)} if threads else None
        return harness.compare(targets, repeats=repeats, env=env, warmup_steps=warmup)
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    results = {}
    try:  # the harness's child function, called here: a smoke run, not a measurement of memory
        for name, (target, kwargs) in targets.items():
            kwargs = dict(kwargs)
            other_python = kwargs.pop("__python__", None)
            if other_python:  # cannot run in this process
                results[name] = [
                    harness.measure_in_subprocess(target, kwargs, warmup_steps=warmup, python=other_python)
                ]
            else:
                results[name] = [harness._child(target, kwargs, min(warmup, 1))]
    finally:
        torch.set_num_threads(previous)
    return results


def read_docs_section(path: str | Path, section: str) -> str:
    """The text between ``<!-- {section}:begin -->`` and ``<!-- {section}:end -->`` in ``path`` ("" when absent)."""
    text = Path(path).read_text() if Path(path).exists() else ""
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    if begin not in text or end not in text:
        return ""
    return text.split(begin, 1)[1].split(end, 1)[0].strip("\n")


def merge_group_blocks(section: str, blocks: dict[str, str]) -> str:
    """Replace the ``#### <title>`` blocks of a speed section whose titles ``blocks`` names (each block runs to the
    next ``#### `` heading or a line starting with "PPO vs the last TRL"), keep the other blocks and their order, and
    append the new titles at the end."""
    head, found, order = [], {}, []
    current: list[str] | None = None
    tail: list[str] = []
    for line in section.splitlines():
        if line.startswith("#### "):
            title = line[len("#### ") :].strip()
            order.append(title)
            current = found.setdefault(title, [])
        elif line.startswith("PPO vs the last TRL with PPOTrainer: not run"):
            current = tail
        if current is None:
            head.append(line)
        else:
            current.append(line)
    parts = ["\n".join(head).strip()]
    for title in order:
        parts.append(blocks.get(title, "\n".join(found[title])).strip())
    parts += [block.strip() for title, block in blocks.items() if title not in found]
    parts.append("\n".join(tail).strip())
    return "\n\n".join(part for part in parts if part) + "\n"


def is_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, one repeat, in this process")
    parser.add_argument(
        "--preset",
        choices=("cpu", "gpu"),
        default="cpu",
        help="gpu: ~0.6B-parameter language models, longer sequences",
    )
    parser.add_argument("--hidden_size", type=int, default=512, help="offline language models")
    parser.add_argument("--rl_hidden_size", type=int, default=256, help="online RL models")
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=8, help="pairs (offline, vision, diffusion) per step")
    parser.add_argument("--rl_batch_size", type=int, default=8, help="sequences generated per step (online RL)")
    parser.add_argument("--words", type=int, default=24)
    parser.add_argument("--completion_length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run, the first 2 not timed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (OMP_NUM_THREADS)")
    parser.add_argument("--old_python", default=None, help="python with trl==1.12.0, for PPO vs TRL's old PPO")
    parser.add_argument("--groups", default=None, help="comma-separated title prefixes to run (default: all)")
    parser.add_argument("--output_dir", default="outputs/speed")
    parser.add_argument("--docs", default=None, help="markdown file whose speed section to replace")
    if parser.parse_known_args(argv)[0].preset == "gpu":  # new defaults; flags given explicitly still win
        parser.set_defaults(hidden_size=1536, rl_hidden_size=1536, num_layers=24, words=256, completion_length=256)
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden_size = args.rl_hidden_size = 64
        args.num_layers, args.batch_size, args.rl_batch_size, args.words = 2, 2, 2, 4
        args.completion_length, args.steps, args.repeats, args.threads = 4, 2, 1, 1
    if args.rl_batch_size % 2:
        parser.error("--rl_batch_size must be even (GRPO and RLOO need groups of 2)")

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="trl-extras-speed-")
    comparisons = groups(args, workdir)
    legacy, why_not = ppo_legacy_group(args)
    if legacy is not None:
        comparisons.append(legacy)
    if args.groups:
        wanted = [prefix.strip().lower() for prefix in args.groups.split(",")]
        comparisons = [g for g in comparisons if any(g["title"].lower().startswith(w) for w in wanted)]

    command = "python benchmarks/speed.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    sections = [f"Reproduce: `{command.strip()}`", ""]
    if args.quick:
        sections += [
            "Quick smoke run: one repeat per configuration, all in one process; memory is not comparable.",
            "",
        ]
    everything, blocks = {}, {}
    for group in comparisons:
        results = measure(group, args.repeats, args.quick, args.threads)
        everything[group["title"]] = {"baseline": group["baseline"], "setup": group["setup"], "results": results}
        table = harness.ratio_table(results, baseline=group["baseline"], keys=group.get("keys", KEYS))
        blocks[group["title"]] = f"#### {group['title']}\n\n{group['setup']}\n\n{table}"
        sections += [blocks[group["title"]], ""]
        print(f"\n#### {group['title']}\n{table}", flush=True)
    if legacy is None:
        sections += [f"PPO vs the last TRL with PPOTrainer: not run ({why_not})."]
    text = "\n".join(sections).strip() + "\n"
    (output_dir / "speed.md").write_text(text)
    (output_dir / "speed.json").write_text(json.dumps({"args": vars(args), "groups": everything}, indent=2))
    if args.docs:
        import torch
        from frontier import write_docs_section

        section = DOCS_SECTION + ("-gpu" if torch.cuda.is_available() else "")
        if args.groups:  # a subset: replace only its tables in the section, each with the command that made it
            rerun = {title: f"{block}\n\nThis table alone: `{command.strip()}`" for title, block in blocks.items()}
            text = merge_group_blocks(read_docs_section(args.docs, section), rerun)
        write_docs_section(args.docs, section, text)
    return everything


if __name__ == "__main__":
    main()
