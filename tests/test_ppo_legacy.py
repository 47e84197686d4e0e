"""The TRL <= 1.12 call path of PPOTrainer (trl_extras/trainer/_ppo_legacy.py): TRL 1.12's own PPO test calls with only
the import swapped, each mapping, the single FutureWarning, each clear error, the docs table, the ported example."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    DataCollatorWithPadding,
    HfArgumentParser,
)

from trl_extras import PPOConfig, PPOTrainer
from trl_extras.testing import build_tiny_causal_lm, build_tiny_reward_model, build_tiny_tokenizer
from trl_extras.trainer import _ppo_legacy

REPO = Path(__file__).resolve().parent.parent
TRAIN_PROMPTS = ["The sky is", "I like to", "Hello there,", "What is the"] * 2
TEST_PROMPTS = ["The cat sat", "A dog ran"]
LEGACY_PREFIX = "PPOTrainer: arguments of TRL's old PPOTrainer"


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory):
    """A tiny policy and reward model with spare embedding rows, like the hub's tiny test models (so the `[PAD]` the
    old tests add gets an id the models have), and a pair without spare rows (the built-in task's layout)."""
    root = tmp_path_factory.mktemp("ppo-legacy")
    spare = len(build_tiny_tokenizer()) + 64
    return {
        "lm": build_tiny_causal_lm(root / "lm", vocab_size=spare),
        "rm": build_tiny_reward_model(root / "rm", vocab_size=spare),
        "lm_exact": build_tiny_causal_lm(root / "lm-exact"),
        "rm_exact": build_tiny_reward_model(root / "rm-exact"),
    }


# ---- TRL 1.12's TestPPOTrainer (tests/experimental/test_ppo_trainer.py), offline; only the import is swapped ---------
# Changes from the original: the model ids are our tiny models, the `zen` dataset is a small in-memory one with the same
# splits and column, `self.tmp_dir` comes from pytest's tmp_path, and `bf16=False` (the machine has no bf16 GPU;
# TRL's config defaults to bf16, which TrainingArguments rejects on CPU).


class TestPPOTrainer:
    @pytest.fixture(autouse=True)
    def _paths(self, tiny_paths, tmp_path):
        self.paths = tiny_paths
        self.tmp_dir = str(tmp_path)
        self.setup_method_offline()

    def setup_method_offline(self):
        # Set up the models and tokenizer using the test model
        self.model_id = self.paths["lm"]
        self.model = AutoModelForCausalLM.from_pretrained(self.model_id, dtype="float32")
        self.ref_model = AutoModelForCausalLM.from_pretrained(self.model_id)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_id, padding_side="left")
        self.tokenizer.add_special_tokens({"pad_token": "[PAD]"})

        # Add reward and value models as in ppo.py
        reward_model_id = self.paths["rm"]
        self.value_model = AutoModelForSequenceClassification.from_pretrained(reward_model_id, num_labels=1)
        self.reward_model = AutoModelForSequenceClassification.from_pretrained(reward_model_id, num_labels=1)

        # Load dataset
        raw_dataset = DatasetDict(
            {
                "train": Dataset.from_dict({"prompt": TRAIN_PROMPTS}),
                "test": Dataset.from_dict({"prompt": TEST_PROMPTS}),
            }
        )

        def tokenize(example, tokenizer):
            tokenized = tokenizer(text=example["prompt"])
            if tokenizer.eos_token_id is not None and tokenized["input_ids"][-1] != tokenizer.eos_token_id:
                tokenized["input_ids"] = tokenized["input_ids"] + [tokenizer.eos_token_id]
                tokenized["attention_mask"] = tokenized["attention_mask"] + [1]
            return tokenized

        self.raw_dataset = raw_dataset.map(tokenize, fn_kwargs={"tokenizer": self.tokenizer}, remove_columns="prompt")

    def test_basic_training(self):
        """Test basic PPO training configuration and verify model updates."""
        # Capture initial weights
        initial_critic_weights = {}
        initial_policy_weights = {}
        for name, param in self.value_model.named_parameters():
            initial_critic_weights[name] = param.clone().detach()
        for name, param in self.model.named_parameters():
            initial_policy_weights[name] = param.clone().detach()

        # Configure training args similar to example script
        training_args = PPOConfig(
            output_dir=self.tmp_dir,
            per_device_train_batch_size=4,
            per_device_eval_batch_size=2,
            num_ppo_epochs=2,  # Decrease number of PPO epochs to speed up test
            report_to="none",
            bf16=False,
        )

        # Create trainer
        trainer = PPOTrainer(
            args=training_args,
            processing_class=self.tokenizer,
            model=self.model,
            ref_model=self.ref_model,
            reward_model=self.reward_model,
            value_model=self.value_model,
            train_dataset=self.raw_dataset["train"],
            eval_dataset=self.raw_dataset["test"],
        )

        # Train
        trainer.train()

        # Check if critic weights have been updated
        critic_weights_updated = False
        for name, param in trainer.model.value_model.named_parameters():
            if not torch.equal(initial_critic_weights[name], param.to("cpu")):
                critic_weights_updated = True
                break

        # Check if policy weights have been updated
        policy_weights_updated = False
        for name, param in trainer.model.policy.named_parameters():
            if not torch.equal(initial_policy_weights[name], param.to("cpu")):
                policy_weights_updated = True
                break

        assert critic_weights_updated, "Critic weights were not updated during training"
        assert policy_weights_updated, "Policy weights were not updated during training"

    def test_peft_training(self):
        """Test PPO training with PEFT configuration and verify model updates."""
        from peft import LoraConfig

        # Capture initial weights
        initial_critic_weights = {}
        initial_policy_weights = {}
        for name, param in self.value_model.named_parameters():
            initial_critic_weights[name] = param.clone().detach()
        for name, param in self.model.named_parameters():
            initial_policy_weights[name] = param.clone().detach()

        # Configure training args
        training_args = PPOConfig(
            output_dir=self.tmp_dir,
            per_device_train_batch_size=4,
            per_device_eval_batch_size=2,
            num_ppo_epochs=2,  # Decrease number of PPO epochs to speed up test
            report_to="none",
            bf16=False,
        )

        # Configure PEFT
        peft_config = LoraConfig(
            r=32,
            lora_alpha=16,
            lora_dropout=0.05,
            bias="none",
            task_type="CAUSAL_LM",
        )

        # Create trainer with PEFT
        trainer = PPOTrainer(
            args=training_args,
            processing_class=self.tokenizer,
            model=self.model,
            ref_model=None,
            reward_model=self.reward_model,
            value_model=self.value_model,
            train_dataset=self.raw_dataset["train"],
            eval_dataset=self.raw_dataset["test"],
            peft_config=peft_config,
        )

        # Train
        trainer.train()

        # Check if critic weights have been updated
        critic_weights_updated = False
        for name, param in trainer.model.value_model.named_parameters():
            if name in initial_critic_weights and not torch.equal(initial_critic_weights[name], param.to("cpu")):
                critic_weights_updated = True
                break

        # Check if policy weights have been updated - for PEFT we check the LoRA weights
        policy_weights_updated = False
        for name, param in trainer.model.policy.named_parameters():
            if "lora" in name.lower() and param.requires_grad:  # Only check LoRA weights
                # New weights should be non-zero if they've been updated
                if not torch.allclose(param, torch.zeros_like(param)):
                    policy_weights_updated = True
                    break

        assert critic_weights_updated, "Critic weights were not updated during training"
        assert policy_weights_updated, "Policy LoRA weights were not updated during training"
        # Beyond the original: the LoRA B matrices start at zero, so a non-zero one was trained
        lora_b = [p for n, p in trainer.model.policy.named_parameters() if "lora_B" in n]
        assert lora_b and any(p.abs().sum() > 0 for p in lora_b)


# ---- each mapping ---------------------------------------------------------------------------------------------------


def config(tmp_path, **overrides):
    kwargs = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, report_to="none", bf16=False)
    kwargs.update(overrides)
    return PPOConfig(**kwargs)


def load(paths, lm="lm", rm="rm", pad="[PAD]"):
    tokenizer = AutoTokenizer.from_pretrained(paths[lm], padding_side="left")
    if pad:
        tokenizer.add_special_tokens({"pad_token": pad})
    return dict(
        processing_class=tokenizer,
        model=AutoModelForCausalLM.from_pretrained(paths[lm]),
        ref_model=AutoModelForCausalLM.from_pretrained(paths[lm]),
        reward_model=AutoModelForSequenceClassification.from_pretrained(paths[rm], num_labels=1),
        value_model=AutoModelForSequenceClassification.from_pretrained(paths[rm], num_labels=1),
    )


def tokenized(tokenizer, prompts):
    return Dataset.from_dict({"prompt": prompts}).map(lambda row: tokenizer(row["prompt"]), remove_columns="prompt")


def build(*args, **kwargs):
    """Construct a trainer; return it and the legacy FutureWarnings it emitted (all FutureWarnings are recorded)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = PPOTrainer(*args, **kwargs)
    ours = [w for w in caught if issubclass(w.category, FutureWarning) and LEGACY_PREFIX in str(w.message)]
    return trainer, ours


def test_old_positional_order_maps_each_argument(tiny_paths, tmp_path):
    parts = load(tiny_paths)
    tokenizer = parts["processing_class"]
    train = tokenized(tokenizer, TRAIN_PROMPTS)
    trainer, ours = build(
        config(tmp_path),
        tokenizer,
        parts["model"],
        parts["ref_model"],
        parts["reward_model"],
        train,
        parts["value_model"],
    )
    assert trainer.model is parts["model"]
    assert trainer.reward_funcs == [parts["reward_model"]] and trainer.reward_model is parts["reward_model"]
    assert trainer.reward_processing_classes == [tokenizer]  # scored with the policy's tokenizer, as before
    assert trainer.value_model is parts["value_model"]
    assert trainer.policy_model is trainer.model
    assert list(trainer.train_dataset["prompt"]) == TRAIN_PROMPTS
    assert len(ours) == 1 and "old positional order" in str(ours[0].message)


def test_old_argument_names_of_trl_0_11_to_0_13(tiny_paths, tmp_path):
    parts = load(tiny_paths)
    trainer, ours = build(
        config=config(tmp_path),
        tokenizer=parts["processing_class"],
        policy=parts["model"],
        ref_policy=parts["ref_model"],
        reward_model=parts["reward_model"],
        train_dataset=Dataset.from_dict({"prompt": TRAIN_PROMPTS}),
        value_model=parts["value_model"],
    )
    assert trainer.model is parts["model"] and trainer.processing_class is parts["processing_class"]
    message = str(ours[0].message)
    for old, new in _ppo_legacy.RENAMED_ARGUMENTS.items():
        assert f"`{old}` -> `{new}`" in message


def test_single_future_warning_lists_the_mappings_and_links_the_page(tiny_paths, tmp_path):
    parts = load(tiny_paths)
    args = config(tmp_path, response_length=7, stop_token="eos", local_rollout_forward_batch_size=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PPOTrainer(
            args=args,
            train_dataset=tokenized(parts["processing_class"], TRAIN_PROMPTS),
            **parts,
        )
    ours = [w for w in caught if issubclass(w.category, FutureWarning) and LEGACY_PREFIX in str(w.message)]
    assert len(ours) == 1
    assert ours[0].filename == __file__  # points at the caller's line
    message = str(ours[0].message)
    for expected in (
        "`response_length=7` -> `max_completion_length`",
        "`stop_token='eos'`",
        "`local_rollout_forward_batch_size=2` -> no effect",
        "`learning_rate` unset -> 3e-06",
        "`temperature` unset -> 0.7",
        "`reward_model` -> `reward_funcs`",
        "`ref_model` -> dropped",
        "`train_dataset`: tokenised `input_ids` -> decoded into a `prompt` column; all 8 rows",
        _ppo_legacy.MIGRATION_PAGE,
    ):
        assert expected in message, expected
    # no other FutureWarning comes from trl_extras
    assert not [w for w in caught if issubclass(w.category, FutureWarning) and "trl_extras" in w.filename]


def test_new_style_call_emits_no_legacy_warning_and_keeps_new_defaults(tiny_paths, tmp_path):
    args = config(tmp_path)
    assert (args.learning_rate, args.temperature, args.max_completion_length) == (1e-6, 1.0, 512)
    trainer, ours = build(
        model=tiny_paths["lm"],
        reward_funcs=tiny_paths["rm"],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": TRAIN_PROMPTS}),
    )
    assert ours == [] and not hasattr(trainer.model, "policy")
    assert (trainer.args.learning_rate, trainer.args.temperature, trainer.args.max_completion_length) == (
        1e-6,
        1.0,
        512,
    )


def test_old_defaults_on_the_legacy_path_and_explicit_values_kept(tiny_paths, tmp_path):
    # a legacy field in the config: the old defaults for what is unset, explicit values kept (even the new defaults)
    args = config(tmp_path, sft_model_path="x", learning_rate=1e-6)
    assert (args.learning_rate, args.temperature, args.max_completion_length) == (1e-6, 0.7, 53)
    # a plain config used with the old trainer arguments: the trainer applies the old defaults
    args = config(tmp_path)
    trainer, _ = build(args=args, train_dataset=Dataset.from_dict({"prompt": TRAIN_PROMPTS}), **load(tiny_paths))
    assert (args.learning_rate, args.temperature, args.max_completion_length) == (3e-6, 0.7, 53)
    assert trainer.temperature == 0.7


def test_response_length_maps_and_conflicts(tmp_path):
    assert config(tmp_path, response_length=11).max_completion_length == 11
    assert config(tmp_path, response_length=11, max_completion_length=11).max_completion_length == 11
    with pytest.raises(
        ValueError, match=r"`response_length` \(11\) is the old name of `max_completion_length` \(12\)"
    ):
        config(tmp_path, response_length=11, max_completion_length=12)


def test_stop_token_fields(tiny_paths, tmp_path):
    with pytest.raises(ValueError, match="set either `stop_token`"):
        config(tmp_path, stop_token="eos", stop_token_id=3)
    with pytest.raises(ValueError, match="`stop_token` must be 'eos' or None, got 'eot'.*`stop_token_id`"):
        config(tmp_path, stop_token="eot")
    parts = load(tiny_paths)
    stop = parts["processing_class"].convert_tokens_to_ids("e")
    trainer, ours = build(
        args=config(tmp_path, stop_token_id=stop), train_dataset=Dataset.from_dict({"prompt": TRAIN_PROMPTS}), **parts
    )
    assert parts["model"].generation_config.eos_token_id == stop and stop in trainer.eos_token_ids
    assert trainer.stop_token_id == stop and f"`stop_token_id={stop}`" in str(ours[0].message)
    eos = config(tmp_path, stop_token="eos")
    trainer, ours = build(args=eos, train_dataset=Dataset.from_dict({"prompt": TRAIN_PROMPTS}), **load(tiny_paths))
    assert trainer.stop_token_id == trainer.processing_class.eos_token_id


def test_no_stop_token_is_reported_as_a_difference(tiny_paths, tmp_path):
    _, ours = build(
        args=config(tmp_path), train_dataset=Dataset.from_dict({"prompt": TRAIN_PROMPTS}), **load(tiny_paths)
    )
    assert "no `stop_token`/`stop_token_id` -> generation stops at the EOS token" in str(ours[0].message)


def test_num_sample_generations_sets_log_completions(tmp_path):
    assert config(tmp_path, num_sample_generations=10).log_completions is True
    assert config(tmp_path, num_sample_generations=0).log_completions is False
    assert config(tmp_path).log_completions is False


def test_model_paths_used_when_the_trainer_gets_no_models(tiny_paths, tmp_path):
    args = config(tmp_path, sft_model_path=tiny_paths["lm"], reward_model_path=tiny_paths["rm"])
    trainer, ours = build(args=args, train_dataset=Dataset.from_dict({"prompt": TRAIN_PROMPTS}))
    assert trainer.model.config._name_or_path == tiny_paths["lm"]
    assert trainer.reward_funcs[0].config._name_or_path == tiny_paths["rm"]
    assert "`model` not passed -> `args.sft_model_path`" in str(ours[0].message)


def test_adapter_names(tmp_path):
    assert config(tmp_path, model_adapter_name="default").model_adapter_name == "default"
    with pytest.raises(ValueError, match="`model_adapter_name='policy'`.*adapter_name='default'"):
        config(tmp_path, model_adapter_name="policy")
    with pytest.raises(ValueError, match="`ref_adapter_name`.*not supported.*leave it unset"):
        config(tmp_path, ref_adapter_name="ref")


def test_exp_name_maps_to_run_name(tmp_path):
    assert config(tmp_path, exp_name="old-run").run_name == "old-run"
    with pytest.raises(ValueError, match="`exp_name`.*set `run_name` only"):
        config(tmp_path, exp_name="a", run_name="b")


@pytest.mark.parametrize("name", sorted(_ppo_legacy.REMOVED_CONFIG_FIELDS))
def test_each_removed_config_field_is_a_clear_error(name, tmp_path):
    with pytest.raises(ValueError) as error:
        config(tmp_path, **{name: 1})
    message = str(error.value)
    assert f"`{name}`" in message and _ppo_legacy.REMOVED_CONFIG_FIELDS[name] in message
    assert _ppo_legacy.MIGRATION_PAGE in message


def test_old_script_flags_parse(tmp_path):
    argv = [
        *("--output_dir", str(tmp_path), "--bf16", "False", "--report_to", "none"),
        *("--response_length", "53", "--sft_model_path", "a", "--reward_model_path", "b"),
        *("--local_rollout_forward_batch_size", "1", "--stop_token", "eos", "--num_sample_generations", "10"),
        *("--model_adapter_name", "default", "--dataset_num_proc", "2", "--total_episodes", "100"),
        *("--num_ppo_epochs", "1", "--num_mini_batches", "1", "--missing_eos_penalty", "1.0", "--kl_coef", "0.1"),
    ]
    (args,) = HfArgumentParser(PPOConfig).parse_args_into_dataclasses(argv)
    assert (args.max_completion_length, args.sft_model_path, args.reward_model_path) == (53, "a", "b")
    assert (args.dataset_num_proc, args.log_completions, args.learning_rate, args.temperature) == (2, True, 3e-6, 0.7)
    assert args.total_episodes == 100 and args.missing_eos_penalty == 1.0 and args.kl_coef == 0.1


def test_tokenised_prompts_are_decoded_with_special_tokens_kept(tiny_paths, tmp_path):
    parts = load(tiny_paths)
    tokenizer = parts["processing_class"]
    eos = tokenizer.eos_token
    rows = tokenized(tokenizer, TRAIN_PROMPTS).map(lambda r: {"input_ids": r["input_ids"] + [tokenizer.eos_token_id]})
    rows = rows.remove_columns("attention_mask").add_column("label", list(range(len(rows))))
    eval_rows = tokenized(tokenizer, TEST_PROMPTS)  # attention_mask kept: used to drop padding
    trainer, _ = build(args=config(tmp_path), train_dataset=rows, eval_dataset=eval_rows, **parts)
    assert list(trainer.train_dataset["prompt"]) == [p + eos for p in TRAIN_PROMPTS]
    assert list(trainer.train_dataset["label"]) == list(range(len(TRAIN_PROMPTS)))  # other columns kept
    assert list(trainer.eval_dataset["prompt"]) == TEST_PROMPTS


def test_pad_token_outside_the_embeddings(tiny_paths, tmp_path):
    parts = load(tiny_paths, lm="lm_exact", rm="rm_exact")
    tokenizer = parts["processing_class"]
    vocab = parts["model"].get_input_embeddings().num_embeddings
    assert tokenizer.pad_token_id == vocab  # the old script's "[PAD]" got an id the model does not have
    trainer, ours = build(
        args=config(tmp_path, max_steps=1), train_dataset=tokenized(tokenizer, TRAIN_PROMPTS), **parts
    )
    assert tokenizer.pad_token == "[PAD]"  # the caller's tokenizer is not changed
    assert trainer.processing_class.pad_token == tokenizer.eos_token
    assert trainer.value_model.get_input_embeddings().num_embeddings == len(tokenizer) == vocab + 1
    message = str(ours[0].message)
    assert f"pad token '[PAD]' (id {vocab}) is outside the policy's {vocab} embeddings" in message
    trainer.train()  # pads are inside the vocabulary: a rollout and an update run
    assert trainer.state.global_step == 1


def test_ref_model_with_other_weights_is_an_error(tiny_paths, tmp_path):
    parts = load(tiny_paths)
    with torch.no_grad():
        parts["ref_model"].lm_head.weight.add_(1.0)
    with pytest.raises(
        ValueError, match=r"`ref_model` differs from `model` \(`lm_head.weight` has different values\)"
    ):
        PPOTrainer(args=config(tmp_path), train_dataset=Dataset.from_dict({"prompt": TRAIN_PROMPTS}), **parts)


def test_errors_for_what_cannot_be_mapped(tiny_paths, tmp_path):
    prompts = Dataset.from_dict({"prompt": TRAIN_PROMPTS})
    parts = load(tiny_paths)
    tokenizer = parts["processing_class"]
    with pytest.raises(TypeError, match="custom collator cannot be used"):
        PPOTrainer(
            args=config(tmp_path),
            train_dataset=prompts,
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
            **parts,
        )
    trainer, ours = build(
        args=config(tmp_path), train_dataset=prompts, data_collator=DataCollatorWithPadding(tokenizer), **parts
    )
    assert "`data_collator` (DataCollatorWithPadding) -> dropped" in str(ours[0].message)
    with pytest.raises(TypeError, match="both `reward_model`.*and `reward_funcs`"):
        PPOTrainer(args=config(tmp_path), train_dataset=prompts, reward_funcs=tiny_paths["rm"], **parts)
    with pytest.raises(TypeError, match="`dataset`.*TRL <= 0.11's PPOTrainer.*`step\\(queries, responses, scores\\)`"):
        PPOTrainer(config=config(tmp_path), model=parts["model"], tokenizer=tokenizer, dataset=prompts)
    with pytest.raises(TypeError, match="needs a reward"):
        PPOTrainer(args=config(tmp_path), model=parts["model"], ref_model=None, train_dataset=prompts)


def test_old_attribute_layout_is_readable_and_outside_the_module_tree(tiny_paths, tmp_path):
    parts = load(tiny_paths)
    trainer, _ = build(args=config(tmp_path), train_dataset=Dataset.from_dict({"prompt": TRAIN_PROMPTS}), **parts)
    assert trainer.model.policy is trainer.model and trainer.model.value_model is trainer.value_model
    assert not any(name.startswith(("policy.", "value_model.")) for name in trainer.model.state_dict())
    with pytest.raises(AttributeError):
        trainer.policy_model = None  # read-only


def test_generate_completions_scores_with_the_reward(tiny_paths, tmp_path):
    def length_reward(completions, **kwargs):
        return [float(len(c)) for c in completions]

    parts = load(tiny_paths)
    parts["reward_model"] = length_reward
    args = config(tmp_path, response_length=6, per_device_eval_batch_size=1)
    trainer, _ = build(
        args=args,
        train_dataset=Dataset.from_dict({"prompt": TRAIN_PROMPTS}),
        eval_dataset=Dataset.from_dict({"prompt": TEST_PROMPTS}),
        **parts,
    )
    table = trainer.generate_completions()
    assert list(table["query"]) == TEST_PROMPTS
    assert list(table["score"]) == [float(len(text)) for text in table["model response"]]
    assert len(trainer.generate_completions(sampling=True)) == 1  # the first eval batch only


def test_migration_table_in_docs_matches_the_mapping():
    page = (REPO / "docs" / "ppo.md").read_text()
    assert _ppo_legacy.migration_tables() in page, (
        "docs/ppo.md's migration tables differ from trl_extras/trainer/_ppo_legacy.py; regenerate them with "
        "`python -m trl_extras.trainer._ppo_legacy`"
    )


def test_ported_example_runs_offline(builtin_cache, tmp_path):
    """examples/ppo_legacy.py (TRL 1.12's script, import swapped) for two rollouts on the built-in task."""
    out = tmp_path / "out"
    command = [
        sys.executable,
        str(REPO / "examples" / "ppo_legacy.py"),
        *("--output_dir", str(out), "--total_episodes", "8", "--per_device_train_batch_size", "4"),
        *("--num_ppo_epochs", "1", "--response_length", "6", "--per_device_eval_batch_size", "50"),
        *("--bf16", "False", "--report_to", "none", "--save_strategy", "no"),
    ]
    env = {**os.environ, "TRL_EXTRAS_CACHE": str(builtin_cache), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count(LEGACY_PREFIX) == 1
    assert "'[PAD]'" in result.stderr and "all 192 rows re-tokenise to the same ids" in result.stderr
    assert (out / "model.safetensors").exists() and (out / "value_model" / "model.safetensors").exists()
    assert "model response" in result.stdout  # trainer.generate_completions()'s table
