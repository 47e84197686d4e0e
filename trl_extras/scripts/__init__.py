"""Training scripts behind ``trl-extras <subcommand>``, one module per trainer, in the style of TRL's ``trl/scripts``.

Each module has ``make_parser()`` and ``main(script_args, training_args, model_args, dataset_args)`` and runs on its
own (``python -m trl_extras.scripts.dpo --config configs/dpo.yaml``), but the CLI (``trl_extras.cli``) adds the
config checks (unknown keys with suggestions, trainer/config mismatches) and one-line error messages.
"""
