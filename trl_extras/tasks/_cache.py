"""A small on-disk cache for the built-in task's models: build once per machine, reuse everywhere.

Entries live under ``$TRL_EXTRAS_CACHE`` (default ``~/.cache/trl_extras``) in a directory named after the entry and a
hash of everything that determines its contents, so a change to the task data or the recipe builds a new entry
instead of reusing a stale one. Building happens under a file lock and into a temporary directory that is renamed
into place when complete, so concurrent processes (``accelerate launch`` ranks, parallel test workers) never see a
half-written model and only one of them does the work.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from trl_extras._distributed import without_zero3_init

__all__ = ["cache_dir", "cached_build", "content_hash", "source_hash"]

_COMPLETE_MARKER = ".complete"


def cache_dir() -> Path:
    """Root of the trl-extras cache: ``$TRL_EXTRAS_CACHE`` or ``~/.cache/trl_extras``."""
    root = os.environ.get("TRL_EXTRAS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "trl_extras"
    )
    return Path(root)


def content_hash(*parts) -> str:
    """A short, stable hash of JSON-serialisable ``parts``."""
    payload = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:12]


def source_hash(obj) -> str:
    """Hash of the source file that defines ``obj``: a cache key part that changes whenever its builder code does."""
    import inspect

    return content_hash(inspect.getsource(inspect.getmodule(obj)))


def cached_build(name: str, key: str, build: Callable[[Path], None]) -> str:
    """Return the directory of cache entry ``name-key``, calling ``build(tmp_dir)`` first if it does not exist yet.

    ``build`` writes the entry's files into the empty directory it is given; the directory is renamed into place only
    after ``build`` returns, so a crash leaves no partial entry behind.
    """
    from filelock import FileLock

    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{name}-{key}"
    if (final / _COMPLETE_MARKER).exists():
        return str(final)
    with FileLock(str(root / f"{name}-{key}.lock")):
        if (final / _COMPLETE_MARKER).exists():  # another process built it while we waited
            return str(final)
        if final.exists():  # left over from an interrupted build of an older version of this code
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            with _save_pretrained_writes_on_this_rank(), without_zero3_init():  # saved whole, also in a ZeRO-3 run
                build(tmp)
            (tmp / _COMPLETE_MARKER).write_text(key)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return str(final)


@contextlib.contextmanager
def _save_pretrained_writes_on_this_rank():
    """Let transformers' ``save_pretrained`` write on whichever process builds the entry.

    Under ``torch.distributed`` (an ``accelerate launch`` rank), transformers writes a model's weights and config only
    on global rank 0, whatever ``is_main_process`` says. A cache entry is built by the process that holds the lock,
    any rank (or a rank 0 on another machine): without this, rank 1 would mark an entry complete with a tokenizer and
    no model, and every run would then fail to load it.
    """
    try:
        from transformers.distributed import mixin
    except ImportError:  # an older transformers without the check
        yield
        return
    original = getattr(mixin, "_is_torch_distributed_initialized", None)
    if original is None:
        yield
        return
    mixin._is_torch_distributed_initialized = lambda: False
    try:
        yield
    finally:
        mixin._is_torch_distributed_initialized = original
