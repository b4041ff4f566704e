"""Training an ensemble (:class:`~napari_msd.models.ensemble.Ensemble`): its members one after another, from the
same strokes, as one run that ends in one model file.

:class:`EnsembleTrainer` has the :class:`~.engine.Trainer`'s face (``run()`` a generator of events; ``stop``,
``pause``, ``resume``, ``between_steps``, ``snapshot``, ``metadata`` from any thread), so the command line, the Train
dock and the training process drive either; :func:`make_trainer` builds the one a configuration (or the model being
retrained) asks for, and :func:`train_ensemble` is the plain generator.

* **Members**: from ``config.model["members"]`` of ``config.arch == "ensemble"`` (default
  ``models.registry.PRESETS["ensemble"]``: three MS-D), or ``members`` (a count, or a list of
  ``{"arch", "config"}``). Member ``m`` is a :class:`~.engine.Trainer` run with ``config.seed + m``: its own
  initialisation, patches, augmentation, forest teacher and its own held-out strokes (the strokes are split by the
  seed), so every member learns from a different part of the strokes and is judged on the part it did not see: a
  cross-validation ensemble (Krogh & Vedelsby 1995, the ensemble reference of the genenet paper), whose members
  disagree where the strokes say least. All members are fed the first member's input normalisation.
* **Budget**: with a time limit, each member gets ``config.time_limit / N`` (the same CPU minutes as one network);
  a number of steps is each member's.
* **Events**: :class:`~.events.MemberStarted`, then every event of the member's training wrapped in
  :class:`~.events.MemberEvent` (its own ``TrainingFinished`` included), then :class:`~.events.MemberFinished`; at the
  end :class:`~.events.Saved` (with ``output``) and the ensemble's own ``TrainingFinished`` (steps and seconds of all
  members, ``best_metrics`` the kept members' mean, each on its own held-out strokes; ``best_step`` None).
* **Control**: :meth:`EnsembleTrainer.stop` stops the member in training (it keeps its best weights, as a stopped
  network does) and trains no further member; :meth:`EnsembleTrainer.skip_member` stops the member in training,
  leaves it out, and goes on with the next.
* **Left out**: a member the engine judges collapsed (``training.health``), a skipped one, one that made no step.
  Nothing is saved when no member is left.
* **Retraining** (``init``: an ensemble's file or ``(model, metadata)``): every member is fine-tuned from its own
  weights with the same replayed labels, exactly as a single network is (its parent judged first, kept unless
  beaten; its prior correction, recorded in ``provenance["members"]``, undone first). A member whose retraining gives
  no usable network, or that is skipped or not reached, keeps its earlier weights, so a retraining never shrinks the
  ensemble; the ensemble keeps its parent when every member did.
* **Stored**: one model file of the ensemble (``save_model``): class names, colours, input and normalisation of the
  first member, ``provenance["members"]`` each member's provenance (seed, steps, metrics, prior, effective halo),
  ``provenance["ensemble"]`` what was kept, and the effective halo the largest member's (None when one was not
  measured: prediction then uses the receptive field).

Not done: self-supervised pretraining of the members (``config.pretrained`` is ignored: a pretrained body is one
network's), a model file written after each member (a killed run leaves nothing).
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from .. import __version__
from ..base.normalization import Normalization
from ..io.model_file import ModelMetadata, load_model, read_metadata, save_model
from ..models.ensemble import Ensemble
from ..models.registry import PRESETS
from .engine import TrainConfig, Trainer, fine_tuning_provenance
from .events import MemberEvent, MemberFinished, MemberStarted, Saved, TrainingFinished
from .sampling import TrainingData

ARCH = Ensemble.arch
DEFAULT_MEMBERS = 3  # members of an ensemble of another architecture's networks, unless told
SIZES = ("in_channels", "out_channels", "ndim")  # set by each member's training (input description, classes)
SUMMARY = ("global_accuracy", "class_accuracy", "mean_iou", "loss")  # averaged over the members as the ensemble's
T = TypeVar("T")

Init = str | Path | tuple[torch.nn.Module, ModelMetadata] | None


def member_specs(config: TrainConfig, members: int | Sequence[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The members to train, ``[{"arch", "config"}]`` without sizes: from ``members`` (a list), else ``config``'s
    (``arch == "ensemble"``: its ``model["members"]`` or the preset's; another arch: ``DEFAULT_MEMBERS`` networks of
    it), repeated or cut to ``members`` when that is a count."""
    if members is not None and not isinstance(members, int):
        specs = list(members)
    elif config.arch == ARCH:
        specs = list({**PRESETS[ARCH], **config.model}.get("members") or [])
    else:
        specs = [{"arch": config.arch, "config": dict(config.model)}] * DEFAULT_MEMBERS
    if isinstance(members, int):
        if members < 1:
            raise ValueError(f"an ensemble needs at least one member, got {members}")
        if not specs:
            raise ValueError("the ensemble's configuration lists no member")
        specs = [specs[k % len(specs)] for k in range(members)]
    if not specs:
        raise ValueError("an ensemble needs at least one member; list them in model['members']")
    out = []
    for k, spec in enumerate(specs):
        if not isinstance(spec, dict) or not isinstance(spec.get("arch"), str) or spec["arch"] == ARCH:
            raise ValueError(
                f"ensemble member {k} must be {{'arch': a network's name, 'config': {{...}}}}, got {spec!r}"
            )
        config_k = {k2: v for k2, v in dict(spec.get("config") or {}).items() if k2 not in SIZES}
        out.append({"arch": spec["arch"], "config": config_k})
    return out


def _is_ensemble(init: Init) -> bool:
    if init is None:
        return False
    meta = read_metadata(init) if isinstance(init, str | Path) else init[1]
    return meta.arch == ARCH


def make_trainer(
    data: Sequence[TrainingData],
    config: TrainConfig,
    *,
    init: Init = None,
    replay: Sequence[TrainingData] = (),
    output: str | Path | None = None,
    overwrite: bool = False,
) -> Trainer | EnsembleTrainer:
    """An :class:`EnsembleTrainer` for ``config.arch == "ensemble"`` or an ensemble to retrain (``init``), else a
    :class:`~.engine.Trainer`; the same arguments."""
    if _is_ensemble(init) or (init is None and config.arch == ARCH):
        return EnsembleTrainer(data, config, init=init, replay=replay, output=output, overwrite=overwrite)
    return Trainer(data, config, init=init, replay=replay, output=output, overwrite=overwrite)


def train_ensemble(
    data: Sequence[TrainingData],
    config: TrainConfig,
    members: int | Sequence[dict[str, Any]] | None = None,
    *,
    init: Init = None,
    replay: Sequence[TrainingData] = (),
    output: str | Path | None = None,
    overwrite: bool = False,
    stop: threading.Event | Callable[[], bool] | None = None,
) -> Iterator[Any]:
    """Train an ensemble (see the module docstring), yielding its events; ``stop`` (an event or a callable, checked
    after every event) stops it as :meth:`EnsembleTrainer.stop` does."""
    trainer = EnsembleTrainer(data, config, members, init=init, replay=replay, output=output, overwrite=overwrite)
    stopped = None if stop is None else (stop.is_set if isinstance(stop, threading.Event) else stop)
    for event in trainer.run():
        yield event
        if stopped is not None and stopped():
            trainer.stop()


@dataclasses.dataclass
class _Member:
    """A member's result: its network (CPU, eval), metadata, and how its training went."""

    index: int
    model: torch.nn.Module
    metadata: ModelMetadata
    steps: int
    kept_parent: bool
    halo_skipped: bool = False
    warning: str | None = None


class EnsembleTrainer:
    """Train an ensemble's members one after another; see the module docstring. The arguments are the
    :class:`~.engine.Trainer`'s, and ``members`` (see :func:`member_specs`; a retraining keeps its members)."""

    def __init__(
        self,
        data: Sequence[TrainingData],
        config: TrainConfig | None = None,
        members: int | Sequence[dict[str, Any]] | None = None,
        *,
        init: Init = None,
        replay: Sequence[TrainingData] = (),
        output: str | Path | None = None,
        overwrite: bool = False,
    ):
        self.config = config = copy.deepcopy(config) if config is not None else TrainConfig(arch=ARCH)
        config.check()
        if config.forest_channels:
            raise ValueError("an ensemble's members take the image alone; train without the forest channels")
        self.output = Path(output) if output is not None else None
        if self.output is not None and self.output.exists() and not overwrite:
            raise FileExistsError(f"{self.output} already exists; choose another file name or allow overwriting")
        self.data, self.replay = list(data), list(replay)
        self.parent: Ensemble | None = None
        self.parent_metadata: ModelMetadata | None = None
        self.init_source: str | None = None
        if init is not None:
            model, meta = load_model(init) if isinstance(init, str | Path) else (init[0], init[1])
            if meta.arch != ARCH or not isinstance(model, Ensemble):
                raise ValueError(
                    f"the model to retrain is a {meta.arch} network, not an ensemble; train it with Trainer"
                )
            if members is not None and members != model.n_members:
                raise ValueError(f"a retraining keeps the ensemble's {model.n_members} members; do not give members")
            self.parent, self.parent_metadata = model, meta
            self.init_source = str(init) if isinstance(init, str | Path) else "model in memory"
            self.specs = [{"arch": m["arch"], "config": m["config"]} for m in model.config()["members"]]
        else:
            self.specs = member_specs(config, members)
        self.n_members = len(self.specs)
        self.pretrained = None  # the Trainer's attribute: ensembles start from scratch (see the module docstring)

        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._skip = False  # the member in training is to be left out
        self._paused = False
        self._members: list[_Member] = []
        self._result: Ensemble | None = None
        self._result_metadata: ModelMetadata | None = None
        self.step = 0  # every member's steps so far
        self.collapsed: str | None = None  # after run(): why no usable ensemble came out (nothing saved)
        self.kept_parent = False  # after run(): a retraining gave no better member; the parent is the result
        self.kept_parent_because: str | None = None
        self.left_out: dict[int, str] = {}  # after run(): member index -> why it is not in the ensemble
        # after run(): the networks of members left out after some training (collapsed, skipped), as they are: for a
        # benchmark that scores them anyway (a retraining's such members keep their earlier weights in the ensemble)
        self.left_out_networks: dict[int, tuple[torch.nn.Module, ModelMetadata]] = {}
        # the first member is built now: bad data or settings fail here, as a Trainer's do; the others are fed alike
        first = self._trainer(0, None)
        self.normalization = first.normalization
        self.device = first.device
        self.n_classes, self.class_names = first.n_classes, list(first.class_names)
        self.class_colors = first.class_colors
        if self.parent is None:  # every member's configuration, checked at once (one ensemble of them must build)
            Ensemble(self.specs, config.input.in_channels, first.n_classes, config.input.model_ndim)
        self._current: Trainer | None = first
        self._first: Trainer | None = first
        self.member = 0  # the member in training (0-based)

    # -- control, from any thread -------------------------------------------------------------
    def stop(self) -> None:
        """Stop the member in training after its current step (it keeps its best weights) and train no other."""
        with self._lock:
            self._stop.set()
            if self._current is not None:
                self._current.stop()

    def skip_member(self) -> None:
        """Stop the member in training and leave it out (a retraining: it keeps its earlier weights); the next
        member starts."""
        with self._lock:
            if self._current is not None:
                self._skip = True
                self._current.stop()

    def pause(self) -> None:
        with self._lock:
            self._paused = True
            if self._current is not None:
                self._current.pause()

    def resume(self) -> None:
        with self._lock:
            self._paused = False
            if self._current is not None:
                self._current.resume()

    @property
    def paused(self) -> bool:
        return self._paused

    def between_steps(self, fn: Callable[[], T]) -> Future[T]:
        """``fn`` between two steps of the member in training (:meth:`.engine.Trainer.between_steps`); between two
        members the future is cancelled."""
        with self._lock:
            current = self._current
        if current is not None:
            return current.between_steps(fn)
        future: Future[T] = Future()
        future.cancel()
        return future

    def snapshot(self, into: torch.nn.Module | None = None) -> torch.nn.Module:
        """A copy of the member in training (the live preview), or after :meth:`run` of the ensemble; ``into``: an
        earlier snapshot, refreshed in place when it is the same network."""
        with self._lock:
            current, result = self._current, self._result
        if current is not None:
            return current.snapshot(into if _same_network(into, current.model) else None)
        if result is None:
            raise RuntimeError("no ensemble yet: run() has not finished, or no member was usable")
        if into is not None and _same_network(into, result):
            into.load_state_dict(result.state_dict())
            return into.eval()
        return copy.deepcopy(result).eval()

    def metadata(self) -> ModelMetadata:
        """The metadata of what :meth:`snapshot` gives: the member in training's, or after :meth:`run` the
        ensemble's."""
        with self._lock:
            current, meta = self._current, self._result_metadata
        if current is not None:
            return current.metadata()
        if meta is None:
            raise RuntimeError("no ensemble yet: run() has not finished, or no member was usable")
        return copy.deepcopy(meta)

    @property
    def model(self) -> torch.nn.Module:
        """The ensemble after :meth:`run`; before, the member in training's network."""
        if self._result is not None:
            return self._result
        if self._current is not None:
            return self._current.model
        raise RuntimeError("no ensemble yet")

    @property
    def n_kept(self) -> int:
        """After :meth:`run`: the members in the ensemble (a retraining's include those that kept their weights)."""
        return len(self._members)

    @property
    def halo_skipped(self) -> bool:
        """After :meth:`run`: a kept member's effective halo was not measured (prediction uses the receptive field)."""
        return any(m.halo_skipped for m in self._members)

    # -- the run ---------------------------------------------------------------------------------
    def _member_config(self, m: int) -> TrainConfig:
        cfg = self.config
        spec = self.specs[m]
        limit = None if cfg.time_limit is None else cfg.time_limit / self.n_members
        return dataclasses.replace(  # members take the image alone (an ensemble has no forest channels)
            cfg,
            arch=spec["arch"],
            model=dict(spec["config"]),
            seed=cfg.seed + m,
            time_limit=limit,
            pretrained=None,
            forest_channels=False,
        )

    def _parent_member(self, m: int) -> tuple[torch.nn.Module, ModelMetadata]:
        assert self.parent is not None and self.parent_metadata is not None  # a retraining
        return self.parent.members[m], member_metadata(self.parent, self.parent_metadata, m)

    def _trainer(self, m: int, normalization: Normalization | None) -> Trainer:
        """Member ``m``'s trainer: a retraining starts from its parent member (fed as the parent was), a new member
        from scratch, fed with ``normalization`` (None: estimated, the first member's)."""
        init = self._parent_member(m) if self.parent is not None else None
        return Trainer(self.data, self._member_config(m), init=init, replay=self.replay, normalization=normalization)

    def run(self) -> Iterator[Any]:
        """Train every member, yielding their events (see the module docstring); ends with ``TrainingFinished``."""
        n = self.n_members
        elapsed, reasons, warnings, notes = 0.0, [], [], []
        for m in range(n):
            retraining = self.parent is not None
            if self._stop.is_set():
                self._keep_parent_or_leave_out(m, "not trained: the training was stopped")
                yield self._finished_event(m, 0)
                continue
            trainer = self._first if m == 0 and self._first is not None else self._trainer(m, self.normalization)
            self._first = None
            with self._lock:
                self._current, self._skip, self.member = trainer, False, m
                if self._paused:
                    trainer.pause()
                if self._stop.is_set():
                    trainer.stop()
            yield MemberStarted(m, n, self.specs[m]["arch"], self.config.seed + m, retraining)
            finished: TrainingFinished | None = None
            steps_before = self.step
            for event in trainer.run():
                if isinstance(event, TrainingFinished):
                    finished = event
                yield MemberEvent(m, n, event)
                self.step = steps_before + trainer.step
            with self._lock:
                self._current, skipped = None, self._skip
            assert finished is not None  # a Trainer's run ends with it
            elapsed += finished.elapsed
            reasons.append(finished.reason)
            if (skipped or trainer.collapsed is not None) and trainer.step > 0:
                self.left_out_networks[m] = (trainer.snapshot(), trainer.metadata())
            if skipped:
                self._keep_parent_or_leave_out(m, "skipped")
            elif trainer.step == 0:
                self._keep_parent_or_leave_out(m, "stopped before its first step")
            elif trainer.collapsed is not None:
                self._keep_parent_or_leave_out(m, f"collapsed: {trainer.collapsed}")
            else:
                self._members.append(
                    _Member(
                        m,
                        trainer.snapshot(),
                        trainer.metadata(),
                        trainer.step,
                        trainer.kept_parent,
                        trainer.halo_skipped,
                        finished.warning,
                    )
                )
                if finished.warning:
                    warnings.append(f"member {m + 1}: {finished.warning}")
                if finished.note:
                    notes.append(f"member {m + 1}: {finished.note}")
            yield self._finished_event(m, trainer.step, trainer.kept_parent_because if trainer.kept_parent else None)
            del trainer  # its patches, validation tiles and optimizer go before the next member's
        yield from self._finish(elapsed, reasons, warnings, notes)

    def _keep_parent_or_leave_out(self, m: int, why: str) -> None:
        """A member that gave no usable network: in a retraining it keeps its earlier weights, else it is left out."""
        if self.parent is not None:
            model, meta = self._parent_member(m)
            self._members.append(_Member(m, copy.deepcopy(model).cpu().eval(), meta, 0, True))
        self.left_out[m] = why

    def _finished_event(self, m: int, steps: int, because: str | None = None) -> MemberFinished:
        mine = next((r for r in self._members if r.index == m), None)
        why = self.left_out.get(m)
        if mine is not None and mine.kept_parent:
            why = f"{why or because or 'no better network'}: it keeps its earlier weights"
        return MemberFinished(
            m, self.n_members, mine is not None, steps, why, mine.kept_parent if mine is not None else False
        )

    def _finish(self, elapsed: float, reasons: list[str], warnings: list[str], notes: list[str]) -> Iterator[Any]:
        kept = self._members
        reason = "stopped" if self._stop.is_set() else ", ".join(sorted(set(reasons))) or "stopped"
        path = None
        if not kept:
            if self.step > 0:
                self.collapsed = "no usable member: " + "; ".join(
                    f"member {m + 1} {why}" for m, why in sorted(self.left_out.items())
                )
            metrics: dict[str, Any] = {}
        else:
            self.kept_parent = self.parent is not None and all(r.kept_parent for r in kept)
            if self.kept_parent:
                self.kept_parent_because = "no member beat its earlier weights on the held-out labels"
            ensemble = Ensemble.of([r.model for r in kept]).cpu().eval()
            metrics = _mean_metrics([r.metadata.provenance.get("metrics") or {} for r in kept])
            meta = self._ensemble_metadata(ensemble, kept, metrics)
            with self._lock:
                self._result, self._result_metadata = ensemble, meta
            if self.output is not None and self.step > 0:
                save_model(self.output, ensemble, meta, overwrite=True)  # our own output: checked in __init__
                path = str(self.output)
                yield Saved(path, self.step)
        halos = [r.metadata.effective_halo for r in kept]
        yield TrainingFinished(
            reason,
            self.step,
            elapsed,
            None,
            metrics,
            path,
            max(h for h in halos if h is not None) if halos and None not in halos else None,
            self.collapsed,
            "; ".join(warnings) or None,
            self.kept_parent,
            self.kept_parent_because,
            "; ".join(notes) or None,
        )

    def _ensemble_metadata(self, ensemble: Ensemble, kept: list[_Member], metrics: dict[str, Any]) -> ModelMetadata:
        first = kept[0].metadata
        halos = [r.metadata.effective_halo for r in kept]
        members = [
            {
                **r.metadata.provenance,
                "member": r.index,
                "arch": r.metadata.arch,
                "effective_halo": r.metadata.effective_halo,
                "kept_parent": r.kept_parent,
            }
            for r in kept
        ]
        provenance: dict[str, Any] = {
            "trained_with": f"napari-msd {__version__}",
            "data": [{"name": d.name, "shape": list(d.image.shape), "dtype": str(d.image.dtype)} for d in self.data],
            "steps": self.step,
            "metrics": metrics,
            "members": members,
            "ensemble": {
                "members": len(kept),
                "planned": self.n_members,
                "left_out": {str(m + 1): why for m, why in sorted(self.left_out.items()) if m not in _indices(kept)},
                "metrics": "the members' mean, each on its own held-out strokes",
                "seeds": [self.config.seed + r.index for r in kept],
                "time_limit_per_member": None
                if self.config.time_limit is None
                else self.config.time_limit / self.n_members,
            },
        }
        if self.parent_metadata is not None:
            provenance.update(fine_tuning_provenance(self.init_source, self.parent_metadata, self.replay))
        return ModelMetadata(
            arch=ARCH,
            config=ensemble.config(),
            class_names=list(first.class_names),
            receptive_field=int(ensemble.receptive_field),
            class_colors=list(first.class_colors),
            normalization=dict(first.normalization),
            provenance=provenance,
            effective_halo=max(h for h in halos if h is not None) if None not in halos else None,
            input=dict(first.input),
        )


def member_metadata(ensemble: Ensemble, metadata: ModelMetadata, m: int) -> ModelMetadata:
    """Member ``m`` of an ensemble as a network of its own: the ensemble's classes, input and normalisation, and the
    member's provenance and effective halo as its training recorded them (``provenance["members"]``)."""
    net: Any = ensemble.members[m]  # a registered network: arch, config(), receptive_field
    recorded = (metadata.provenance or {}).get("members") or []
    own = next((p for p in recorded if isinstance(p, dict) and p.get("member", -1) == m), None)
    if own is None and m < len(recorded) and isinstance(recorded[m], dict) and "member" not in recorded[m]:
        own = recorded[m]
    own = dict(own or {})
    halo = own.get("effective_halo")
    return ModelMetadata(
        arch=net.arch,
        config=net.config(),
        class_names=list(metadata.class_names),
        receptive_field=int(net.receptive_field),
        class_colors=list(metadata.class_colors),
        normalization=dict(metadata.normalization),
        provenance={k: v for k, v in own.items() if k not in ("member", "arch", "effective_halo", "kept_parent")},
        effective_halo=halo if isinstance(halo, int) and not isinstance(halo, bool) and halo >= 0 else None,
        input=dict(metadata.input),
    )


def _indices(kept: list[_Member]) -> set[int]:
    return {r.index for r in kept}


def _mean_metrics(per_member: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean over the members of each summary metric every member has (a number)."""
    out: dict[str, Any] = {}
    for key in SUMMARY:
        values = [d.get(key) for d in per_member]
        numbers = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if values and len(numbers) == len(values):
            out[key] = float(np.mean(numbers))
    return out


def _same_network(into: torch.nn.Module | None, net: torch.nn.Module) -> bool:
    """Whether ``into`` is a network of ``net``'s architecture and configuration (its weights can be copied in)."""
    a: Any = into
    b: Any = net
    return a is not None and getattr(a, "arch", None) == b.arch and a.config() == b.config()


__all__ = ["EnsembleTrainer", "make_trainer", "member_metadata", "member_specs", "train_ensemble"]
