import inspect
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from trl_extras import best_of_n
from trl_extras.sampling import best_of_n_kl


def count_e(prompts, completions, **kwargs):
    return [float(c.count("e")) for c in completions]


@pytest.fixture(scope="module")
def lm(tiny_lm_path):
    return AutoModelForCausalLM.from_pretrained(tiny_lm_path), AutoTokenizer.from_pretrained(tiny_lm_path)


def test_keeps_the_highest_reward_and_reward_sees_every_sample(lm):
    model, tokenizer = lm
    seen = []

    def recording_reward(prompts, completions, **kwargs):
        seen.extend(zip(prompts, completions))
        return count_e(prompts, completions)

    prompts = ["The movie was", "I think"]
    results = best_of_n(model, tokenizer, prompts, recording_reward, n=6, max_new_tokens=12, seed=0)
    assert [r["prompt"] for r in results] == prompts
    assert len(seen) == 12 and [p for p, _ in seen] == ["The movie was"] * 6 + ["I think"] * 6
    for r in results:
        assert len(r["completions"]) == 6 and r["rewards"] == [float(c.count("e")) for c in r["completions"]]
        assert r["reward"] == max(r["rewards"])
        assert r["completion"] == r["completions"][r["rewards"].index(max(r["rewards"]))]
    # reproducible under a seed
    again = best_of_n(model, tokenizer, prompts, recording_reward, n=6, max_new_tokens=12, seed=0)
    assert [r["completions"] for r in again] == [r["completions"] for r in results]


def test_weighted_rewards_and_none_is_never_chosen(lm):
    model, tokenizer = lm

    def none_for_first(prompts, completions, **kwargs):
        return [None] + [0.0] * (len(completions) - 1)

    results = best_of_n(
        model, tokenizer, ["Hello"], [count_e, none_for_first], n=4, reward_weights=[-1.0, 1.0], seed=1
    )
    r = results[0]
    assert r["rewards"][0] == -math.inf
    expected = [-c.count("e") for c in r["completions"][1:]]
    assert r["rewards"][1:] == expected and r["reward"] == max(expected)


def test_reward_model_and_conversational_prompts(lm, tiny_reward_model_path):
    model, tokenizer = lm
    reward_model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model_path)
    prompt = [{"role": "user", "content": "Say something"}]
    r = best_of_n(model, tokenizer, [prompt], reward_model, n=3, max_new_tokens=8, seed=2)[0]
    assert all(c[0]["role"] == "assistant" for c in r["completions"])
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    texts = [text + c[0]["content"] for c in r["completions"]]
    with torch.no_grad():
        direct = reward_model(**tokenizer(texts, return_tensors="pt", padding=True)).logits[:, 0]
    torch.testing.assert_close(torch.tensor(r["rewards"], dtype=torch.float32), direct, rtol=1e-4, atol=1e-5)


def test_analytic_kl():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)
    with pytest.raises(ValueError, match="n must be >= 1"):
        best_of_n_kl(0)


def test_public_names_are_not_shadowed_by_submodules():
    """`from trl_extras import best_of_n` is the function even after every submodule has been imported (a submodule
    named like a public function would replace it on the package)."""
    import importlib
    import pkgutil

    import trl_extras

    for module in pkgutil.walk_packages(trl_extras.__path__, "trl_extras."):
        importlib.import_module(module.name)
    for name in trl_extras.__all__:
        value = getattr(trl_extras, name)
        assert not inspect.ismodule(value), name
    assert trl_extras.best_of_n is best_of_n and trl_extras.best_of_n_kl is best_of_n_kl
