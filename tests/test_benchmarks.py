"""The benchmark scripts: the frontier's maths on hand-made numbers, and quick-mode smoke runs of both scripts."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import frontier_metrics as fm  # noqa: E402

from trl_extras.sampling import best_of_n_kl  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """Models this small run faster on one thread, and much faster on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------------------------------------------
# frontier maths


def test_completion_mask_keeps_tokens_up_to_and_including_the_first_eos():
    eos = 1
    ids = torch.tensor([[5, 6, 1, 0, 0], [5, 1, 1, 0, 7], [5, 6, 7, 8, 9]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    assert torch.equal(fm.completion_mask_from_ids(ids, eos), expected)


def test_sequence_kl_sums_log_ratios_over_completion_tokens_only():
    policy = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -0.2, -9.0]])
    reference = torch.tensor([[-1.5, -1.0, -3.0], [-0.3, -0.2, -0.1]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 0]])
    # row 0: (-2 + 1) + (-0.5 + 3) = 1.5; row 1: (-0.1 + 0.3) + 0 = 0.2 (the masked -9 vs -0.1 does not count)
    assert torch.allclose(fm.sequence_kl(policy, reference, mask), torch.tensor([1.5, 0.2]))


def test_best_of_n_kl_estimate_hand_example_ties_and_limit():
    # two equally likely rewards, best of 2: P(best = high) = 3/4
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert fm.best_of_n_kl_estimate([0.0, 1.0], 2) == pytest.approx(expected)
    assert fm.best_of_n_kl_estimate([0.3] * 10, 8) == 0.0  # all tied: best-of-n is the base policy
    assert fm.best_of_n_kl_estimate([0.1, 0.2, 0.3], 1) == pytest.approx(0.0)
    # ties lower the KL below the analytic value; distinct rewards reach it as the pool grows
    assert fm.best_of_n_kl_estimate([0.0, 0.0, 0.0, 1.0], 4) < best_of_n_kl(4)
    distinct = torch.linspace(0, 1, 20_000)
    for n in (2, 8, 32):
        assert fm.best_of_n_kl_estimate(distinct, n) == pytest.approx(best_of_n_kl(n), abs=2e-3)
    with pytest.raises(ValueError, match="n must be >= 1"):
        fm.best_of_n_kl_estimate([0.0], 0)


def test_mean_and_spread():
    assert fm.mean_and_spread([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert fm.mean_and_spread([4.0]) == (4.0, 0.0)


@pytest.fixture(scope="module")
def lm_pair(tiny_lm_path):
    """The tiny LM and a perturbed copy of it (the 'reference')."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(tiny_lm_path).eval()
    reference = AutoModelForCausalLM.from_pretrained(tiny_lm_path).eval()
    with torch.no_grad():
        policy.lm_head.weight.mul_(8.0)  # the untrained model is near uniform: sharpen it so the KL is sizeable
        reference.lm_head.weight.mul_(8.0)
        reference.lm_head.weight.add_(0.5 * torch.randn_like(reference.lm_head.weight))
    return policy, reference, AutoTokenizer.from_pretrained(tiny_lm_path)


PROMPTS = ["The movie was", "I watched this film and"]  # different lengths: left padding


def test_log_probs_of_a_left_padded_batch_equal_each_sequence_alone(lm_pair):
    policy, _, tokenizer = lm_pair
    samples = fm.sample_completions(policy, tokenizer, PROMPTS, num_samples=2, max_new_tokens=5, seed=0)
    batched = fm.completion_log_probs(
        policy, samples["input_ids"], samples["attention_mask"], samples["completion_mask"]
    )
    for row in range(len(samples["prompts"])):
        keep = samples["attention_mask"][row].bool()
        ids = samples["input_ids"][row][keep][None]
        with torch.no_grad():
            logps = torch.log_softmax(policy(input_ids=ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
        completion = samples["completion_mask"][row][keep][1:].bool()
        assert torch.allclose(batched[row][keep][1:][completion], logps[completion], atol=1e-5)
        assert (batched[row][~samples["completion_mask"][row].bool()] == 0).all()


def test_monte_carlo_kl_matches_the_exact_kl_of_one_token_completions(lm_pair):
    policy, reference, tokenizer = lm_pair
    exact = []
    for prompt in PROMPTS:  # one-token completions: KL = sum_v p(v) log p(v)/q(v) at the next position
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            log_p = torch.log_softmax(policy(input_ids=ids).logits[0, -1], -1)
            log_q = torch.log_softmax(reference(input_ids=ids).logits[0, -1], -1)
        exact.append(float((log_p.exp() * (log_p - log_q)).sum()))
    samples = fm.sample_completions(policy, tokenizer, PROMPTS, num_samples=1000, max_new_tokens=1, seed=0)
    batch = (samples["input_ids"], samples["attention_mask"], samples["completion_mask"])
    kl = fm.sequence_kl(fm.completion_log_probs(policy, *batch), fm.completion_log_probs(reference, *batch), batch[2])
    standard_error = float(kl.std() / math.sqrt(len(kl)))
    assert sum(exact) / 2 > 0.1  # a KL worth estimating
    assert float(kl.mean()) == pytest.approx(sum(exact) / 2, abs=4 * standard_error)
    # and a policy against itself is exactly 0 on every sample
    same = fm.sequence_kl(fm.completion_log_probs(policy, *batch), fm.completion_log_probs(policy, *batch), batch[2])
    assert (same == 0).all()


def test_write_docs_section_replaces_between_markers_and_appends_when_absent(tmp_path):
    from frontier import write_docs_section

    path = tmp_path / "doc.md"
    path.write_text("# Title\n\n<!-- frontier:begin -->\nold\n<!-- frontier:end -->\n\nafter\n")
    write_docs_section(path, "frontier", "new table")
    assert path.read_text() == "# Title\n\n<!-- frontier:begin -->\nnew table\n<!-- frontier:end -->\n\nafter\n"
    write_docs_section(path, "speed", "speed table")
    assert path.read_text().endswith("after\n\n<!-- speed:begin -->\nspeed table\n<!-- speed:end -->\n")


# ---------------------------------------------------------------------------------------------------------------------
# quick-mode smoke runs (no assertions on time or on which method wins)


@pytest.fixture
def builtin_cache(tmp_path_factory, monkeypatch):
    """The trl-extras cache shared with tests/test_tasks.py and tests/test_cli.py: the task's tiny policy is built
    once per test session."""
    monkeypatch.setenv("TRL_EXTRAS_CACHE", str(tmp_path_factory.getbasetemp() / "trl_extras_cache"))


def test_frontier_quick_run_writes_a_well_formed_table_and_plot(builtin_cache, tmp_path):
    import frontier

    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n<!-- frontier:begin -->\n<!-- frontier:end -->\n")
    out = tmp_path / "frontier"
    frontier.main(["--quick", "--output_dir", str(out), "--docs", str(docs), "--plot", str(tmp_path / "f.png")])

    results = json.loads((out / "results.json").read_text())
    assert not [run for run in results["runs"] if "error" in run], [run.get("error") for run in results["runs"]]
    rows = results["rows"]
    assert [row["method"] for row in rows] == list(frontier.METHODS)  # quick mode: one seed, one knob value each
    for row in rows:
        for key in ("kl", "reward", "rm_reward", "seconds"):
            assert math.isfinite(row[key]), (row["method"], key)
        assert -1.0 <= row["reward"] <= 1.0  # the ground truth's range
    by_method = {row["method"]: row for row in rows}
    assert by_method["SFT"]["kl"] == 0.0  # the SFT model against itself, sample by sample
    assert by_method["Best-of-N"]["kl_analytic"] == pytest.approx(best_of_n_kl(2))
    assert 0.0 <= by_method["Best-of-N"]["kl"] <= best_of_n_kl(2) + 1e-9
    assert 0.0 <= results["reward_model"]["held_out_accuracy"] <= 1.0

    table = (out / "frontier.md").read_text()
    body = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert len(body) == len(rows)
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "f.png").exists()
    text = docs.read_text()
    assert text.startswith("# Benchmarks") and "| DPO | beta=0.1 |" in text and "![reward against KL](f.png)" in text


def test_frontier_budget_text_says_what_is_held_fixed():
    from frontier import Sizes, _budget_text

    assert _budget_text(Sizes(online_steps=80, batch_size=16, ppo_epochs=4)) == (
        "Held fixed across the online methods: the rollouts (80 batches of 16 sampled sequences); PPO takes 4x the "
        "optimizer steps of the others (320 against 80)."
    )
    assert _budget_text(Sizes(online_steps=80, batch_size=16, ppo_epochs=1)) == (
        "Held fixed across the online methods: the optimizer steps (80) and the rollouts (80 batches of 16 sampled "
        "sequences)."
    )


def test_frontier_equal_steps_quick_run_writes_its_own_section(builtin_cache, tmp_path):
    import frontier

    docs = tmp_path / "benchmarks.md"
    docs.write_text(
        "<!-- frontier:begin -->\nkept\n<!-- frontier:end -->\n\n"
        "<!-- frontier-equal-steps:begin -->\n<!-- frontier-equal-steps:end -->\n"
    )
    out = tmp_path / "frontier"
    argv = ["--quick", "--equal_steps", "--methods", "SFT,PPO,GRPO", "--output_dir", str(out), "--docs", str(docs)]
    results = frontier.main(argv + ["--plot", str(tmp_path / "f.png")])
    assert not [run for run in results["runs"] if "error" in run], [run.get("error") for run in results["runs"]]
    assert results["sizes"]["ppo_epochs"] == 1
    assert [row["method"] for row in results["rows"]] == ["SFT", "PPO", "GRPO"]
    text = docs.read_text()
    assert "<!-- frontier:begin -->\nkept\n<!-- frontier:end -->" in text  # the equal-rollouts section untouched
    section = text.split("<!-- frontier-equal-steps:begin -->")[1]
    assert (
        "Held fixed across the online methods: the optimizer steps" in section and "| PPO | kl_coef=0.3 |" in section
    )


def test_speed_quick_run_gives_one_finite_row_per_configuration(builtin_cache, tmp_path):
    import speed

    everything = speed.main(["--quick", "--output_dir", str(tmp_path)])
    titles = [title.split(":")[0] for title in everything]
    assert titles == ["Preference pairs", "Image-text pairs", "Online RL", "Online RL", "Diffusion-DPO"]
    for title, group in everything.items():
        assert group["baseline"] in group["results"]
        for name, runs in group["results"].items():
            assert len(runs) == 1
            for key in ("median_step_s", "peak_mem_mb", "weights_mb"):
                assert math.isfinite(runs[0][key]), (title, name, key)
            if not title.startswith("Diffusion"):
                assert runs[0]["tokens_per_s"] > 0, (title, name)
    groups = everything.values()
    pairs = next(iter(groups))["results"]
    assert set(pairs) == {"dpo", "unlikelihood", "sft (chosen)", "reward"}
    assert pairs["unlikelihood"][0]["weights_mb"] < pairs["dpo"][0]["weights_mb"]  # no reference copy
    text = (tmp_path / "speed.md").read_text()
    assert text.count("#### ") == len(everything)
    assert "| unlikelihood |" in text and "| remax |" in text and "| lora_disabled_adapter |" in text
