"""The TRL surface trl-extras relies on, in one place: a TRL upgrade that moves it fails here first, with a message
naming what moved. What is pinned is declared in ``trl_extras/_trl_compat.py``; the last test checks that no other
module touches a private TRL name."""

from __future__ import annotations

import ast
import inspect
import pathlib
import re
import textwrap

import pytest
import torch
import trl
from trl import DPOTrainer, GRPOConfig, GRPOTrainer
from trl.trainer.base_trainer import _BaseTrainer
from trl.trainer.dpo_trainer import DataCollatorForVisionPreference
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from trl_extras import MDPOTrainer, PPOTrainer, ReMaxTrainer, UnlikelihoodTrainer, _trl_compat

TRL_CLASSES = {"DPOTrainer": DPOTrainer, "GRPOTrainer": GRPOTrainer, "RewardTrainer": trl.RewardTrainer}
TRL_SOURCES = {"DPOTrainer": "trainer/dpo_trainer.py", "GRPOTrainer": "trainer/grpo_trainer.py"}
TRL_DIR = pathlib.Path(trl.__file__).parent
PACKAGE = pathlib.Path(_trl_compat.__file__).parent

# Only the compat module itself touches TRL internals.
EXCEPTIONS = {"_trl_compat.py"}
EXCEPTION_DIRS = ()

# TRL's documented subclass attributes (model-card name, paper, tags, template): set by every trainer, not internals
DOCUMENTED_UNDERSCORE = {"_name", "_paper", "_tag_names", "_template_file"}


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


# ----------------------------------------------------------------------------------------- signatures we rely on
@pytest.mark.parametrize(
    "owner, name, expected",
    [(owner, name, params) for owner, hooks in _trl_compat.OVERRIDDEN_HOOKS.items() for name, params in hooks.items()],
)
def test_overridden_hook_signatures(owner, name, expected):
    method = getattr(TRL_CLASSES[owner], name, None)
    assert method is not None, f"TRL's {owner} no longer has `{name}`, which trl-extras overrides ({trl.__version__})."
    assert _params(method) == expected, (
        f"TRL's {owner}.{name} now takes {_params(method)}, trl-extras overrides it as {expected}: update the "
        "overrides (grep `def {name}` in trl_extras) and `_trl_compat.OVERRIDDEN_HOOKS`."
    )


@pytest.mark.parametrize(
    "owner, name, expected",
    [(owner, name, params) for owner, calls in _trl_compat.PRIVATE_METHODS.items() for name, params in calls.items()],
)
def test_called_private_method_signatures(owner, name, expected):
    method = getattr(TRL_CLASSES[owner], name, None)
    assert method is not None, f"TRL's {owner} no longer has `{name}`, which `_trl_compat` calls ({trl.__version__})."
    assert _params(method)[: len(expected)] == expected, (
        f"TRL's {owner}.{name} now takes {_params(method)}; `_trl_compat` calls it with {expected[1:]}."
    )


def test_keywords_ppo_passes_to_get_per_token_logps():
    params = _params(GRPOTrainer._get_per_token_logps_and_entropies)
    assert {"batch_size", "compute_entropy", "compute_aux_loss"} <= set(params), params


def test_dpo_compute_loss_is_called_by_compute_loss():
    # UnlikelihoodTrainer / MDPOTrainer override `_compute_loss`: DPO's public `compute_loss` must still route to it
    assert _params(DPOTrainer.compute_loss) == ["self", "model", "inputs", "return_outputs", "num_items_in_batch"]
    assert "_compute_loss(model, inputs, return_outputs)" in inspect.getsource(DPOTrainer.compute_loss)


@pytest.mark.parametrize(
    "owner, name",
    [(owner, name) for owner, names in _trl_compat.PRIVATE_ATTRIBUTES.items() for name in names],
)
def test_private_attributes_are_set_by_trl(owner, name):
    source = (TRL_DIR / TRL_SOURCES[owner]).read_text()
    assert re.search(rf"self\.{name}\s*[:=]", source), (
        f"TRL's {owner} ({TRL_SOURCES[owner]}) no longer sets `self.{name}`, which `_trl_compat` reads or writes: "
        "find what replaced it and update `_trl_compat`."
    )


def test_dpo_token_count_and_tp_size():
    init = inspect.getsource(DPOTrainer.__init__)
    assert "self._total_train_tokens = 0" in init
    assert "self._tp_size = " in init
    assert "_total_train_tokens += " in inspect.getsource(DPOTrainer._compute_loss)  # what add_train_tokens mirrors


# ------------------------------------------------------------------------------------------- the checks we go around
def _function_ast(fn) -> ast.FunctionDef:
    return ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]


def test_dpo_given_ref_model_is_stored_not_loaded():
    """``NoReferenceModel``: a given ``ref_model`` is only compared and stored; the reference is loaded (and a PEFT
    adapter copied into ``"ref"``) only under ``ref_model is None``."""
    init = _function_ast(DPOTrainer.__init__)
    parents = {child: node for node in ast.walk(init) for child in ast.iter_child_nodes(node)}
    uses = []
    for node in ast.walk(init):
        if isinstance(node, ast.Name) and node.id == "ref_model":
            parent = parents[node]
            if isinstance(parent, ast.Compare) and isinstance(parent.ops[0], ast.Is):
                other = parent.comparators[0] if parent.left is node else parent.left
                uses.append(f"is {ast.unparse(other)}")
            elif isinstance(parent, ast.Assign) and ast.unparse(parent.targets[0]) == "self.ref_model":
                uses.append("stored as self.ref_model")
            else:
                uses.append(ast.unparse(parent))
    assert set(uses) == {"is model", "is None", "stored as self.ref_model"}, (
        f"DPOTrainer.__init__ now uses its `ref_model` argument as {sorted(set(uses))}; "
        "`_trl_compat.NoReferenceModel` assumes it is only compared and stored as `self.ref_model`."
    )

    def under_ref_model_is_none(node) -> bool:
        while node in parents:
            node, child = parents[node], node
            if isinstance(node, ast.If) and child in node.body and "ref_model is None" in ast.unparse(node.test):
                return True
        return False

    loads = [n for n in ast.walk(init) if isinstance(n, ast.Call) and ast.unparse(n.func) == "create_model_from_path"]
    reference_loads = [n for n in loads if "ref_model_path" in ast.unparse(n)]
    assert len(reference_loads) == 1 and under_ref_model_is_none(reference_loads[0]), (
        "DPOTrainer.__init__ no longer loads its reference copy only when `ref_model is None`"
    )
    adapter_copies = [
        n for n in ast.walk(init) if isinstance(n, ast.Call) and ast.unparse(n.func).endswith("add_adapter")
    ]
    assert adapter_copies and all(under_ref_model_is_none(n) for n in adapter_copies)


def test_no_reference_model_reads_none_and_refuses_a_model():
    class Trainer:
        ref_model = _trl_compat.NoReferenceModel()

    trainer = Trainer()
    trainer.ref_model = _trl_compat.NO_REFERENCE_MODEL  # what DPOTrainer.__init__ stores
    assert trainer.ref_model is None
    trainer.ref_model = None  # DPOTrainer writes None in its precompute / PEFT branches
    assert trainer.ref_model is None
    with pytest.raises(
        RuntimeError, match="has no reference model, but its `ref_model` was set to a Linear.*TRL's DPOTrainer changed"
    ):
        trainer.ref_model = torch.nn.Linear(1, 1)
    assert isinstance(Trainer.ref_model, _trl_compat.NoReferenceModel)
    assert "ref_model" not in vars(trainer)


def test_reward_trainer_drops_long_pairs_by_max_length_only():
    """``RewardPairLengthCheck`` runs RewardTrainer's ``_prepare_dataset`` with ``max_length=None`` and then drops
    what TRL's filter would: pairs whose ``chosen_ids`` or ``rejected_ids`` is longer than ``max_length``."""
    source = inspect.getsource(trl.RewardTrainer._prepare_dataset)
    assert set(re.findall(r"args\.(max_\w+)", source)) == {"max_length"}
    assert 'len(example["chosen_ids"]) <= args.max_length' in source
    assert 'len(example["rejected_ids"]) <= args.max_length' in source


def test_grpo_num_generations_check_is_one_less_than_2():
    """``grpo_post_init_one_generation`` passes a 1 that answers ``False`` to ``< 2`` only: TRL must compare that way."""
    source = inspect.getsource(GRPOConfig.__post_init__)
    comparisons = re.findall(r"(?<!% )self\.num_generations\s*(<=|>=|==|!=|<|>)\s*(\w+)", source)
    assert comparisons == [("<", "2")], (
        f"GRPOConfig.__post_init__ now compares num_generations as {comparisons}; "
        "`_trl_compat.grpo_post_init_one_generation` only passes `self.num_generations < 2`."
    )
    assert not re.search(r"num_generations\s*(<|<=|==)\s*[12]\b", inspect.getsource(GRPOTrainer.__init__))


def test_grpo_post_init_one_generation_gives_a_plain_int(tmp_path):
    from trl_extras import ReMaxConfig

    kwargs = dict(
        output_dir=str(tmp_path), num_generations=1, per_device_train_batch_size=3, bf16=False, report_to="none"
    )

    config = ReMaxConfig(**kwargs)
    assert type(config.num_generations) is int and config.num_generations == 1
    assert config.generation_batch_size == 3  # the parent's derivations still ran
    with pytest.raises(ValueError, match="at least 2 generations"):
        GRPOConfig(**kwargs)


# --------------------------------------------------------------------------- nothing else touches TRL's internals
def _trl_private_names() -> set[str]:
    names = set()
    for cls in (DPOTrainer, GRPOTrainer, _BaseTrainer):
        names |= {n for n in vars(cls) if n.startswith("_") and not n.startswith("__")}
    for path in ("trainer/dpo_trainer.py", "trainer/grpo_trainer.py", "trainer/base_trainer.py"):
        names |= set(re.findall(r"self\.(_[a-z]\w*)\s*[:=]", (TRL_DIR / path).read_text()))
    return names - DOCUMENTED_UNDERSCORE


def _violations(path: pathlib.Path, private: set[str], hooks: set[str]) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    trl_modules = set()

    def visit(node, function=None, in_class=False):
        if isinstance(node, ast.ClassDef):
            in_class = True
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if in_class and node.name in private and node.name not in hooks:
                found.append(f"line {node.lineno}: overrides TRL's `{node.name}` (not in OVERRIDDEN_HOOKS)")
            function, in_class = node.name, False
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "trl":
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append(f"line {node.lineno}: imports `{alias.name}` from {node.module}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("trl.") and alias.asname:
                    trl_modules.add(alias.asname)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Attribute) and getattr(target.value, "id", None) in trl_modules:
                    found.append(f"line {node.lineno}: patches `{target.attr}` on a TRL module")
        elif isinstance(node, ast.Attribute) and node.attr in private:
            base = node.value
            is_super = isinstance(base, ast.Call) and getattr(base.func, "id", None) == "super"
            if not (is_super and node.attr == function):  # the parent's version of the hook being overridden
                found.append(f"line {node.lineno}: touches TRL's `{node.attr}`")
        for child in ast.iter_child_nodes(node):
            visit(child, function, in_class)

    visit(tree)
    return found


def test_no_private_trl_names_outside_compat():
    private = _trl_private_names()
    hooks = {name for owner in _trl_compat.OVERRIDDEN_HOOKS.values() for name in owner}
    report = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in EXCEPTIONS or relative.startswith(EXCEPTION_DIRS):
            continue
        report += [f"trl_extras/{relative} {v}" for v in _violations(path, private, hooks)]
    assert not report, "go through trl_extras/_trl_compat.py instead:\n" + "\n".join(report)


def test_the_scan_finds_a_private_access(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import trl.trainer.dpo_trainer as m\n"
        "from trl.trainer.base_trainer import _BaseTrainer\n"
        "m.create_model_from_path = None\n"
        "class T:\n"
        "    def _compute_loss(self, model, inputs, return_outputs):\n"
        "        self._metrics['train']\n"
        "        return super()._compute_loss(model, inputs, return_outputs)\n"
    )
    found = _violations(sample, _trl_private_names(), {"_compute_loss"})
    assert [v.split(":")[0] for v in found] == ["line 2", "line 3", "line 6"], found


# --------------------------------------------------------------- per trainer: what each one reads from its parent
# moved from tests/test_unlikelihood.py
def test_unlikelihood_trl_surface():
    from trl.trainer.utils import FusedCausalLMOutput

    # gmpo-style: explicit what UnlikelihoodTrainer checks (`ref_model` refused), the rest forwarded to DPOTrainer
    assert _params(UnlikelihoodTrainer.__init__) == ["self", "model", "ref_model", "args", "kwargs"]
    assert _params(DPOTrainer.__init__)[:4] == ["self", "model", "ref_model", "args"]
    assert {"train_dataset", "eval_dataset"} <= set(_params(DPOTrainer.__init__))  # read from kwargs and checked
    assert _params(UnlikelihoodTrainer._compute_loss) == _trl_compat.OVERRIDDEN_HOOKS["DPOTrainer"]["_compute_loss"]
    init_source = inspect.getsource(DPOTrainer.__init__)
    # what our _compute_loss reads from the fused LM head and from DPOTrainer's state
    fields = set(FusedCausalLMOutput.__dataclass_fields__)
    assert {"log_probs", "entropy", "mean_logits", "is_top1", "aux_loss"} <= fields
    for attribute in ("aux_loss_enabled", "router_aux_loss_coef"):
        assert f"self.{attribute} =" in init_source
    assert DPOTrainer.loss_is_scaled_for_ga is False


# moved from tests/test_remax.py
def test_remax_trl_surface():
    # the hooks ReMax overrides are pinned by test_overridden_hook_signatures; GRPO's loss is used as it is
    assert _params(GRPOTrainer._compute_loss) == ["self", "model", "inputs"]
    # ReMax's __init__ names GRPO's first arguments and forwards the rest (**kwargs); the ones it refuses are GRPO's
    remax_init = inspect.signature(ReMaxTrainer.__init__).parameters
    explicit = [name for name, p in remax_init.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    assert explicit == _params(GRPOTrainer.__init__)[: len(explicit)] and len(explicit) < len(remax_init)
    assert {"tools", "rollout_func", "environment_factory"} <= set(_params(GRPOTrainer.__init__))
    # The greedy pass unpacks the parent's `_generate` output and reads these attributes
    source = inspect.getsource(GRPOTrainer._generate)
    assert (
        "return prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, images, tool_images"
        in source
    )
    single_turn = inspect.getsource(GRPOTrainer._generate_single_turn)
    assert "self.generation_config" in single_turn
    # One pass: the greedy rows' logits processor is added to this call, on the model `unwrap_model` returns
    assert "unwrapped_model.generate(" in single_turn and "generation_config=self.generation_config" in single_turn
    assert "self._generate_single_turn(" in source
    # ... and transformers applies custom processors after its own and before the sampling warpers
    from transformers.generation.utils import GenerationMixin

    processors = inspect.getsource(GenerationMixin._get_logits_processor)
    assert processors.index("(processors, logits_processor)") < processors.index("TemperatureLogitsWarper(")


# moved from tests/test_ppo.py
def test_ppo_trl_surface():
    # GRPO's private hooks PPO overrides or calls are pinned by the tests above; these are transformers' Trainer's
    params = _params
    assert params(GRPOTrainer._compute_loss) == ["self", "model", "inputs"]
    assert params(GRPOTrainer.create_optimizer) == ["self", "model"]
    assert params(GRPOTrainer._clip_grad_norm) == ["self", "model"]
    assert params(GRPOTrainer._save) == ["self", "output_dir", "state_dict"]
    assert params(GRPOTrainer._load_from_checkpoint) == ["self", "resume_from_checkpoint", "model"]
    # PPOTrainer forwards what GRPOTrainer takes (`**kwargs`, by name), plus its own keyword `value_model`
    assert params(PPOTrainer.__init__) == ["self", "model", "reward_funcs", "args", "value_model", "kwargs"]
    assert params(GRPOTrainer.__init__)[:4] == ["self", "model", "reward_funcs", "args"]
    # Under DeepSpeed/FSDP PPO hands the engine policy and critic as one module by setting `self.model` before the
    # Trainer's preparation, which builds the optimizer and prepares `self.model` (the engine's module)
    assert params(GRPOTrainer._prepare_for_training) == [
        "self",
        "max_steps",
        "train_dataloader",
        "resume_from_checkpoint",
    ]
    preparation = inspect.getsource(GRPOTrainer._prepare_for_training)
    assert "self.create_optimizer()" in preparation
    assert "self.accelerator.prepare(self.model, self.optimizer)" in preparation
    assert "self.model = self.model_wrapped = model" in preparation  # FSDP: self.model is the sharded root


# moved from tests/test_mdpo.py
def test_mdpo_trl_surface():
    # gmpo-style: explicit what MDPOTrainer checks, the rest forwarded to DPOTrainer in DPO's order
    assert _params(MDPOTrainer.__init__) == ["self", "model", "ref_model", "args", "kwargs"]
    assert _params(DPOTrainer.__init__)[:4] == ["self", "model", "ref_model", "args"]
    assert {"train_dataset", "eval_dataset"} <= set(_params(DPOTrainer.__init__))  # read from kwargs and checked
    collator_fields = inspect.signature(DataCollatorForVisionLanguageModeling).parameters
    assert {"processor", "max_length", "completion_only_loss"} <= set(collator_fields)
    assert "processor" in inspect.signature(DataCollatorForVisionPreference).parameters
    # DPOTrainer computes the policy and reference log-probs with the fused LM head, which our forward hooks extend
    source = inspect.getsource(DPOTrainer._compute_loss)
    assert "fused_lm_head=True" in source and ".log_probs" in source
    # ... in one policy forward, then one reference forward (two alternative branches): the order the hooks' records
    # are read in (MDPOTrainer also checks at run time that exactly two such forwards ran)
    forwards = re.findall(r"([\w.]+)\(\*\*\w+, labels=labels, fused_lm_head=True\)", source)
    assert forwards == ["model", "self.model", "self.ref_model"], forwards
    assert source.index("self.model(**ref_model_kwargs") > source.index("if self.precompute_ref_logps:")


# ===================================================================================== Diffusion-DPO (h-diffstruct)
TRL_CLASSES["BaseTrainer"] = _trl_compat.BaseTrainer  # its hooks DiffusionDPOTrainer overrides: OVERRIDDEN_HOOKS


def test_diffusion_dpo_bases():
    """What `_trl_compat.BaseTrainer` / `BaseConfig` give DiffusionDPOTrainer / DiffusionDPOConfig (see there)."""
    from transformers import Trainer, TrainingArguments

    from trl_extras import DiffusionDPOConfig, DiffusionDPOTrainer

    base, config = _trl_compat.BaseTrainer, _trl_compat.BaseConfig
    assert issubclass(base, Trainer) and issubclass(DiffusionDPOTrainer, base) and base is _BaseTrainer
    assert _params(base.__init__) == ["self", "args", "kwargs"]
    init = inspect.getsource(base.__init__)
    assert "super().__init__(*args, **kwargs)" in init and "self._send_telemetry()" in init
    # the model card: written from the class attributes every TRL trainer (and ours) sets
    assert _params(base.create_model_card) == ["self", "model_name", "dataset_name", "tags"]
    card = inspect.getsource(base.create_model_card)
    for read in ("self._tag_names", "self._name", 'self._paper.get("citation")', 'self._paper.get("id")'):
        assert read in card, f"TRL's _BaseTrainer.create_model_card no longer reads {read}"
    assert 'os.path.join(self.args.output_dir, "README.md")' in card
    # transformers' own switch, which DiffusionDPOTrainer sets (not TRL's compatibility shim for older versions)
    assert hasattr(Trainer, "loss_is_scaled_for_ga")
    # TRL's defaults, inherited by DiffusionDPOConfig (docs/diffusion_dpo.md states them)
    assert issubclass(config, TrainingArguments) and issubclass(DiffusionDPOConfig, config)
    defaults = {name: f.default for name, f in config.__dataclass_fields__.items()}
    assert (defaults["logging_steps"], defaults["gradient_checkpointing"], defaults["bf16"]) == (10, True, None)
    assert "self.bf16 = not (self.fp16) if self.bf16 is None else self.bf16" in inspect.getsource(config.__post_init__)


def test_diffusion_dpo_signature_columns():
    """`_trl_compat.set_signature_columns`: transformers' Trainer starts with none and asks the hook before reading."""
    from transformers import Trainer

    assert "self._signature_columns = None" in inspect.getsource(Trainer.__init__)
    remove = inspect.getsource(Trainer._remove_unused_columns)
    assert remove.index("self._set_signature_columns_if_needed()") < remove.index("self._signature_columns")
    # DiffusionDPOTrainer.prediction_step moves its batch with `_prepare_input`, what `_prepare_inputs` does first
    assert "self._prepare_input(inputs)" in inspect.getsource(Trainer._prepare_inputs)


# --------------------------------------------------------------- CLI: what trl-extras borrows from TRL's command line
def test_resolve_accelerate_config_is_trls():
    from trl.cli import accelerate_config

    assert _params(accelerate_config.resolve_accelerate_config_argument) == ["launch_args"]
    assert _trl_compat.resolve_accelerate_config(["--num_processes", "2"]) == ["--num_processes", "2"]
    resolved = _trl_compat.resolve_accelerate_config(["--accelerate_config", "zero2", "--num_processes", "2"])
    assert resolved[0] == "--config_file" and resolved[2:] == ["--num_processes", "2"], resolved
    assert pathlib.Path(resolved[1]) == TRL_DIR / "accelerate_configs" / "zero2.yaml"
    with pytest.raises(ValueError, match="neither a file nor a valid config"):
        _trl_compat.resolve_accelerate_config(["--accelerate_config", "no-such-config"])


def test_trl_parser_parses_through_parse_known_args():
    """scripts/_common.py's parser checks values in `parse_known_args`: TRL's parsing must go through it."""
    from transformers import HfArgumentParser

    assert "self.parse_args_into_dataclasses(" in inspect.getsource(trl.TrlParser.parse_args_and_config)
    assert "self.parse_known_args(" in inspect.getsource(HfArgumentParser.parse_args_into_dataclasses)
    from trl_extras.scripts import sft

    parser = sft.make_parser()
    assert parser.dataclass_types[1] is trl.SFTConfig  # (script arguments, trainer config, ModelConfig, mixture)


def test_only_compat_imports_trls_cli_modules():
    users = [
        path.relative_to(PACKAGE).as_posix()
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "_trl_compat.py" and re.search(r"^\s*(from|import) trl\.cli\b", path.read_text(), re.M)
    ]
    assert not users, f"import TRL's CLI internals through trl_extras/_trl_compat.py, not in {users}"
