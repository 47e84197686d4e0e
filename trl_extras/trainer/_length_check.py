"""The ``_prepare_dataset`` hooks that count what ``max_length`` drops and cuts: for DPOTrainer and its subclasses,
and for TRL's RewardTrainer."""

from __future__ import annotations

import copy

from ..data.lengths import check_preference_lengths, check_reward_pair_lengths


class _CountedMaxLength:
    """``_prepare_dataset`` tokenises as the parent does, but with ``max_length=None`` so that TRL's own silent
    ``max_length`` filter does not run, then hands the tokenised rows to ``_check_lengths``."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if args.max_length is None:
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        unfiltered = copy.copy(args)
        unfiltered.max_length = None
        dataset = super()._prepare_dataset(dataset, processing_class, unfiltered, dataset_name)
        return self._check_lengths(dataset, args, dataset_name)


class PreferenceLengthCheck(_CountedMaxLength):
    """Mixin for ``DPOTrainer`` subclasses (put it first in the bases): the tokenised rows go to
    ``trl_extras.data.lengths.check_preference_lengths``: rows whose prompt fills ``max_length`` are an error (or,
    with ``args.drop_long_prompts``, dropped with a warning giving the count), and completions the collator will cut
    are a warning giving the count and the longest lengths. The collator still truncates with ``args.max_length``,
    as before."""

    def _check_lengths(self, dataset, args, dataset_name):
        return check_preference_lengths(
            dataset,
            max_length=args.max_length,
            truncation_mode=args.truncation_mode,
            drop_long_prompts=getattr(args, "drop_long_prompts", False),
            name=dataset_name,
        )


class RewardPairLengthCheck(_CountedMaxLength):
    """Mixin for ``RewardTrainer`` (put it first in the bases): the tokenised pairs go to
    ``trl_extras.data.lengths.check_reward_pair_lengths``, which drops those TRL's filter would (chosen or rejected
    longer than ``max_length``) and counts them in a warning (an error when none would be left)."""

    def _check_lengths(self, dataset, args, dataset_name):
        return check_reward_pair_lengths(dataset, max_length=args.max_length, name=dataset_name)
