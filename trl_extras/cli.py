"""``trl-extras``: one command line for every trainer, TRL's stock ones and ours, with TRL's conventions.

```bash
trl-extras remax --config configs/remax.yaml                       # offline built-in task, a minute on a CPU
trl-extras dpo --config configs/dpo.yaml --learning_rate 1e-5      # command-line values override the YAML
accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m trl_extras.cli dpo --config configs/dpo.yaml
trl-extras dpo --config configs/dpo.yaml --accelerate_config configs/accelerate/multi_gpu.yaml  # same, launched for you
python -m trl_extras.cli --help
```

Arguments are parsed by TRL's ``TrlParser`` exactly as ``trl dpo`` parses them: a flat YAML file (``--config``) whose
keys are the fields of the script arguments, the trainer's config, ``ModelConfig`` and ``DatasetMixtureConfig``,
overridden by ``--field value`` on the command line. On top of that this command checks the config before anything is
loaded and reports, on one line each and with a non-zero exit: unknown keys (with a "did you mean"), keys that belong
to another trainer, missing files, bad values, reward functions that cannot be imported. Errors raised once training
has started keep their traceback. ``TRL_EXTRAS_DEBUG=1`` shows the traceback of every error.

``accelerate launch`` options given to ``trl-extras`` itself (``--num_processes 2``, ``--accelerate_config FILE`` or
one of TRL's named configs such as ``zero2``) relaunch the command under ``accelerate launch``, as ``trl dpo`` does.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from dataclasses import dataclass

__all__ = ["SUBCOMMANDS", "Subcommand", "main"]


@dataclass(frozen=True)
class Subcommand:
    """One ``trl-extras`` subcommand and its script module."""

    name: str
    help: str
    script: str  # module with make_parser() and main(script_args, training_args, model_args, dataset_args)


SUBCOMMANDS: dict[str, Subcommand] = {
    command.name: command
    for command in [
        Subcommand("sft", "supervised fine-tuning (TRL SFTTrainer)", "trl_extras.scripts.sft"),
        Subcommand("reward", "reward modelling (TRL RewardTrainer)", "trl_extras.scripts.reward"),
        Subcommand("dpo", "direct preference optimisation (TRL DPOTrainer)", "trl_extras.scripts.dpo"),
        Subcommand("grpo", "group relative policy optimisation (TRL GRPOTrainer)", "trl_extras.scripts.grpo"),
        Subcommand("rloo", "REINFORCE leave-one-out (TRL RLOOTrainer)", "trl_extras.scripts.rloo"),
        Subcommand(
            "unlikelihood",
            "likelihood on chosen, unlikelihood on rejected (UnlikelihoodTrainer)",
            "trl_extras.scripts.unlikelihood",
        ),
        Subcommand("remax", "REINFORCE with a greedy baseline (ReMaxTrainer)", "trl_extras.scripts.remax"),
        Subcommand("ppo", "PPO with a value model (PPOTrainer)", "trl_extras.scripts.ppo"),
        Subcommand("mdpo", "multimodal DPO for vision-language models (MDPOTrainer)", "trl_extras.scripts.mdpo"),
        Subcommand(
            "diffusion-dpo",
            "DPO for text-to-image diffusion models (DiffusionDPOTrainer)",
            "trl_extras.scripts.diffusion_dpo",
        ),
    ]
}

# Exit statuses: 2 for a config that cannot work (as argparse does), 1 for a data or model problem.
EXIT_CONFIG, EXIT_RUNTIME = 2, 1
_ACCELERATE_CONFIG_FLAG = "--accelerate_config"


class _CLIError(Exception):
    def __init__(self, message: str, status: int = EXIT_CONFIG):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------------------------------------
# config checks


def _option_names(parser) -> dict[str, str]:
    """Every option string of a parser (``--learning_rate``, ``--learning-rate``, ``--no_bf16``) -> its dest."""
    return {option: action.dest for action in parser._actions for option in action.option_strings}


def _dests(parser) -> set[str]:
    return {action.dest for action in parser._actions if action.option_strings and action.dest != "help"}


def _owners(key: str, exclude: str) -> list[str]:
    """The other subcommands that accept ``key``."""
    owners = []
    for command in SUBCOMMANDS.values():
        if command.name == exclude:
            continue
        try:
            parser = importlib.import_module(command.script).make_parser()
        except Exception:  # a trainer that does not import is reported when it is run, not here
            continue
        if key in _dests(parser):
            owners.append(command.name)
    return owners


def _unknown_key_message(key: str, where: str, command: str, parser) -> str:
    owners = _owners(key, exclude=command)
    if owners:
        return (
            f"{where}: {key!r} is not an option of `trl-extras {command}`; it belongs to "
            f"{', '.join(f'`trl-extras {owner}`' for owner in owners)}. Remove it or run the matching subcommand."
        )
    close = difflib.get_close_matches(key, sorted(_dests(parser)), n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"{where}: unknown key {key!r} for `trl-extras {command}`.{hint}"


def _read_config(path: str) -> dict:
    import yaml

    if not os.path.isfile(path):
        raise _CLIError(f"--config: file not found: {path}")
    try:
        with open(path) as file:
            config = yaml.safe_load(file)
    except yaml.YAMLError as error:
        raise _CLIError(f"--config: {path} is not valid YAML: {error}") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise _CLIError(f"--config: {path} must hold a mapping of `key: value` lines, got a {type(config).__name__}")
    return config


def _accelerate_options() -> set[str]:
    from accelerate.commands.launch import launch_command_parser

    return set(_option_names(launch_command_parser())) | {_ACCELERATE_CONFIG_FLAG}


def _check_args(command: str, parser, argv: list[str]) -> list[str]:
    """Check the YAML keys and command-line options of ``argv``; return the ``accelerate launch`` options in it."""
    errors = []
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise _CLIError("--config: expected a YAML file after --config")
        path = argv[index + 1]
        known = _dests(parser)
        for key in _read_config(path):
            if key != "env" and key not in known:
                errors.append(_unknown_key_message(key, path, command, parser))

    options = _option_names(parser)
    accelerate_options = None
    launch_args: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        index += 1
        if token == "--config":
            index += 1
            continue
        if not token.startswith("-") or _is_number(token):
            continue  # a value of the previous option
        flag = token.split("=", 1)[0]
        if flag in options:
            continue
        accelerate_options = accelerate_options if accelerate_options is not None else _accelerate_options()
        if flag in accelerate_options:
            launch_args.append(token)
            while index < len(argv) and not argv[index].startswith("--") and "=" not in token:
                launch_args.append(argv[index])
                index += 1
            continue
        errors.append(_unknown_key_message(flag.lstrip("-"), "command line", command, parser))
    if errors:
        raise _CLIError("\n".join(errors))
    return launch_args


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _without(argv: list[str], launch_args: list[str]) -> list[str]:
    """``argv`` with the ``accelerate launch`` options removed (they are an ordered subsequence of it)."""
    result, pending = [], list(launch_args)
    for token in argv:
        if pending and token == pending[0]:
            pending.pop(0)
        else:
            result.append(token)
    return result


def _relaunch_with_accelerate(command: str, training_argv: list[str], launch_args: list[str]) -> int:
    """Run ``accelerate launch <launch_args> -m trl_extras.cli <command> <training_argv>`` (as ``trl dpo`` does)."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    from trl_extras._trl_compat import resolve_accelerate_config

    try:
        launch_args = resolve_accelerate_config(launch_args)
    except ValueError as error:
        raise _CLIError(f"{_ACCELERATE_CONFIG_FLAG}: {error}") from None
    args = launch_command_parser().parse_args([*launch_args, "-m", "trl_extras.cli", command, *training_argv])
    import tempfile

    saved = {name: os.environ.get(name) for name in ("ACCELERATE_USE_CPU", LAUNCH_DIR_ENV)}
    with tempfile.TemporaryDirectory(prefix="trl-extras-launch-") as directory:
        watchdog = _ExitWatchdog(directory, _exit_timeout())
        try:
            _spawn_cpu_processes_with_torchrun(args)
            os.environ[LAUNCH_DIR_ENV] = directory
            watchdog.start()
            launch_command(args)
        except Exception:
            if watchdog.report is None:
                raise
        finally:  # the launch's settings, not this process's
            watchdog.stop()
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    if watchdog.report is not None:
        raise _CLIError(watchdog.report, EXIT_RUNTIME)
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# a process that does not exit after the others finished


LAUNCH_DIR_ENV = "TRL_EXTRAS_LAUNCH_DIR"  # set by the launcher: where each process notes its pid and its end
EXIT_TIMEOUT_ENV = "TRL_EXTRAS_EXIT_TIMEOUT"
DEFAULT_EXIT_TIMEOUT = 300.0


def _exit_timeout() -> float:
    value = os.environ.get(EXIT_TIMEOUT_ENV, "").strip()
    try:
        timeout = float(value) if value else DEFAULT_EXIT_TIMEOUT
    except ValueError:
        raise _CLIError(f"{EXIT_TIMEOUT_ENV}: expected a number of seconds (0: wait forever), got {value!r}") from None
    return timeout


def _process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped by its launcher, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _rank_started() -> None:
    """In a launched process: note the pid, and print every thread's stack on SIGUSR1 (what the watchdog sends)."""
    directory = os.environ.get(LAUNCH_DIR_ENV)
    if not directory or not os.path.isdir(directory):
        return
    import faulthandler
    import signal

    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    rank = os.environ.get("RANK", "0")
    with open(os.path.join(directory, f"rank-{rank}.pid"), "w") as file:
        file.write(str(os.getpid()))


def _rank_finished() -> None:
    directory = os.environ.get(LAUNCH_DIR_ENV)
    if directory and os.path.isdir(directory):
        with open(os.path.join(directory, f"rank-{os.environ.get('RANK', '0')}.finished"), "w") as file:
            file.write(str(os.getpid()))


class _ExitWatchdog:
    """In the launcher: stop a run one of whose processes is still there ``timeout`` s after another one finished.

    A process that has trained and saved and then waits (for a collective that another process never joins, or in
    its teardown) keeps the launcher, and the job's allocation, waiting until it is killed. Each launched process
    writes ``rank-R.pid`` when it starts and ``rank-R.finished`` when its command has returned (see ``_run``); once
    one has finished, every process still running ``timeout`` seconds later is sent SIGUSR1 (its Python stack goes
    to the run's stderr) and then SIGTERM, and the launcher exits with an error that names it.
    """

    def __init__(self, directory: str, timeout: float, poll: float = 1.0):
        import threading

        self.directory, self.timeout, self.poll = directory, timeout, poll
        self.report: str | None = None
        self._first_finished = "?"
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="trl-extras-exit-watchdog", daemon=True)

    def start(self) -> None:
        if self.timeout > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def _markers(self, suffix: str) -> dict[str, tuple[int, float]]:
        """``{rank: (pid, time written)}`` for the ``rank-R.<suffix>`` files."""
        found = {}
        for name in os.listdir(self.directory):
            if name.startswith("rank-") and name.endswith(f".{suffix}"):
                path = os.path.join(self.directory, name)
                try:
                    with open(path) as file:
                        found[name[5 : -len(suffix) - 1]] = (int(file.read()), os.path.getmtime(path))
                except (OSError, ValueError):  # being written
                    continue
        return found

    def check(self, now: float | None = None) -> list[tuple[str, int]]:
        """The ``(rank, pid)`` of the processes still running ``timeout`` s after the first one finished."""
        import time

        finished = self._markers("finished")
        if not finished:
            return []
        first_rank, (_, first_time) = min(finished.items(), key=lambda item: item[1][1])
        if (time.time() if now is None else now) - first_time < self.timeout:
            return []
        self._first_finished = first_rank
        return sorted((rank, pid) for rank, (pid, _) in self._markers("pid").items() if _process_alive(pid))

    def _watch(self) -> None:
        while not self._stopped.wait(self.poll):
            stuck = self.check()
            if stuck:
                self.stop_processes(stuck)
                return

    def stop_processes(self, stuck: list[tuple[str, int]]) -> None:
        import signal
        import time

        names = ", ".join(f"rank {rank} (pid {pid})" for rank, pid in stuck)
        self.report = (
            f"{names} had not exited {self.timeout:g} s after rank {self._first_finished} finished; the run was "
            "stopped, its Python stack is printed above. A process that waits after training is a bug (a "
            f"collective only some processes reach): please report it. {EXIT_TIMEOUT_ENV}=seconds waits longer "
            "(0: forever)."
        )
        print(f"trl-extras: error: {self.report}", file=sys.stderr, flush=True)
        alive = [pid for _, pid in stuck]
        if hasattr(signal, "SIGUSR1"):
            _send(alive, signal.SIGUSR1)  # faulthandler prints the stacks; the process keeps waiting
            time.sleep(2.0)
        for sig, wait in ((signal.SIGTERM, 10.0), (getattr(signal, "SIGKILL", signal.SIGTERM), 5.0)):
            _send(alive, sig)
            deadline = time.monotonic() + wait
            while alive and time.monotonic() < deadline:
                time.sleep(0.1)
                alive = [pid for pid in alive if _process_alive(pid)]
            if not alive:
                return


def _send(pids: list[int], sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _spawn_cpu_processes_with_torchrun(args) -> None:
    """Make ``--num_processes N`` (N > 1) start N processes on a machine without accelerators, or with ``--cpu``.

    accelerate starts several processes only through its multi-GPU (torchrun) launcher; without GPUs, or with
    ``--cpu``, it runs a single process whatever ``--num_processes`` says. Here such a launch goes through the torchrun
    launcher instead, and the processes form one CPU (gloo) group (``ACCELERATE_USE_CPU``, which each process's
    ``trl-extras`` also sets when it sees several processes and no accelerator).
    """
    import copy

    from accelerate.commands.launch import _validate_launch_command

    from trl_extras._distributed import has_accelerator

    resolved, _, _ = _validate_launch_command(copy.deepcopy(args))  # what launch_command will decide
    if (resolved.num_processes or 1) <= 1 or resolved.num_machines not in (None, 1):
        return
    engines = (resolved.multi_gpu, resolved.use_deepspeed, resolved.use_fsdp, resolved.use_megatron_lm, resolved.tpu)
    if any(engines) and not resolved.cpu:
        return  # accelerate's own multi-process launcher
    if resolved.cpu or not has_accelerator():
        args.cpu, args.multi_gpu = False, True
        os.environ["ACCELERATE_USE_CPU"] = "true"
        return
    raise _CLIError(
        f"--num_processes {resolved.num_processes}: accelerate would start one process (no multi-process engine is "
        "set); add --multi_gpu, or an --accelerate_config with distributed_type MULTI_GPU, FSDP or DEEPSPEED"
    )


# ---------------------------------------------------------------------------------------------------------------------
# entry point


def _overview() -> str:
    lines = ["usage: trl-extras <subcommand> [--config FILE.yaml] [--field value ...]", "", "subcommands:"]
    for command in SUBCOMMANDS.values():
        lines.append(f"  {command.name:<14} {command.help}")
    lines += [
        "",
        "`trl-extras <subcommand> --help` lists every option. Configs for each subcommand are in configs/;",
        "they run offline on the built-in task (see docs/cli.md).",
    ]
    return "\n".join(lines)


def _use_cpu_process_group_without_accelerators(argv: list[str]) -> list[str]:
    """Several processes (``accelerate launch``, ``torchrun``) on a machine without accelerators: train on the CPU.

    Without this, transformers only forms a CPU (gloo) process group when ``use_cpu`` is set, and otherwise lets each
    process train alone on the whole dataset, silently. ``accelerate launch`` does not pass its config's ``use_cpu``
    on to the processes of a multi-process launch, so we set the variable transformers and accelerate read.

    Under a DeepSpeed config (``ACCELERATE_USE_DEEPSPEED``) ``use_cpu`` would turn DeepSpeed off (accelerate runs it
    only ``if not cpu``): the processes instead get ``--ddp_backend gloo`` (unless given), the backend accelerate
    then records for the group DeepSpeed's CPU accelerator forms; without one it finds no GPU backend and counts 1
    process. Returns ``argv`` with that option added.
    """
    import torch

    has_accelerator = torch.cuda.is_available() or (
        hasattr(torch, "accelerator") and torch.accelerator.current_accelerator() is not None
    )
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or has_accelerator:
        return argv
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        given = any(arg == "--ddp_backend" or arg.startswith("--ddp_backend=") for arg in argv)
        return argv if given else [*argv, "--ddp_backend", "gloo"]
    os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    return argv


def _run(command: Subcommand, argv: list[str]) -> int:
    from trl_extras.scripts import _common

    try:
        module = importlib.import_module(command.script)
    except ImportError as error:
        raise _CLIError(f"`trl-extras {command.name}` cannot start: {error}", EXIT_RUNTIME) from error
    parser = module.make_parser(prog=f"trl-extras {command.name}")
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        return 0
    launch_args = _check_args(command.name, parser, argv)
    training_argv = _without(argv, launch_args)
    training_argv = _use_cpu_process_group_without_accelerators(training_argv)
    try:
        script_args, training_args, model_args, dataset_args = parser.parse_args_and_config(training_argv)
    except _common.ConfigError as error:
        raise _CLIError(str(error)) from None
    except ValueError as error:  # a dataclass __post_init__: TRL's and ours name the field
        raise _CLIError(str(error)) from None
    if launch_args:
        return _relaunch_with_accelerate(command.name, training_argv, launch_args)
    from trl_extras._distributed import check_process_group

    _rank_started()
    check_process_group(training_args)  # several launched processes that would each train alone: an error
    import torch

    _common.TRAINING_STARTED = False
    num_threads = torch.get_num_threads()
    try:
        module.main(script_args, training_args, model_args, dataset_args)
    finally:
        torch.set_num_threads(num_threads)
    _rank_finished()
    return 0


def _setup_errors() -> tuple[type[BaseException], ...]:
    from trl_extras._distributed import LaunchError
    from trl_extras.rewards import RewardFunctionError
    from trl_extras.scripts._common import ConfigError

    return ConfigError, RewardFunctionError, LaunchError, ValueError, TypeError, OSError, ImportError


def _quiet_checkpointing_renames() -> None:
    """transformers 5 renamed ``gradient_checkpointing*`` to ``activation_checkpointing*`` and warns on every use of
    the old names; TRL 1.16's configs (GRPOConfig's default ``gradient_checkpointing=True``) and its
    ``disable_gradient_checkpointing`` use them on every online run, which a user cannot act on. Likewise torch's
    notice that ``pin_memory`` (a Trainer default) does nothing without an accelerator. The CLI hides those two
    notices only; every other warning shows."""
    import warnings

    warnings.filterwarnings(
        "ignore", message=r"`(is_)?gradient_checkpointing\w*` is deprecated", category=FutureWarning
    )
    warnings.filterwarnings("ignore", message=r"'pin_memory' argument is set as true but no accelerator is found")


def _quiet_deepspeed_accelerator_detection() -> None:
    """accelerate imports DeepSpeed whenever it is installed (``extract_model_from_parallel``, on every run), and
    DeepSpeed's accelerator detection then warns "Setting accelerator to CPU" on any machine without a GPU, DeepSpeed
    config or not. There, name the accelerator it would pick (``DS_ACCELERATOR=cpu``) unless one is set."""
    from trl_extras._distributed import has_accelerator

    if "DS_ACCELERATOR" not in os.environ and not has_accelerator():
        os.environ["DS_ACCELERATOR"] = "cpu"


def main(argv: list[str] | None = None) -> int:
    """Run ``trl-extras``; returns the exit status (0 on success)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_overview())
        return 0
    if argv[0] == "--version":
        from trl_extras import __version__

        print(f"trl-extras {__version__}")
        return 0

    name, rest = argv[0], argv[1:]
    prog = f"trl-extras {name}"
    command = SUBCOMMANDS.get(name)
    if command is None:
        close = difflib.get_close_matches(name, list(SUBCOMMANDS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        print(
            f"trl-extras: error: unknown subcommand {name!r}.{hint} Run `trl-extras --help` for the list.",
            file=sys.stderr,
        )
        return EXIT_CONFIG

    debug = os.environ.get("TRL_EXTRAS_DEBUG", "") not in ("", "0")
    _quiet_checkpointing_renames()
    _quiet_deepspeed_accelerator_detection()
    try:
        return _run(command, rest)
    except _CLIError as error:
        if debug:
            raise
        print(f"{prog}: error: {error}", file=sys.stderr)
        return error.status
    except SystemExit as exit_:  # argparse --help, or a script calling sys.exit
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else EXIT_RUNTIME)
    except _setup_errors() as error:
        from trl_extras.scripts import _common

        if debug or _common.TRAINING_STARTED:
            raise
        status = EXIT_CONFIG if isinstance(error, _setup_errors()[:3]) else EXIT_RUNTIME
        print(f"{prog}: error: {error}", file=sys.stderr)
        return status


if __name__ == "__main__":
    raise SystemExit(main())
