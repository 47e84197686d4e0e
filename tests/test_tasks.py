"""The built-in offline task: ground-truth reward, dataset builders, cached models, registry."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from trl_extras.tasks import _cache, registry, sentiment
from trl_extras.tasks.evaluation import perplexity, sample_completions

# ---------------------------------------------------------------------------------------------------------------------
# ground truth


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A wonderful, moving film.", 2 / 10),  # 4 words, floor of 10 in the denominator
        ("Bad, bad and boring; I hated it, but the music was great.", (1 - 4) / 12),
        ("It runs for about two hours.", 0.0),
        ("", 0.0),
        ("great " * 20, 1.0),
        ("Not good.", 1 / 10),  # no negation handling, as documented
        ("LOVED it. Terrible ending!", 0.0),  # case-insensitive
    ],
)
def test_sentiment_score_hand_examples(text, expected):
    assert sentiment.sentiment_score(text) == pytest.approx(expected)


def test_ground_truth_reward_standard_and_conversational():
    standard = [" A wonderful, moving film.", " It was a waste of time."]
    conversational = [[{"role": "assistant", "content": text}] for text in standard]
    rewards = sentiment.ground_truth_reward(completions=standard, prompts=["x", "y"], completion_ids=[[1], [2]])
    assert rewards == pytest.approx([0.2, -0.1])
    assert sentiment.ground_truth_reward(conversational) == pytest.approx(rewards)


def test_lexicons_and_phrases_are_consistent():
    data = sentiment.task_data()
    positive, negative = set(data["positive_words"]), set(data["negative_words"])
    assert not positive & negative
    assert set(data["positive_adjectives"]) <= positive
    assert set(data["negative_adjectives"]) <= negative
    assert all(sentiment.sentiment_score(p) > 0 for p in data["positive_phrases"])
    assert all(sentiment.sentiment_score(p) < 0 for p in data["negative_phrases"])
    assert all(sentiment.sentiment_score(p) == 0 for p in data["neutral_phrases"])
    assert not set(data["train_prompts"]) & set(data["eval_prompts"])  # held-out openings are held out
    assert all(sentiment.sentiment_score(p) == 0 for p in data["train_prompts"] + data["eval_prompts"])


# ---------------------------------------------------------------------------------------------------------------------
# dataset builders


def test_builders_are_deterministic():
    assert sentiment.build_sft_dataset(50).to_list() == sentiment.build_sft_dataset(50).to_list()
    assert sentiment.build_preference_dataset(50).to_list() == sentiment.build_preference_dataset(50).to_list()
    assert sentiment.build_sft_dataset(50, seed=1).to_list() != sentiment.build_sft_dataset(50).to_list()


def test_sft_dataset_is_balanced_prompt_completion():
    dataset = sentiment.build_sft_dataset(200)
    assert dataset.column_names == ["prompt", "completion"]
    assert set(dataset["prompt"]) <= set(sentiment.task_data()["train_prompts"])
    scores = [sentiment.sentiment_score(c) for c in dataset["completion"]]
    assert abs(sum(scores) / len(scores)) < 0.05  # a policy trained on it starts near 0 ground-truth reward
    assert min(scores) < -0.1 and max(scores) > 0.1
    assert all(c.startswith(" ") and c.endswith(".") for c in dataset["completion"])


def test_preference_pairs_are_labelled_by_the_ground_truth():
    dataset = sentiment.build_preference_dataset(128)
    assert dataset.column_names == ["prompt", "chosen", "rejected"]
    for row in dataset:
        assert sentiment.sentiment_score(row["chosen"]) > sentiment.sentiment_score(row["rejected"])
    test = sentiment.build_preference_dataset(32, split="test")
    assert set(test["prompt"]) <= set(sentiment.eval_prompts())


def test_prompt_dataset_splits():
    train, test = sentiment.build_prompt_dataset(), sentiment.build_prompt_dataset("test")
    assert train.column_names == ["prompt"] and len(train) == 48 and len(test) == 16
    assert test["prompt"] == sentiment.eval_prompts()


def test_registry_names_and_errors():
    dataset = registry.load_builtin_dataset("builtin:sentiment", "preference")
    assert set(dataset) == {"train", "test"} and dataset["train"].column_names == ["prompt", "chosen", "rejected"]
    assert registry.resolve_builtin_reward("builtin:sentiment") is sentiment.ground_truth_reward
    with pytest.raises(ValueError, match="builtin:sentiment-sft"):
        registry.resolve_builtin_model("builtin:nope")
    with pytest.raises(ValueError, match="subsets are: sft, preference, prompt"):
        registry.load_builtin_dataset("builtin:sentiment", "pairs")
    assert registry.evaluation_for("trl-lib/ultrafeedback_binarized", "policy") is None
    assert registry.evaluation_for("builtin:sentiment", "policy", num_samples=0) is None


# ---------------------------------------------------------------------------------------------------------------------
# the cache


def test_cached_build_builds_once_and_never_leaves_a_partial_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_EXTRAS_CACHE", str(tmp_path))
    calls = []

    def build(directory):
        calls.append(directory)
        (directory / "weights.bin").write_text("ok")

    first = _cache.cached_build("thing", "abc", build)
    second = _cache.cached_build("thing", "abc", build)
    assert first == second == str(tmp_path / "thing-abc") and len(calls) == 1
    assert (tmp_path / "thing-abc" / "weights.bin").read_text() == "ok"

    def broken(directory):
        (directory / "half.bin").write_text("x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        _cache.cached_build("thing", "def", broken)
    assert not (tmp_path / "thing-def").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["thing-abc"]


def test_cached_build_concurrent_processes_build_once(tmp_path):
    # the cache module is loaded from its file alone, so the subprocesses do not pay for importing torch
    script = textwrap.dedent(
        f"""
        import importlib.util, os, sys, time
        spec = importlib.util.spec_from_file_location("cache", {_cache.__file__!r})
        cache = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(cache)

        def build(directory):
            with open(os.path.join(sys.argv[1], "builds.log"), "a") as log:
                log.write(f"{{os.getpid()}}\\n")
            time.sleep(1.0)
            (directory / "model.txt").write_text("done")

        print(cache.cached_build("race", "k", build))
        """
    )
    env = {**os.environ, "TRL_EXTRAS_CACHE": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=60)[0].strip() for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    assert outputs[0] == outputs[1] == str(tmp_path / "cache" / "race-k")
    assert len((tmp_path / "builds.log").read_text().split()) == 1


def test_cache_key_changes_with_the_recipe():
    data = sentiment.task_data()
    assert _cache.content_hash(data, {"steps": 1}) != _cache.content_hash(data, {"steps": 2})
    assert _cache.content_hash(data, {"steps": 1}) == _cache.content_hash(json.loads(json.dumps(data)), {"steps": 1})


# ---------------------------------------------------------------------------------------------------------------------
# the cached tiny policy


@pytest.fixture
def one_thread():
    """Models this small are fastest on one intra-op thread, above all on a busy machine (as the CLI runs them)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_default_policy_writes_reviews(builtin_cache, one_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = sentiment.default_policy_path()
    assert path.startswith(str(builtin_cache)) and sentiment.default_policy_path() == path  # cached
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    samples = sample_completions(model, tokenizer, sentiment.eval_prompts(), num_samples=2, max_new_tokens=32)
    completions = [completion for _, completion in samples]

    # sentence-like: most sampled words are words of the task's reviews
    data = sentiment.task_data()
    vocabulary = set(
        " ".join(sentiment.build_sft_dataset(960)["completion"]).lower().replace(".", " ").replace(",", " ").split()
    )
    vocabulary |= set(data["positive_words"]) | set(data["negative_words"])
    words = " ".join(completions).lower().replace(".", " ").replace(",", " ").split()
    assert len(words) > 5 * len(completions)
    assert sum(word in vocabulary for word in words) / len(words) > 0.8

    # trained on balanced reviews: both sentiments, mean ground-truth reward near 0 (room to improve either way)
    rewards = sentiment.ground_truth_reward(completions)
    assert min(rewards) < 0 < max(rewards)
    assert abs(sum(rewards) / len(rewards)) < 0.1

    # it learned the reviews: far lower held-out perplexity than the untrained model with the same tokenizer
    held_out = sentiment.build_sft_dataset(16, split="test")
    base = AutoModelForCausalLM.from_pretrained(sentiment.base_policy_path())
    trained_ppl = perplexity(model, tokenizer, held_out["prompt"], held_out["completion"])
    base_ppl = perplexity(base, tokenizer, held_out["prompt"], held_out["completion"])
    assert trained_ppl < 20 < base_ppl
