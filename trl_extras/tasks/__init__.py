"""Built-in offline tasks: small bundled datasets with a programmatic ground truth, and tiny models trained on them.

They make every trainer runnable with no network (``trl-extras <trainer> --config configs/<trainer>.yaml``) and give
a number to read before and after training. Configs name them with the ``builtin:`` prefix
(``model_name_or_path: builtin:sentiment-sft``, ``dataset_name: builtin:sentiment``); the table of names is in
``trl_extras.tasks.registry``. The task itself is ``trl_extras.tasks.sentiment``.

```python
from trl_extras.tasks import build_prompt_dataset, default_policy_path, ground_truth_reward

policy = default_policy_path()             # tiny SFT policy, trained on first use and cached
dataset = build_prompt_dataset()           # review openings for GRPO / RLOO / ReMax / PPO
ground_truth_reward([" A wonderful, moving film."])  # -> [0.2]
```
"""

from .registry import (
    BUILTIN_PREFIX,
    evaluation_for,
    is_builtin,
    load_builtin_dataset,
    resolve_builtin_model,
    resolve_builtin_reward,
)
from .sentiment import (
    base_policy_path,
    build_preference_dataset,
    build_prompt_dataset,
    build_sft_dataset,
    default_policy_path,
    default_reward_model_path,
    ground_truth_reward,
    sentiment_score,
)

__all__ = [
    "BUILTIN_PREFIX",
    "base_policy_path",
    "build_preference_dataset",
    "build_prompt_dataset",
    "build_sft_dataset",
    "default_policy_path",
    "default_reward_model_path",
    "evaluation_for",
    "ground_truth_reward",
    "is_builtin",
    "load_builtin_dataset",
    "resolve_builtin_model",
    "resolve_builtin_reward",
    "sentiment_score",
]
