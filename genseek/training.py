"""One training loop for every ``genseek train`` recipe (sparse, repconc, genre, seal, dsi, first).

A recipe keeps its data, its loss and its model-specific saving; what they share is here:

- :func:`add_options`: the options every recipe takes (``--out --split --lr [--steps]
  --max-minutes --seed --device [--autocast] --checkpoint-every --resume --json`` and the
  recipe's flag that replaces an existing ``--out``), one argument group, defaults in ``--help``;
- :func:`placement_for`: where a run trains, by the one device and dtype policy
  (:func:`genseek.models.placement`): ``--device auto`` is a CUDA GPU when there is one, else
  the CPU; master weights stay float32 and ``--autocast bf16`` runs the forward passes in
  bfloat16 (:func:`genseek.models.autocast`);
- :class:`Batches`: the order the examples are seen in, epoch after epoch;
- :class:`Trainer`: the loop: AdamW, gradient clipping, sharpness-aware minimisation, the
  ``--max-minutes`` budget, progress with rate and ETA (:class:`genseek.progress.Meter`),
  checkpoints, and per-epoch hooks for recipes that work epoch by epoch;
- :func:`holdout`: a seeded dev set of query ids kept out of training; :func:`holdout_rows`
  the same for rows of a query matrix, as a fraction drawn from the recipe's generator;
- :func:`save_folder` and :func:`write_meta`: a model folder and its metadata, written
  atomically (a temporary folder renamed into place; JSON through a temporary file).

Resuming is explicit. A run writes a checkpoint into ``OUT/checkpoint/`` every
``--checkpoint-every`` optimiser steps and when ``--max-minutes`` stops it: ``state.json``
(the step, the batch order and its random generator, the loss history, the run's options)
and ``tensors-STEP.pt`` (the trainable weights, the optimiser state and torch's random
generators), each written to a temporary file and renamed; ``state.json`` is written last and
names its tensors file, so a run killed while writing leaves the previous checkpoint whole.
``--resume`` continues from it and ends with the weights the uninterrupted run would have had;
its options must be those of the interrupted run (the checkpoint holds them; only ``--out``,
``--max-minutes``, ``--checkpoint-every``, ``--device``, ``--json`` and the replace flag may
differ), anything else is refused. Without ``--resume`` an ``--out`` holding a checkpoint is
refused like any non-empty one. A run that does all its steps leaves no checkpoint; one that
``--max-minutes`` stopped saves its model as usual and keeps the checkpoint beside it, so
``--resume`` trains on to ``--steps`` (each invocation gets its own ``--max-minutes``).
Nothing is unpickled: tensors load with ``torch.load(..., weights_only=True)``, the rest is JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import random
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genseek.atomic import atomic_write, atomic_write_json, fsync_dir, read_json_header
from genseek.errors import GenseekError

if TYPE_CHECKING:
    from genseek.models import Placement

CHECKPOINT_DIR = "checkpoint"
"""The subfolder of ``--out`` that holds a run's checkpoint."""
STATE_FILE = "state.json"
CHECKPOINT_FORMAT = "genseek-train-checkpoint"
CHECKPOINT_VERSION = 1
DEFAULT_CHECKPOINT_EVERY = 50
LOOP_OPTIONS = frozenset({"out", "json", "max_minutes", "checkpoint_every", "resume", "device",
                          "force", "overwrite"})
"""Options that may differ between an interrupted run and its ``--resume`` (where the model
goes, how the run reports, how long it may take and where it runs); every other option is
part of the run's config."""

LossFn = Callable[[list[int], int], tuple[Any, dict[str, float]]]
"""``loss(batch, step)``: the batch's example positions and the 0-based step; returns the
loss tensor and the step's metrics (floats) for the history."""


# ---------------------------------------------------------------------------------------------
# command line


def _number(kind: type, ok: Callable[[Any], bool], need: str) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)`` when ``ok`` says it is (``need`` says what is)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {need}, not {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {need}, not {text}")
        return value

    parse.__name__ = f"{kind.__name__} {need}"  # what argparse names in its errors
    return parse


positive_float = _number(float, lambda v: v > 0 and math.isfinite(v), "> 0")
"""argparse type: a finite number > 0."""
count = _number(int, lambda v: v >= 0, ">= 0")
"""argparse type: an integer >= 0."""


def recipe_parser(recipe: str, description: str,
                  epilog: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``genseek train RECIPE``: the shared help format (defaults shown)."""
    from genseek.cliutil import HelpFormatter

    return argparse.ArgumentParser(prog=f"genseek train {recipe}", description=description,
                                   epilog=epilog, formatter_class=HelpFormatter)


def add_options(parser: argparse.ArgumentParser, *, max_minutes: float, lr: float | None,
                dataset_help: str = "BEIR dataset folder to train on",
                dataset_required: bool = True,
                lr_help: str = "AdamW learning rate, > 0", seed: int = 0,
                seed_help: str = "random seed of sampling, shuffling and initialisation",
                steps: int | None = None, steps_help: str = "optimiser steps",
                autocast: bool = False, replace: str | None = None,
                out_help: str = "model folder to write", minutes_alias: str | None = None,
                minutes_help: str = "wall-clock budget in minutes, > 0: the run stops there, "
                                    "saves its model and a checkpoint that --resume continues",
                split_help: str = "the qrels split whose queries train",
                ) -> argparse._ArgumentGroup:
    """Add the options every recipe shares to ``parser``, in one group, with the recipe's
    defaults: ``--dataset --out --split --lr [--steps] --max-minutes --seed --device
    [--autocast] --checkpoint-every --resume --json`` and, if ``replace`` names it
    (``--force``, ``--overwrite``), the flag that replaces an existing ``--out``.
    ``minutes_alias`` is a second name for ``--max-minutes`` that a recipe has always
    accepted. Returns the group."""
    from genseek.cliutil import positive

    g = parser.add_argument_group("training loop (shared by every recipe)")
    g.add_argument("--dataset", required=dataset_required, type=Path, metavar="DIR",
                   default=None, help=dataset_help)
    g.add_argument("--out", required=True, type=Path, metavar="OUT", help=out_help)
    g.add_argument("--split", default="train", help=split_help)
    g.add_argument("--lr", type=positive_float, default=lr, help=lr_help)
    if steps is not None:
        g.add_argument("--steps", type=positive, default=steps, metavar="N", help=steps_help)
    names = ["--max-minutes"] + ([minutes_alias] if minutes_alias else [])
    g.add_argument(*names, dest="max_minutes", type=positive_float, default=max_minutes,
                   metavar="MIN", help=minutes_help)
    g.add_argument("--seed", type=int, default=seed, help=seed_help)
    g.add_argument("--device", default="auto",
                   help="where to train: auto (a CUDA GPU when there is one, else mps, else the "
                        "CPU; $GENSEEK_DEVICE overrides auto), cpu, cuda, cuda:N or mps")
    if autocast:
        g.add_argument("--autocast", choices=["off", "bf16"], default="off",
                       help="bf16: forward passes in bfloat16 autocast, fp32 master weights "
                            "(about 2x faster on CPUs with AMX/AVX512-BF16, and on GPUs)")
    g.add_argument("--checkpoint-every", type=count, default=DEFAULT_CHECKPOINT_EVERY,
                   metavar="N", help="write a checkpoint into OUT/checkpoint every N optimiser "
                                     "steps (0: only when --max-minutes stops the run)")
    g.add_argument("--resume", action="store_true",
                   help="continue the interrupted run whose checkpoint OUT holds (same "
                        "options; it ends as the uninterrupted run would have)")
    if replace:
        g.add_argument(replace, action="store_true",
                       help="replace --out if it exists (and any checkpoint in it)")
    g.add_argument("--json", action="store_true",
                   help="print the run summary as one JSON object")
    return g


def placement_for(args: argparse.Namespace) -> Placement:
    """The run's :class:`~genseek.models.Placement`: ``--device`` by the one policy, dtype
    bfloat16 with ``--autocast bf16``, else float32 (models load in float32 either way)."""
    from genseek.models import placement

    bf16 = getattr(args, "autocast", "off") == "bf16"
    return placement(getattr(args, "device", None), "bfloat16" if bf16 else "float32")


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The options that make a run what it is (all but :data:`LOOP_OPTIONS`), as JSON values:
    what a checkpoint records and a ``--resume`` must match."""
    return _jsonable({k: v for k, v in sorted(vars(args).items()) if k not in LOOP_OPTIONS})


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def claim_out(out: Path, recipe: str, config: dict[str, Any], *, resume: bool,
              replace: bool, flag: str | None = None) -> Checkpoint:
    """The :class:`Checkpoint` of the run that will write ``out``, after checking that it may.

    ``resume``: ``out`` must hold a checkpoint of ``recipe`` with this ``config``. Otherwise
    an ``out`` that exists and is not empty is refused unless ``replace`` (the recipe's
    ``flag``, or a recipe that always replaces its output); one holding a checkpoint is
    refused with a pointer to ``--resume``. Nothing is created or removed here."""
    out = Path(out)
    ckpt = Checkpoint(out, recipe, config)
    if resume:
        if not ckpt.exists():
            raise GenseekError(f"--resume: {out} holds no checkpoint ({CHECKPOINT_DIR}/"
                               f"{STATE_FILE}) to continue")
        ckpt.check()
        ckpt.resuming = True
        return ckpt
    if replace or not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return ckpt
    how = f"{flag} replaces it" if flag else "choose a new folder"
    if ckpt.exists():
        raise GenseekError(f"--out {out} exists and holds the checkpoint of an interrupted run: "
                           f"--resume continues it, or {how}")
    raise GenseekError(f"--out {out} exists and is not empty ({how})")


# ---------------------------------------------------------------------------------------------
# data order and hold-out


def holdout(ids: Iterable[str], n: int, seed: int) -> list[str]:
    """``n`` of ``ids`` drawn at random with ``seed``, sorted: a dev set kept out of training
    (the same ids, count and seed always give the same set)."""
    pool = sorted(ids)
    if n < 0:
        raise GenseekError(f"--holdout {n}: expected a count >= 0")
    if n and n >= len(pool):
        raise GenseekError(f"--holdout {n}: the split has only {len(pool)} judged queries")
    return sorted(random.Random(seed).sample(pool, n)) if n else []


def holdout_rows(n: int, fraction: float, rng: Any) -> tuple[Any, Any]:
    """``(dev, fit)``: rows ``0..n-1`` in an order drawn by ``rng`` (a numpy ``Generator``,
    which the draw advances), the first ``round(fraction * n)`` (at least one when ``n > 1``,
    none when ``n <= 1``) kept out of training as the dev set, the rest to fit on. Both are
    numpy int arrays in the drawn order."""
    if not 0.0 <= fraction < 1.0:
        raise GenseekError(f"dev fraction {fraction}: expected a value in [0, 1)")
    order = rng.permutation(n)
    n_dev = max(1, int(round(fraction * n))) if n > 1 else 0
    return order[:n_dev], order[n_dev:]


class Batches:
    """Batches of example positions in ``range(n)``, epoch after epoch: each epoch a fresh
    order, shuffled by ``rng`` (a ``random.Random`` or a numpy ``Generator``; ``None``: in
    order), cut into batches of ``size`` (an epoch's last batch may be smaller). An order is
    drawn when the previous one is used up. ``from_end``: batches are taken from the end of
    the order, last position first (the sparse recipe's order, kept so its results stay).
    ``state()`` / ``load()`` carry the order and the generator through a checkpoint."""

    def __init__(self, n: int, size: int, rng: Any = None, *, from_end: bool = False) -> None:
        if n < 1:
            raise GenseekError("train: no training examples")
        if size < 1:
            raise GenseekError(f"train: batch size {size}, expected at least 1")
        self.n, self.size, self.rng, self.from_end = n, size, rng, from_end
        self.order: list[int] = []
        self.epoch = 0  # epochs started

    @property
    def epoch_done(self) -> bool:
        """Whether the current epoch's order is used up (also before the first epoch)."""
        return not self.order

    def next(self) -> list[int]:
        if not self.order:
            self.order = self._shuffled()
            self.epoch += 1
        k = min(self.size, len(self.order))
        if self.from_end:
            batch = self.order[-k:][::-1]
            del self.order[-k:]
        else:
            batch = self.order[:k]
            del self.order[:k]
        return batch

    def _shuffled(self) -> list[int]:
        if self.rng is None:
            return list(range(self.n))
        if isinstance(self.rng, random.Random):
            order = list(range(self.n))
            self.rng.shuffle(order)
            return order
        return [int(i) for i in self.rng.permutation(self.n)]

    def _kind(self) -> str | None:
        if self.rng is None:
            return None
        return "python" if isinstance(self.rng, random.Random) else "numpy"

    def state(self) -> dict[str, Any]:
        kind = self._kind()
        if kind == "python":
            version, internal, gauss = self.rng.getstate()
            rng: Any = [version, list(internal), gauss]
        else:
            rng = self.rng.bit_generator.state if kind == "numpy" else None
        return {"n": self.n, "size": self.size, "order": list(self.order), "epoch": self.epoch,
                "generator": kind, "rng": rng}

    def load(self, state: dict[str, Any]) -> None:
        if (state.get("n"), state.get("size"), state.get("generator")) != \
                (self.n, self.size, self._kind()):
            raise GenseekError(f"checkpoint: {state.get('n')} examples in batches of "
                               f"{state.get('size')} ({state.get('generator')} order), this run "
                               f"has {self.n} in batches of {self.size} ({self._kind()} order)")
        self.order, self.epoch = [int(i) for i in state["order"]], int(state["epoch"])
        if self._kind() == "python":
            version, internal, gauss = state["rng"]
            self.rng.setstate((version, tuple(internal), gauss))
        elif self._kind() == "numpy":
            self.rng.bit_generator.state = state["rng"]


# ---------------------------------------------------------------------------------------------
# checkpoints


class Checkpoint:
    """The resumable state of one run of ``recipe`` with ``config``, in ``OUT/checkpoint/``
    (see the module docstring). ``resuming``: the run continues from it."""

    def __init__(self, out: Path, recipe: str, config: dict[str, Any]) -> None:
        self.folder = Path(out) / CHECKPOINT_DIR
        self.recipe = recipe
        self.config = _jsonable(config)
        self.resuming = False

    def exists(self) -> bool:
        return (self.folder / STATE_FILE).is_file()

    def _header(self) -> dict[str, Any]:
        return read_json_header(self.folder / STATE_FILE, "training checkpoint",
                                CHECKPOINT_FORMAT, CHECKPOINT_VERSION)

    def check(self) -> dict[str, Any]:
        """The checkpoint's state, after checking that it is of this recipe and config."""
        header = self._header()
        if header.get("recipe") != self.recipe:
            raise GenseekError(f"{self.folder}: a checkpoint of recipe {header.get('recipe')!r}, "
                               f"not {self.recipe!r}")
        saved = header.get("config") or {}
        differ = sorted(k for k in set(saved) | set(self.config)
                        if saved.get(k) != self.config.get(k))
        if differ:
            shown = ", ".join(f"{k} {saved.get(k)!r} there, {self.config.get(k)!r} here"
                              for k in differ)
            raise GenseekError(f"{self.folder}: the interrupted run had other options ({shown}); "
                               "--resume with the same ones")
        return header

    def read(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(state, tensors)``; tensors load with ``weights_only=True`` (nothing unpickled)."""
        import torch

        header = self.check()
        name = str(header.get("tensors", ""))
        if not name or Path(name).name != name:
            raise GenseekError(f"{self.folder / STATE_FILE}: no tensors file named")
        try:
            tensors = torch.load(self.folder / name, map_location="cpu", weights_only=True)
        except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GenseekError(f"{self.folder / name}: unreadable checkpoint ({first})") from None
        if not isinstance(tensors, dict):
            raise GenseekError(f"{self.folder / name}: not a checkpoint")
        return header, tensors

    def write(self, state: dict[str, Any], tensors: dict[str, Any]) -> None:
        """Write the checkpoint of ``state["step"]``: the tensors file, then ``state.json``
        naming it (each atomically), then drop older tensors files."""
        import torch

        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"tensors-{int(state['step'])}.pt"
        atomic_write(self.folder / name, lambda tmp: torch.save(tensors, tmp))
        atomic_write_json(self.folder / STATE_FILE,
                          {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                           "recipe": self.recipe, "config": self.config, "tensors": name,
                           **state})
        for old in self.folder.glob("tensors-*.pt"):
            if old.name != name:
                old.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# the loop


@dataclass
class Result:
    """What a :meth:`Trainer.run` did, counting every run it resumed."""

    steps: int
    planned: int
    seconds: float
    stopped_by: str  # "steps" (all done) or "time" (--max-minutes)
    history: list[dict[str, float]]
    resumed_at: int | None = None

    @property
    def complete(self) -> bool:
        return self.stopped_by == "steps"

    def values(self, key: str = "loss") -> list[float]:
        return [h[key] for h in self.history if key in h]

    def summary(self) -> dict[str, Any]:
        """The loop's part of a model folder's metadata."""
        out: dict[str, Any] = {"steps": self.steps, "planned_steps": self.planned,
                               "stopped_by": self.stopped_by,
                               "train_seconds": round(self.seconds, 1)}
        if self.resumed_at is not None:
            out["resumed_at"] = self.resumed_at
        return out


ExtraState = tuple[Callable[[], tuple[dict[str, Any], dict[str, Any]]],
                   Callable[[dict[str, Any], dict[str, Any]], None]]


class Trainer:
    """AdamW on ``params`` (tensors, or param-group dicts with their own ``lr`` and
    ``weight_decay``) for ``steps`` optimiser steps over ``batches``.

    Each step: ``loss(batch, step)`` under :func:`genseek.models.autocast` (``where``,
    ``autocast``), backward, with ``sam`` > 0 a sharpness-aware step (the gradient taken at
    ``w + sam g/|g|`` and applied at ``w``, Foret et al. 2021), gradient clipping to ``clip``
    (norm over ``clip_params``, default the trained ones), the optimiser step.

    The ``max_seconds`` budget counts from ``started`` (a ``clock`` reading; default the
    start of :meth:`run`) and is checked before each step, or with ``per_epoch`` after each
    epoch (the run stops after the epoch that passes it). ``on_epoch_start(epoch)`` and
    ``on_epoch_end(epoch)`` (1-based) run around each epoch of ``batches``. ``checkpoint``:
    resume from it if it is ``resuming``, write it every ``every`` steps and when the budget
    stops the run; ``extra_state`` is the recipe's own resumable state, a pair
    ``(get() -> (json, tensors), set(json, tensors))``.
    """

    def __init__(self, params: Sequence[Any], *, steps: int, batches: Batches, lr: float,
                 weight_decay: float = 0.01, where: Placement | None = None,
                 autocast: bool = False, clip: float | None = None,
                 clip_params: Sequence[Any] | None = None, sam: float = 0.0,
                 max_seconds: float | None = None, started: float | None = None,
                 per_epoch: bool = False, checkpoint: Checkpoint | None = None, every: int = 0,
                 on_epoch_start: Callable[[int], None] | None = None,
                 on_epoch_end: Callable[[int], None] | None = None,
                 extra_state: ExtraState | None = None, desc: str = "train",
                 progress: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        import torch

        from genseek.models import placement

        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
        self.trainable = [p for g in self.opt.param_groups for p in g["params"]]
        self.steps, self.batches = int(steps), batches
        self.where = where if where is not None else placement("cpu", "float32")
        self.autocast, self.sam = autocast, sam
        self.clip = clip
        self.clip_params = list(clip_params) if clip_params is not None else self.trainable
        self.max_seconds, self.started, self.per_epoch = max_seconds, started, per_epoch
        self.checkpoint, self.every = checkpoint, every
        self.on_epoch_start, self.on_epoch_end = on_epoch_start, on_epoch_end
        self.extra_state = extra_state
        self.desc, self.progress, self.clock = desc, progress, clock
        self.history: list[dict[str, float]] = []
        self.step = 0

    # -- checkpoints -------------------------------------------------------------------------

    def _save(self, seconds: float) -> None:
        import torch

        if self.checkpoint is None:
            return
        extra_json, extra_tensors = self.extra_state[0]() if self.extra_state else ({}, {})
        tensors = {"params": [p.detach().cpu() for p in self.trainable],
                   "optimizer": self.opt.state_dict(), "torch_rng": torch.get_rng_state(),
                   "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available()
                   else [], "extra": extra_tensors}
        self.checkpoint.write({"step": self.step, "planned": self.steps,
                               "seconds": round(seconds, 3), "batches": self.batches.state(),
                               "history": self.history, "extra": extra_json}, tensors)

    def _restore(self) -> float:
        import torch

        assert self.checkpoint is not None
        state, tensors = self.checkpoint.read()
        saved = tensors.get("params") or []
        if int(state.get("planned", -1)) != self.steps or len(saved) != len(self.trainable) \
                or any(tuple(s.shape) != tuple(p.shape) for s, p in zip(saved, self.trainable,
                                                                         strict=True)):
            raise GenseekError(f"{self.checkpoint.folder}: the checkpoint does not fit this "
                               "run (other steps or other trained weights)")
        with torch.no_grad():
            for p, s in zip(self.trainable, saved, strict=True):
                p.copy_(s)
        self.opt.load_state_dict(tensors["optimizer"])
        torch.set_rng_state(tensors["torch_rng"])
        if tensors.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(tensors["cuda_rng"])
        self.batches.load(state["batches"])
        if self.extra_state:
            self.extra_state[1](state.get("extra") or {}, tensors.get("extra") or {})
        self.step, self.history = int(state["step"]), list(state["history"])
        return float(state.get("seconds", 0.0))

    # -- one step ----------------------------------------------------------------------------

    def _sam(self, loss: LossFn, batch: list[int]) -> None:
        import torch

        from genseek.models import autocast

        params = self.trainable
        with torch.no_grad():
            norm = torch.sqrt(sum((p.grad ** 2).sum() for p in params if p.grad is not None))
            eps = [None if p.grad is None else p.grad * (self.sam / (norm + 1e-12))
                   for p in params]
            for p, e in zip(params, eps, strict=True):
                if e is not None:
                    p.add_(e)
        self.opt.zero_grad(set_to_none=True)
        with autocast(self.where, self.autocast):
            again, _ = loss(batch, self.step)
        again.backward()
        with torch.no_grad():
            for p, e in zip(params, eps, strict=True):
                if e is not None:
                    p.sub_(e)

    def _out_of_time(self, since: float) -> bool:
        return self.max_seconds is not None and self.clock() - since > self.max_seconds

    def run(self, loss: LossFn) -> Result:
        """Train to ``steps`` (or the budget); the :class:`Result`."""
        import torch

        from genseek.models import autocast
        from genseek.progress import Meter

        before = 0.0
        resumed_at = None
        if self.checkpoint is not None and self.checkpoint.resuming:
            before = self._restore()
            resumed_at = self.step
        start = self.clock()
        since = self.started if self.started is not None else start
        stopped = "steps"
        report = max(1, self.steps // 10)
        meter = Meter(self.steps, self.desc, unit="step", enabled=self.progress,
                      initial=self.step)
        try:
            while self.step < self.steps:
                if not self.per_epoch and self._out_of_time(since):
                    stopped = "time"
                    break
                if self.batches.epoch_done and self.on_epoch_start is not None:
                    self.on_epoch_start(self.batches.epoch + 1)
                batch = self.batches.next()
                with autocast(self.where, self.autocast):
                    value, metrics = loss(batch, self.step)
                self.opt.zero_grad(set_to_none=True)
                value.backward()
                if self.sam > 0:
                    self._sam(loss, batch)
                if self.clip is not None:
                    torch.nn.utils.clip_grad_norm_(self.clip_params, self.clip)
                self.opt.step()
                self.history.append({"step": self.step, "loss": float(value.detach()),
                                     **metrics})
                self.step += 1
                meter.update(1)
                if self.step % report == 0 or self.step == self.steps:
                    recent = [h["loss"] for h in self.history[-report:]]
                    meter.write(f"genseek: {self.desc}: step {self.step}/{self.steps}, loss "
                                f"{sum(recent) / len(recent):.4f}")
                if self.batches.epoch_done and self.on_epoch_end is not None:
                    self.on_epoch_end(self.batches.epoch)
                if self.step >= self.steps:
                    break
                if self.per_epoch and self.batches.epoch_done and self._out_of_time(since):
                    stopped = "time"
                    break
                if self.every and self.step % self.every == 0:
                    self._save(before + self.clock() - start)
        finally:
            meter.close()
        self.opt.zero_grad(set_to_none=True)
        seconds = before + self.clock() - start
        if stopped == "time":
            self._save(seconds)
        return Result(self.step, self.steps, seconds, stopped, self.history, resumed_at)


# ---------------------------------------------------------------------------------------------
# model folders


def save_folder(out: Path, write: Callable[[Path], None], *,
                keep_checkpoint: bool = False) -> Path:
    """Write the model folder ``out`` atomically: ``write(tmp)`` fills a new folder beside it,
    which is renamed into place (an old ``out`` is renamed aside first, then removed).
    ``keep_checkpoint``: the old folder's ``checkpoint/`` is copied in first (a run that its
    time budget stopped, so ``--resume`` can go on); otherwise it goes with the old folder."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp, old = out.with_name(f".{out.name}.{tag}.tmp"), out.with_name(f".{out.name}.{tag}.old")
    tmp.mkdir()
    try:
        write(tmp)
        if keep_checkpoint and (out / CHECKPOINT_DIR).is_dir():
            shutil.copytree(out / CHECKPOINT_DIR, tmp / CHECKPOINT_DIR)
        if out.exists():
            out.replace(old)
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            old.replace(out)
        raise
    fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)
    return out


def write_meta(folder: Path, name: str, meta: Any) -> Path:
    """A model folder's metadata file ``folder/name`` as JSON, atomically (temp file, fsync,
    rename)."""
    return atomic_write_json(Path(folder) / name, meta)
