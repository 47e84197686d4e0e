import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# The test models are tiny: one thread is as fast as two and does not thrash a shared 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_lm_path(tmp_path_factory):
    """A tiny Llama-style causal LM and tokenizer, saved once per test session."""
    from trl_extras.testing import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture(scope="session")
def tiny_reward_model_path(tmp_path_factory):
    """A tiny one-label sequence classifier (reward model) with the same tokenizer."""
    from trl_extras.testing import build_tiny_reward_model

    return build_tiny_reward_model(tmp_path_factory.mktemp("tiny-rm"))


@pytest.fixture(scope="session")
def builtin_cache(tmp_path_factory):
    """One trl-extras cache (``$TRL_EXTRAS_CACHE``) for the session: the built-in task's models are built once."""
    directory = tmp_path_factory.getbasetemp() / "trl_extras_cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRL_EXTRAS_CACHE", str(directory))
        yield directory
