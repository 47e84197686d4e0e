"""The DPO paper's reward-KL frontier in miniature, on the built-in offline sentiment task.

    python benchmarks/frontier.py --workers 2 --docs docs/benchmarks.md --plot docs/frontier.png   # full, ~6 min on 2 cores
    python benchmarks/frontier.py --quick --output_dir /tmp/frontier                                # smoke run (CI)
    python benchmarks/frontier.py --equal_steps --methods SFT,PPO,ReMax,GRPO,RLOO --workers 2 \
        --docs docs/benchmarks.md --plot docs/frontier-equal-steps.png                                # equal steps

Two comparisons of the online methods. By default they get equal rollouts: each samples ``online_steps`` batches,
and PPO optimises each batch ``ppo_epochs`` times, so it takes ``ppo_epochs`` times the optimizer steps of ReMax,
GRPO and RLOO. ``--equal_steps`` runs PPO with one epoch per rollout instead, so every online method takes the same
optimizer steps on the same number of sampled sequences (its own docs section, ``frontier-equal-steps``). In both,
PPO's critic starts from the learned reward model (the classic recipe).

Rafailov et al. 2023 (https://arxiv.org/abs/2305.18290), figure 2: on controlled-sentiment generation, with a
ground-truth reward, plot the reward each method reaches against its KL to the SFT model, over the settings of each
method's conservativeness knob. Here, on ``trl_extras.tasks.sentiment`` (a lexicon reward in place of the paper's
sentiment classifier, a 0.2M-parameter policy in place of GPT-2):

1. SFT: the task's cached tiny policy (``sentiment.default_policy_path()``), the reference for every KL below.
2. Reward model: TRL's ``RewardTrainer`` (Bradley-Terry) on the ground-truth-labelled preference pairs, from the SFT
   weights. Its held-out pairwise accuracy is reported.
3. From the SFT policy, each method with its knob swept over a few values and several seeds:
   DPO (``beta``), Unlikelihood (``rejected_weight``, the paper's alpha), Preferred-FT (TRL's ``SFTTrainer`` on the
   chosen responses; knob: training steps), and, trained against the learned reward model as in RLHF, PPO
   (``kl_coef``), ReMax, GRPO and RLOO (``beta``). Best-of-N samples N completions from the SFT model and keeps the
   one the learned reward model prefers (``trl_extras.best_of_n``, in ``trl_extras/sampling.py``), for several N.
4. Evaluation, always with the ground truth, on the held-out review openings: the mean ground-truth reward of
   completions sampled from the policy, and the Monte Carlo sequence KL to the SFT model on those same samples
   (``frontier_metrics.sequence_kl``). Best-of-N's KL is estimated from the reward-model scores of its draws
   (``frontier_metrics.best_of_n_kl_estimate``) and also given analytically, log N - (N - 1) / N.

Writes ``results.json`` (every run), ``frontier.md`` (the table: mean and standard deviation over seeds) and
``frontier.png`` to ``--output_dir``; ``--docs`` also replaces the frontier section of that markdown file and
``--plot`` writes the figure there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
import traceback
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run by path: make `frontier_metrics` importable

import frontier_metrics as fm  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCS_SECTION = "frontier"
EQUAL_STEPS_DOCS_SECTION = "frontier-equal-steps"


# ---------------------------------------------------------------------------------------------------------------------
# what runs


@dataclass(frozen=True)
class Method:
    name: str
    knob: str  # the swept config field ("steps" for Preferred-FT, "n" for best-of-N)
    values: tuple  # full mode
    quick_values: tuple
    kind: str  # "offline" (preference pairs), "online" (RL on the learned reward), "sampling", "reference"


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("SFT", "-", (None,), (None,), "reference"),
        Method("Best-of-N", "n", (2, 4, 8, 16, 32, 64), (2,), "sampling"),
        Method("DPO", "beta", (0.03, 0.1, 0.3, 1.0), (0.1,), "offline"),
        Method("Unlikelihood", "rejected_weight", (0.03, 0.1, 0.3), (0.1,), "offline"),
        Method("Preferred-FT", "steps", (30, 60, 120), (2,), "offline"),
        Method("PPO", "kl_coef", (0.1, 0.3, 1.0), (0.3,), "online"),
        Method("ReMax", "beta", (0.01, 0.1, 1.0), (0.1,), "online"),
        Method("GRPO", "beta", (0.01, 0.1, 1.0), (0.1,), "online"),
        Method("RLOO", "beta", (0.01, 0.1, 1.0), (0.1,), "online"),
    ]
}


@dataclass
class Sizes:
    seeds: int = 3
    offline_steps: int = 60  # DPO, Unlikelihood (Preferred-FT's steps are its knob)
    online_steps: int = 80  # optimizer steps of GRPO, RLOO, ReMax; PPO gets the same number of rollouts
    batch_size: int = 16  # pairs (offline) or sequences (online) per optimizer step
    num_generations: int = 4  # GRPO, RLOO: samples per prompt
    ppo_epochs: int = 4
    offline_lr: float = 5e-4
    online_lr: float = 5e-4
    max_completion_length: int = 32
    reward_model_steps: int = 120
    reward_model_lr: float = 3e-3
    preference_rows: int = 256
    eval_prompts: int = 16  # held-out openings (the task has 16)
    eval_samples: int = 16  # completions per opening: 16 x 16 = 256 samples per evaluation
    bon_batch_prompts: int = 16


QUICK_SIZES = Sizes(
    seeds=1,
    offline_steps=2,
    online_steps=2,
    batch_size=4,
    num_generations=2,
    ppo_epochs=1,
    max_completion_length=8,
    reward_model_steps=2,
    preference_rows=16,
    eval_prompts=4,
    eval_samples=2,
    bon_batch_prompts=4,
)


# ---------------------------------------------------------------------------------------------------------------------
# one run (in a worker process)


@dataclass
class Setup:
    sft_path: str
    reward_model_path: str
    output_dir: str
    sizes: Sizes = field(default_factory=Sizes)


class LearnedReward:
    """The learned reward model as a TRL reward function: ``prompt + completion + EOS``, scored as it was trained.

    RewardTrainer appends EOS to every training text and the model reads its score at the last token, so scoring a
    completion without EOS (as TRL's trainers do with a reward-model path) would read the score head where it was
    never trained.
    """

    def __init__(self, path: str):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        self.__name__ = "learned_reward"
        self._torch = torch

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        texts = [p + c + self.tokenizer.eos_token for p, c in zip(prompts, completions)]
        scores = []
        with self._torch.no_grad():
            for start in range(0, len(texts), 256):
                inputs = self.tokenizer(
                    texts[start : start + 256],
                    return_tensors="pt",
                    padding=True,
                    padding_side="right",
                    add_special_tokens=False,
                )
                scores += self.model(**inputs).logits[:, 0].float().tolist()
        return scores


def _training_args(config_class, setup: Setup, run_name: str, seed: int, steps: int, lr: float, **kwargs):
    import torch

    return config_class(
        output_dir=os.path.join(setup.output_dir, "runs", run_name),
        max_steps=steps,
        learning_rate=lr,
        per_device_train_batch_size=setup.sizes.batch_size,
        seed=seed,
        bf16=torch.cuda.is_available(),
        report_to="none",
        save_strategy="no",
        logging_steps=max(1, steps // 4),
        disable_tqdm=True,
        **kwargs,
    )


def _preference_dataset(setup: Setup):
    from trl_extras.tasks import sentiment

    return sentiment.build_preference_dataset(setup.sizes.preference_rows, seed=0)


def train_policy(method: Method, value, seed: int, setup: Setup):
    """Train one policy from the SFT model; returns the trained model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_extras.tasks import sentiment

    sizes = setup.sizes
    run_name = f"{method.name}-{value}-{seed}"
    tokenizer = AutoTokenizer.from_pretrained(setup.sft_path)
    policy = AutoModelForCausalLM.from_pretrained(setup.sft_path)

    if method.kind == "offline":
        if method.name == "Preferred-FT":
            from trl import SFTConfig, SFTTrainer

            chosen = _preference_dataset(setup).map(
                lambda row: {"prompt": row["prompt"], "completion": row["chosen"]},
                remove_columns=["chosen", "rejected"],
            )
            args = _training_args(SFTConfig, setup, run_name, seed, int(value), sizes.offline_lr, max_length=None)
            trainer = SFTTrainer(model=policy, args=args, train_dataset=chosen, processing_class=tokenizer)
        else:
            if method.name == "DPO":
                from trl import DPOConfig as Config
                from trl import DPOTrainer as Trainer
            else:
                from trl_extras import UnlikelihoodConfig as Config
                from trl_extras import UnlikelihoodTrainer as Trainer
            args = _training_args(
                Config,
                setup,
                run_name,
                seed,
                sizes.offline_steps,
                sizes.offline_lr,
                max_length=None,
                **{method.knob: value},
            )
            trainer = Trainer(
                model=policy, args=args, train_dataset=_preference_dataset(setup), processing_class=tokenizer
            )
    else:  # online: RL against the learned reward model
        reward = LearnedReward(setup.reward_model_path)
        prompts = sentiment.build_prompt_dataset()
        common = dict(max_completion_length=sizes.max_completion_length, **{method.knob: value})
        extra: dict[str, Any] = {}
        steps, lr = sizes.online_steps, sizes.online_lr
        if method.name == "PPO":
            from trl_extras import PPOConfig as Config
            from trl_extras import PPOTrainer as Trainer

            # one completion per prompt; the same number of rollouts as the others, each optimised ppo_epochs times
            # lam=0.95: TRL 1.12's recipe for a critic that starts from the RM (our default 1.0 suits a fresh critic)
            common.update(num_ppo_epochs=sizes.ppo_epochs, lam=0.95)
            steps = sizes.online_steps * sizes.ppo_epochs
            extra["value_model"] = setup.reward_model_path  # the classic recipe: the critic starts from the RM
        elif method.name == "ReMax":
            from trl_extras import ReMaxConfig as Config
            from trl_extras import ReMaxTrainer as Trainer

            common.update(num_generations=1)
        elif method.name == "GRPO":
            from trl import GRPOConfig as Config
            from trl import GRPOTrainer as Trainer

            common.update(num_generations=sizes.num_generations)
        else:
            from trl import RLOOConfig as Config
            from trl import RLOOTrainer as Trainer

            common.update(num_generations=sizes.num_generations)
        args = _training_args(Config, setup, run_name, seed, steps, lr, **common)
        trainer = Trainer(
            model=policy,
            reward_funcs=reward,
            args=args,
            train_dataset=prompts,
            processing_class=tokenizer,
            **extra,
        )
    trainer.train()
    return trainer.model, tokenizer


def evaluate_policy(policy, reference, tokenizer, setup: Setup, seed: int, reward=None) -> dict[str, float]:
    """Ground-truth reward and Monte Carlo sequence KL to ``reference`` on completions sampled from ``policy``."""
    from trl_extras.tasks import sentiment

    sizes = setup.sizes
    prompts = sentiment.eval_prompts()[: sizes.eval_prompts]
    samples = fm.sample_completions(
        policy,
        tokenizer,
        prompts,
        num_samples=sizes.eval_samples,
        max_new_tokens=sizes.max_completion_length,
        seed=1000 + seed,
    )
    batch = (samples["input_ids"], samples["attention_mask"], samples["completion_mask"])
    kl = fm.sequence_kl(fm.completion_log_probs(policy, *batch), fm.completion_log_probs(reference, *batch), batch[2])
    ground_truth = sentiment.ground_truth_reward(samples["completions"])
    result = {
        "reward": sum(ground_truth) / len(ground_truth),
        "kl": float(kl.mean()),
        "length": float(samples["completion_mask"].sum(-1).float().mean()),
    }
    if reward is not None:
        scores = reward(samples["prompts"], samples["completions"])
        result["rm_reward"] = sum(scores) / len(scores)
    return result


def evaluate_best_of_n(n: int, seed: int, setup: Setup) -> dict[str, float]:
    """Best-of-n from the SFT model under the learned reward; KL estimated from the draws and given analytically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_extras.sampling import best_of_n, best_of_n_kl
    from trl_extras.tasks import sentiment

    sizes = setup.sizes
    tokenizer = AutoTokenizer.from_pretrained(setup.sft_path)
    policy = AutoModelForCausalLM.from_pretrained(setup.sft_path)
    reward = LearnedReward(setup.reward_model_path)
    prompts = sentiment.eval_prompts()[: sizes.eval_prompts]
    repeated = [prompt for prompt in prompts for _ in range(sizes.eval_samples)]
    results = best_of_n(
        policy,
        tokenizer,
        repeated,
        reward_funcs=reward,
        n=n,
        batch_size=sizes.bon_batch_prompts,
        max_new_tokens=sizes.max_completion_length,
        seed=seed,
        top_k=0,  # sample the SFT policy itself, untruncated
        eos_token_id=tokenizer.eos_token_id,
    )
    pooled: dict[str, list[float]] = defaultdict(list)  # every draw for an opening is an independent SFT sample
    for row in results:
        pooled[row["prompt"]] += row["rewards"]
    best = [row["completion"] for row in results]
    ground_truth = sentiment.ground_truth_reward(best)
    return {
        "reward": sum(ground_truth) / len(ground_truth),
        "kl": sum(fm.best_of_n_kl_estimate(r, n) for r in pooled.values()) / len(pooled),
        "kl_analytic": best_of_n_kl(n),
        "rm_reward": sum(row["reward"] for row in results) / len(results),
    }


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One (method, knob value, seed): train if needed, evaluate; errors are returned, not raised."""
    import torch

    setup = Setup(**{**job["setup"], "sizes": Sizes(**job["setup"]["sizes"])})
    method, value, seed = METHODS[job["method"]], job["value"], job["seed"]
    record = {"method": method.name, "knob": method.knob, "value": value, "seed": seed}
    start = time.perf_counter()
    try:
        torch.manual_seed(seed)
        if method.kind == "sampling":
            record.update(evaluate_best_of_n(int(value), seed, setup))
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            reference = AutoModelForCausalLM.from_pretrained(setup.sft_path)
            if method.kind == "reference":
                policy, tokenizer = reference, AutoTokenizer.from_pretrained(setup.sft_path)
            else:
                policy, tokenizer = train_policy(method, value, seed, setup)
            record.update(
                evaluate_policy(policy, reference, tokenizer, setup, seed, LearnedReward(setup.reward_model_path))
            )
    except Exception:  # noqa: BLE001 -- one failed run must not lose a 20-minute sweep; it is reported
        record["error"] = traceback.format_exc(limit=8)
    record["seconds"] = time.perf_counter() - start
    return record


def _init_worker() -> None:
    import torch

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)  # tiny models: one thread per worker process beats sharing cores


# ---------------------------------------------------------------------------------------------------------------------
# the reward model (once, before the sweep)


def train_reward_model(sft_path: str, output_dir: str, sizes: Sizes) -> dict[str, Any]:
    """RewardTrainer on the ground-truth-labelled pairs, from the SFT weights; returns its path and accuracies."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from trl_extras.tasks import sentiment
    from trl_extras.tasks.evaluation import pairwise_accuracy

    path = os.path.join(output_dir, "reward_model")
    tokenizer = AutoTokenizer.from_pretrained(sft_path)
    args = RewardConfig(
        output_dir=path,
        max_steps=sizes.reward_model_steps,
        learning_rate=sizes.reward_model_lr,
        per_device_train_batch_size=sizes.batch_size,
        seed=0,
        bf16=torch.cuda.is_available(),
        report_to="none",
        save_strategy="no",
        logging_steps=max(1, sizes.reward_model_steps // 4),
        disable_tqdm=True,
    )
    trainer = RewardTrainer(
        model=sft_path,
        args=args,
        train_dataset=sentiment.build_preference_dataset(sizes.preference_rows, seed=0),
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model(path)
    tokenizer.save_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    held_out = sentiment.build_preference_dataset(64, seed=0, split="test").to_list()
    return {
        "path": path,
        "held_out_accuracy": pairwise_accuracy(model, tokenizer, held_out),
        "steps": sizes.reward_model_steps,
    }


# ---------------------------------------------------------------------------------------------------------------------
# the sweep, the table, the plot


def make_jobs(methods: list[Method], sizes: Sizes, quick: bool) -> list[dict[str, Any]]:
    jobs = []
    for seed in range(sizes.seeds):
        for method in methods:
            for value in method.quick_values if quick else method.values:
                jobs.append({"method": method.name, "value": value, "seed": seed})
    return jobs


def run_sweep(jobs: list[dict[str, Any]], setup: Setup, workers: int) -> list[dict[str, Any]]:
    payload = [{**job, "setup": {**asdict(setup)}} for job in jobs]
    if workers <= 1:
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny models: a second intra-op thread only waits for a busy core
        try:
            return [run_job(job) for job in payload]
        finally:
            torch.set_num_threads(previous)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker) as pool:
        return list(pool.map(run_job, payload))


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, knob value): mean and standard deviation over seeds of every measured number."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        if "error" not in run:
            groups[(run["method"], run["value"])].append(run)
    order = {name: i for i, name in enumerate(METHODS)}
    rows = []
    for (method, value), group in sorted(
        groups.items(), key=lambda item: (order[item[0][0]], -math.inf if item[0][1] is None else item[0][1])
    ):
        row = {"method": method, "knob": group[0]["knob"], "value": value, "seeds": len(group)}
        for key in ("kl", "reward", "rm_reward", "kl_analytic", "seconds"):
            if key in group[0]:
                row[key], row[f"{key}_std"] = fm.mean_and_spread([run[key] for run in group])
        rows.append(row)
    return rows


def _value_text(row) -> str:
    if row["value"] is None:
        return "-"
    return f"{row['knob']}={row['value']:g}"


def frontier_table(rows: list[dict[str, Any]]) -> str:
    """The markdown table: mean ± standard deviation over seeds."""

    def pm(row, key, digits=3):
        if key not in row:
            return "-"
        return f"{row[key]:.{digits}f} ± {row[f'{key}_std']:.{digits}f}"

    lines = [
        "| method | setting | seeds | KL to SFT (nats) | ground-truth reward | learned-RM reward | time per run (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        kl = pm(row, "kl", 2)
        if "kl_analytic" in row:
            kl += f" (analytic {row['kl_analytic']:.2f})"
        lines.append(
            f"| {row['method']} | {_value_text(row)} | {row['seeds']} | {kl} | {pm(row, 'reward')} | "
            f"{pm(row, 'rm_reward', 2)} | {row['seconds']:.0f} |"
        )
    return "\n".join(lines)


def plot_frontier(rows: list[dict[str, Any]], path: str | os.PathLike, title: str) -> None:
    """Ground-truth reward against KL to the SFT model, one series per method, error bars one standard deviation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    markers = dict(zip(METHODS, "*sodv^<>Dph"))
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_method[row["method"]].append(row)
    for method, group in by_method.items():
        group = sorted(group, key=lambda row: row["kl"])
        ax.errorbar(
            [row["kl"] for row in group],
            [row["reward"] for row in group],
            xerr=[row["kl_std"] for row in group],
            yerr=[row["reward_std"] for row in group],
            marker=markers.get(method, "o"),
            markersize=10 if method == "SFT" else 6,
            linestyle="none" if method == "SFT" else "-",
            capsize=2,
            label=method,
        )
    ax.set_xlabel("KL(policy || SFT), nats per completion")
    ax.set_ylabel("ground-truth reward")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_docs_section(path: str | os.PathLike, section: str, body: str) -> None:
    """Replace the text between ``<!-- {section}:begin -->`` and ``<!-- {section}:end -->`` in ``path`` (appended,
    with the markers, when absent)."""
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    path = Path(path)
    text = path.read_text() if path.exists() else ""
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
    path.write_text(text)


def report(rows, runs, reward_model: dict[str, Any], sizes: Sizes, command: str, device: str, plot) -> str:
    failed = sorted({run["method"] for run in runs if "error" in run})
    lines = [
        f"Reproduce: `{command}`",
        "",
        f"Device: {device}. Policy: the task's tiny SFT model ({_num_params()}); completions of at most "
        f"{sizes.max_completion_length} tokens; evaluation on {sizes.eval_prompts} held-out openings x "
        f"{sizes.eval_samples} samples. Reward model: RewardTrainer, {reward_model['steps']} steps, held-out pairwise "
        f"accuracy {reward_model['held_out_accuracy']:.2f}. Offline methods: {sizes.offline_steps} steps of "
        f"{sizes.batch_size} pairs at learning rate {sizes.offline_lr:g} (Preferred-FT: the steps given); online "
        f"methods: {sizes.online_steps} rollouts of {sizes.batch_size} sequences at learning rate {sizes.online_lr:g} "
        f"(GRPO, RLOO: {sizes.num_generations} per prompt; PPO: {sizes.ppo_epochs} epochs per rollout, its critic "
        f"initialised from the reward model). {_budget_text(sizes)} Mean ± standard deviation over seeds.",
        "",
        frontier_table(rows),
    ]
    if plot:
        lines += ["", f"![reward against KL]({plot})"]
    if failed:
        lines += ["", "Failed runs (see results.json): " + ", ".join(failed)]
    return "\n".join(lines)


def _budget_text(sizes: Sizes) -> str:
    """What the comparison of the online methods holds fixed."""
    if sizes.ppo_epochs == 1:
        return (
            f"Held fixed across the online methods: the optimizer steps ({sizes.online_steps}) and the rollouts "
            f"({sizes.online_steps} batches of {sizes.batch_size} sampled sequences)."
        )
    return (
        f"Held fixed across the online methods: the rollouts ({sizes.online_steps} batches of {sizes.batch_size} "
        f"sampled sequences); PPO takes {sizes.ppo_epochs}x the optimizer steps of the others "
        f"({sizes.online_steps * sizes.ppo_epochs} against {sizes.online_steps})."
    )


def _num_params() -> str:
    from transformers import AutoConfig

    from trl_extras.tasks import sentiment

    config = AutoConfig.from_pretrained(sentiment.default_policy_path())
    return f"Llama, hidden {config.hidden_size}, {config.num_hidden_layers} layers, vocab {config.vocab_size}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, 1 seed, 1 value per knob")
    parser.add_argument("--output_dir", default="outputs/frontier")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated subset of: " + ", ".join(METHODS)
    )
    parser.add_argument("--seeds", type=int, default=None, help="override the number of seeds")
    parser.add_argument(
        "--equal_steps",
        action="store_true",
        help="PPO with 1 epoch per rollout: every online method takes the same optimizer steps on the same rollouts "
        f"(writes the `{EQUAL_STEPS_DOCS_SECTION}` docs section)",
    )
    parser.add_argument("--workers", type=int, default=1, help="runs in parallel, one process and one thread each")
    parser.add_argument("--docs", default=None, help="markdown file whose frontier section to replace")
    parser.add_argument("--plot", default=None, help="also write the figure here (as linked from --docs)")
    args = parser.parse_args(argv)

    import torch

    from trl_extras.tasks import sentiment

    sizes = Sizes(**asdict(QUICK_SIZES)) if args.quick else Sizes()
    if args.seeds is not None:
        sizes.seeds = args.seeds
    if args.equal_steps:
        sizes.ppo_epochs = 1
    names = [name.strip() for name in args.methods.split(",") if name.strip()]
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    methods = [METHODS[name] for name in names]

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sft_path = sentiment.default_policy_path()
        reward_model = train_reward_model(sft_path, str(output_dir), sizes)
    finally:
        torch.set_num_threads(previous_threads)
    setup = Setup(sft_path=sft_path, reward_model_path=reward_model["path"], output_dir=str(output_dir), sizes=sizes)
    jobs = make_jobs(methods, sizes, args.quick)
    runs = run_sweep(jobs, setup, args.workers)
    rows = aggregate(runs)
    elapsed = time.perf_counter() - start

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.machine()})"
    device += f", {args.workers} worker process(es), {elapsed / 60:.1f} min in all"
    command = "python benchmarks/frontier.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    plot_path = output_dir / "frontier.png"
    title = "Reward-KL frontier, built-in sentiment task" + (" (quick smoke run)" if args.quick else "")
    if args.equal_steps:
        title += ", equal optimizer steps"
    plot_frontier(rows, plot_path, title)
    plot_link = None
    if args.plot:
        plot_frontier(rows, args.plot, title)
        if args.docs:
            plot_link = os.path.relpath(os.path.abspath(args.plot), os.path.dirname(os.path.abspath(args.docs)))
    text = report(rows, runs, reward_model, sizes, command.strip(), device, plot_link or "frontier.png")
    (output_dir / "frontier.md").write_text(text + "\n")
    results = {
        "sizes": asdict(sizes),
        "reward_model": reward_model,
        "device": device,
        "runs": runs,
        "rows": rows,
    }
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    if args.docs:
        write_docs_section(args.docs, EQUAL_STEPS_DOCS_SECTION if args.equal_steps else DOCS_SECTION, text)
    print(text)
    return results


if __name__ == "__main__":
    main()
