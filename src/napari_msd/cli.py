"""The ``napari-msd`` command: headless access to the same core the napari docks use.

Subcommands import what they need lazily, so ``napari-msd info`` never loads Qt.
Every user error ends the program with one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence

from napari_msd.errors import NapariMsdError

FEW_STEPS = 50  # a run of fewer steps than this, ended by time or Ctrl-C, gets a warning that it barely learned
SAMPLE_FILES = ("image.tif", "strokes.tif", "ground_truth.tif")  # what `napari-msd sample` writes


class CLIError(NapariMsdError):
    """A problem with the user's input: printed as one line, exit status 2."""


def _check_output_folder(path: str, option: str) -> None:
    """Refuse an output whose folder is missing (a typo would otherwise create folders silently) or not a folder."""
    import shlex
    from pathlib import Path

    folder = Path(path).expanduser().parent
    if not folder.exists():
        raise CLIError(
            f"output folder {folder} does not exist; create it first (mkdir -p {shlex.quote(str(folder))}) "
            f"or choose another {option}"
        )
    if not folder.is_dir():
        raise CLIError(f"output folder {folder} is a file, not a folder; choose another {option}")


def _cmd_info(args: argparse.Namespace) -> None:
    from .io import ModelFileError, read_metadata

    try:
        metadata = read_metadata(args.model)
    except ModelFileError as err:
        raise CLIError(str(err)) from None
    json.dump(metadata.to_dict(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def _cmd_export(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .io import ImageReadError, ModelFileError
    from .io.bioimageio import export_package

    _check_output_folder(args.output, "-o")
    if Path(args.output).exists() and not args.overwrite:
        raise CLIError(f"{args.output} already exists; pass --overwrite to replace it or choose another file name")
    try:
        written = export_package(
            args.model,
            args.output,
            test_image=args.image,
            overwrite=args.overwrite,
            name=args.name,
            authors=args.author or None,
            license=args.license,
        )
    except (ImageReadError, ModelFileError, ValueError) as err:
        raise CLIError(str(err)) from None
    source = f"cut from {args.image}" if args.image else "synthetic"
    print(
        f"wrote {written}: a bioimage.io model package (TorchScript weights, {source} test input and napari-msd's "
        f"prediction of it); check it with: bioimageio test {written}"
    )


def _training_data(image: str, labels: str, name: str | None = None):
    from .io import open_image, read_labels
    from .training.sampling import TrainingData

    return TrainingData(open_image(image), read_labels(labels), name or image)


def _network(args: argparse.Namespace):
    """``(model overrides, InputSpec)`` from the network options shared by train and pretrain."""
    from .base.inputs import InputSpec

    if args.ndim == 3 and args.slices > 1:
        raise CLIError("--ndim 3 trains on 3D patches; --slices (2.5D) applies to 2D models only")
    mode = "3d" if args.ndim == 3 else ("2.5d" if args.slices > 1 else "2d")
    model = {
        k: v
        for k, v in (("depth", args.depth), ("width", args.width), ("base_channels", args.base_channels))
        if v is not None
    }
    members, member_arch = getattr(args, "members", None), getattr(args, "member_arch", None)
    if args.arch != "ensemble" and (members is not None or member_arch is not None):
        raise CLIError("--members and --member-arch describe an ensemble; add --arch ensemble")
    arch = (member_arch or "msd") if args.arch == "ensemble" else args.arch  # --depth etc. set each member's network
    if members is not None and members < 1:
        raise CLIError(f"--members must be at least 1, got {members}")
    if arch == "msd" and args.base_channels is not None:
        raise CLIError("--base-channels is a U-Net setting; MS-D takes --depth and --width")
    if arch != "msd" and args.width is not None:
        raise CLIError(f"--width is an MS-D setting; a U-Net ({arch}) takes --depth and --base-channels")
    try:
        spec = InputSpec(
            mode=mode, slices=args.slices if mode == "2.5d" else 1, orientations=tuple(args.orientations.split(","))
        )
    except ValueError as err:
        raise CLIError(str(err)) from None
    if args.arch == "ensemble":  # every member of --member-arch, with these options
        from .models.ensemble import ensemble_config
        from .models.registry import PRESETS
        from .training.ensemble import DEFAULT_MEMBERS

        model = ensemble_config(arch, {**PRESETS[arch], **model}, members or DEFAULT_MEMBERS)
    return model, spec


def _train_config(args: argparse.Namespace):
    from .training.augment import Augmentation
    from .training.engine import TrainConfig

    model, spec = _network(args)
    steps = args.steps if args.steps is not None else (None if args.time is not None else 1000)
    if args.pretrained and args.init:
        raise CLIError(
            "--init starts a new model from pretrained weights; --from fine-tunes an existing model "
            "(which already holds them): give one of the two"
        )
    return TrainConfig(
        arch=args.arch,
        model=model,
        input=spec,
        pretrained=args.pretrained,
        patch_size=args.patch_size,
        batch_size=args.batch_size,
        steps=steps,
        time_limit=args.time,
        **({} if args.lr is None else {"learning_rate": args.lr}),
        **({} if args.lr_schedule is None else {"lr_schedule": args.lr_schedule}),
        validate_every=args.validate_every,
        patience=args.patience,
        augmentation=Augmentation(intensity=args.intensity, elastic=args.elastic),
        dice_weight=args.dice,
        **({} if args.edge_weight is None else {"edge_weight": args.edge_weight}),
        **({} if args.teacher_weight is None else {"teacher_weight": args.teacher_weight}),
        **({} if args.seen_tolerance is None else {"seen_tolerance": args.seen_tolerance}),
        device=args.device,
        threads=args.threads,
        seed=args.seed,
        prior_correction=args.prior_correction,
        forest_channels=args.forest_channels,
        **({} if args.precision is None else {"precision": args.precision}),
        class_names=args.class_names.split(",") if args.class_names else None,
    )


def _cmd_train(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .io import ImageReadError, ModelFileError
    from .training.ensemble import EnsembleTrainer, make_trainer
    from .training.events import (
        CpuThreads,
        MemberEvent,
        MemberFinished,
        MemberStarted,
        Paused,
        Saved,
        TrainingFinished,
        TrainingStarted,
        TrainStep,
        Validated,
    )
    from .training.sampling import TrainingDataError

    _check_output_folder(args.output, "-o")
    if Path(args.output).exists() and not args.overwrite:
        raise CLIError(f"{args.output} already exists; pass --overwrite to replace it or choose another file name")
    if args.precision is not None:  # the run's forwards without gradients (validation, previews) follow it too
        from .models.precision import set_inference_precision

        set_inference_precision(args.precision)
    try:
        config = _train_config(args)
        data = [_training_data(args.image, args.labels)] + [_training_data(i, lab) for i, lab in args.pair]
        replay = [_training_data(i, lab) for i, lab in args.replay]
        if replay and not args.init:
            raise CLIError("--replay keeps earlier labels while fine-tuning; use it with --from MODEL")
        trainer = make_trainer(
            data, config, init=args.init, replay=replay, output=args.output, overwrite=args.overwrite
        )
    except (ImageReadError, ModelFileError, TrainingDataError, FileExistsError, ValueError) as err:
        raise CLIError(str(err)) from None

    from tqdm import tqdm

    ensemble = trainer if isinstance(trainer, EnsembleTrainer) else None
    n_members = ensemble.n_members if ensemble is not None else 1
    total = config.steps * n_members if config.steps is not None else config.time_limit
    bar = tqdm(
        total=total,
        unit="step" if config.steps is not None else "s",
        disable=args.quiet,
        dynamic_ncols=True,
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} [{elapsed}<{remaining}{postfix}]",
    )
    previous = signal.signal(signal.SIGINT, lambda *_: (trainer.stop(), signal.signal(signal.SIGINT, previous)))
    postfix: dict[str, str] = {}
    done_steps, done_seconds, seconds, member = 0, 0.0, 0.0, ""  # an ensemble: its earlier members' steps, seconds
    try:
        for event in trainer.run():
            if isinstance(event, MemberStarted):
                member = f"member {event.member + 1}/{event.n_members} (seed {event.seed}): "
                postfix.clear()
                continue
            if isinstance(event, MemberFinished):
                done_steps, done_seconds, seconds = done_steps + event.steps, done_seconds + seconds, 0.0
                verdict = "kept" if event.kept else "left out"
                bar.write(f"{member}{verdict} after {event.steps} steps" + (f" ({event.why})" if event.why else ""))
                continue
            if isinstance(event, MemberEvent):
                event = event.event
                if isinstance(event, TrainingFinished | Saved):
                    continue  # the member's; MemberFinished reports it, the ensemble's come last
            if isinstance(event, TrainingStarted):
                bar.write(
                    f"{member}{'fine-tuning' if event.fine_tuning and ensemble is not None else 'training'} "
                    f"{ensemble.specs[ensemble.member]['arch'] if ensemble is not None else config.arch} "
                    f"({event.n_parameters:,} parameters) on {event.device}; "
                    f"patches {'x'.join(map(str, event.patch_size))}; labeled pixels {event.train_pixels}, "
                    f"held out for validation {event.val_pixels or 'none (too few strokes)'}"
                    + (
                        f"; input: the image and a random forest's {event.forest_channels} class probabilities"
                        if event.forest_channels
                        else ""
                    )
                    + (f"; products in {event.products}" if event.products else "")
                )
            elif isinstance(event, CpuThreads):
                bar.write(f"CPU: {event.text}")
            elif isinstance(event, TrainStep):
                seconds = event.elapsed
                bar.n = done_steps + event.step if config.steps is not None else min(done_seconds + seconds, total)
                postfix["loss"] = f"{event.loss:.3f}"
                bar.set_postfix(postfix, refresh=True)
            elif isinstance(event, Validated):
                postfix[config.metric] = f"{event.score:.3f}"
                postfix["best"] = f"{event.best_score:.3f}@{event.best_step}"
            elif isinstance(event, Paused):
                bar.write("paused" if event.paused else "resumed")
            elif isinstance(event, Saved):
                postfix["saved"] = f"@{event.step}"
            elif isinstance(event, TrainingFinished):
                bar.close()
                best = event.best_metrics
                summary = ", ".join(
                    f"{k.replace('_', ' ')} {best[k]:.3f}"
                    for k in ("global_accuracy", "class_accuracy", "mean_iou")
                    if k in best
                )
                if event.collapsed:
                    raise CLIError(
                        f"no usable model after {event.steps} steps: {event.collapsed}; nothing was saved. "
                        "Train longer (--steps/--time) or paint more strokes of the other classes"
                    )
                where = "the parent's weights, kept" if event.kept_parent else f"best step {event.best_step}"
                if ensemble is not None and not event.kept_parent:
                    where = f"an ensemble of {ensemble.n_kept} of {n_members} members, their mean"
                print(
                    f"finished ({event.reason}) after {event.steps} steps in {event.elapsed:.0f} s; "
                    f"saved {event.path}"
                    + (f" ({where}; on held-out strokes: {summary})" if summary else "")
                    + (f"; effective halo {event.effective_halo} px" if event.effective_halo is not None else "")
                )
                if event.kept_parent:
                    print(
                        f"note: no better model: {event.kept_parent_because or 'it never beat the parent'}; the "
                        "saved model has the parent's weights. Paint more corrections or train longer"
                    )
                if event.warning:
                    print(f"warning: {event.warning}")
                if event.note:
                    print(f"note: {event.note}")
                if 0 < event.steps < FEW_STEPS and event.reason != "steps":  # a step count the user did not choose
                    print(
                        f"warning: trained only {event.steps} steps in {event.elapsed:.0f} s: the model has "
                        "barely learned; train longer (--time/--steps)"
                    )
                if trainer.halo_skipped:
                    print(
                        f"note: no time was left to measure the effective halo; predictions use the receptive "
                        f"field ({trainer.model.receptive_field} px), which is slower"
                    )
    finally:
        bar.close()
        signal.signal(signal.SIGINT, previous)


def _cmd_pretrain(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .io import ImageReadError, open_image
    from .training.pretrain import PretrainConfig, Pretrainer, PretrainError, cache_key, save_pretrained

    _check_output_folder(args.output, "-o")
    if Path(args.output).exists() and not args.overwrite:
        raise CLIError(f"{args.output} already exists; pass --overwrite to replace it or choose another file name")
    if args.arch == "ensemble":
        raise CLIError("pretraining learns one network's body; an ensemble's members train from scratch")
    model, spec = _network(args)
    config = PretrainConfig(
        arch=args.arch,
        model=model,
        input=spec,
        batch_size=args.batch_size,
        patch_size=args.patch_size or 64,
        steps=args.steps,
        time_limit=args.time if args.steps is None else None,
        learning_rate=args.lr,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
    )
    try:
        image = open_image(args.image)
        pretrainer = Pretrainer([image], config, image_key=cache_key(image, config.arch, config.model_config(), spec))
    except (ImageReadError, PretrainError, ValueError) as err:
        raise CLIError(str(err)) from None

    from tqdm import tqdm

    total = config.steps if config.steps is not None else config.time_limit
    bar = tqdm(
        total=total,
        unit="step" if config.steps is not None else "s",
        disable=args.quiet,
        dynamic_ncols=True,
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} [{elapsed}<{remaining}{postfix}]",
    )
    previous = signal.signal(signal.SIGINT, lambda *_: (pretrainer.stop(), signal.signal(signal.SIGINT, previous)))
    try:
        for event in pretrainer.run():
            bar.n = event.step if config.steps is not None else min(event.elapsed, total)
            bar.set_postfix({"loss": f"{event.loss:.4f}"}, refresh=True)
    finally:
        bar.close()
        signal.signal(signal.SIGINT, previous)
    body = pretrainer.body()
    if body.steps == 0:
        raise CLIError("stopped before the first step; nothing was saved")
    save_pretrained(args.output, body)
    print(
        f"saved {args.output}: {body.describe()} of {config.arch} on {args.image}; start a training from it "
        f"with: napari-msd train IMAGE LABELS --init {args.output} -o MODEL (same network options)"
    )


def _cmd_predict(args: argparse.Namespace) -> None:
    import os

    from .inference.batch import BatchError, BatchFinished, BatchStarted, BlockWritten, prepare, run
    from .models.precision import describe_precision, set_inference_precision

    _check_output_folder(args.output, "OUTPUT")
    if args.precision is not None:
        set_inference_precision(args.precision)
        os.environ["NAPARI_MSD_PRECISION"] = args.precision  # the workers of a local dask cluster start after this
    try:
        job = prepare(
            args.model,
            args.input,
            args.output,
            probabilities=args.probabilities,
            labels=not args.no_labels,
            tile_size=args.tile_size,
            halo=args.halo,
            overwrite=args.overwrite,
            device=args.device,
            batch_size=args.batch_size,
            average_orientations=args.average_orientations,
        )
    except (BatchError, ValueError) as err:
        raise CLIError(str(err)) from None

    from tqdm import tqdm

    bar = None
    try:
        for event in run(job, scheduler=args.scheduler, workers=args.workers):
            if isinstance(event, BatchStarted):
                resumed = f", resuming: {event.n_done} already done" if event.n_done else ""
                base = getattr(job.predictor, "base", job.predictor)  # the Predictor under an orientation average
                precision = f"; MS-D in {describe_precision(base.device)}" if base.metadata.arch == "msd" else ""
                print(
                    f"predicting {event.n_blocks} blocks of {'x'.join(map(str, event.block_shape))} "
                    f"(halo {'x'.join(map(str, event.halo))}) in {event.where}{resumed}{precision}",
                    file=sys.stderr,
                )
                bar = tqdm(
                    total=event.n_blocks, initial=event.n_done, unit="block", disable=args.quiet, dynamic_ncols=True
                )
            elif isinstance(event, BlockWritten):
                bar.update(1)
            elif isinstance(event, BatchFinished):
                bar.close()
                print(f"wrote {event.output}: {event.n_computed} blocks in {event.elapsed:.0f} s")
    except (BatchError, ValueError) as err:
        raise CLIError(str(err)) from None
    finally:
        if bar is not None:
            bar.close()


def _cmd_measure(args: argparse.Namespace) -> None:
    import shutil
    import tempfile
    from pathlib import Path

    from .io import ImageReadError, open_image
    from .objects import Scale, TableWriteError, iter_objects, ome_scale, write_csv
    from .objects.blocks import array_chunks, choose_block_shape
    from .objects.progress import STAGES
    from .objects.source import SourceError, instances_store, open_prediction

    _check_output_folder(args.output, "-o")
    if Path(args.output).exists() and not args.overwrite:
        raise CLIError(f"{args.output} already exists; pass --overwrite to replace it or choose another file name")
    try:
        prediction = open_prediction(args.prediction)
        labels = prediction.labels
        classes = prediction.class_ids(args.classes) if args.classes else None
        boundary = prediction.probability(args.boundary) if args.boundary else None
        image = open_image(args.image) if args.image else None
        if image is not None and image.shape != labels.shape:
            raise CLIError(
                f"{args.image} has shape {image.shape}, the prediction {labels.shape}; give the image it is of"
            )
        scale = prediction.scale or (ome_scale(args.image, labels.ndim) if args.image else None)
        if args.scale:
            if len(args.scale) != labels.ndim:
                raise CLIError(
                    f"--scale takes {labels.ndim} pixel sizes ({'ZYX'[-labels.ndim :]}), got {len(args.scale)}"
                )
            scale = Scale(tuple(args.scale), args.unit or "")
        elif args.unit:
            raise CLIError("--unit names the unit of --scale; give --scale too")
        block_shape = choose_block_shape(labels.shape, array_chunks(labels))
        out = instances_store(args.instances, chunks=block_shape, overwrite=args.overwrite) if args.instances else None
    except (SourceError, ImageReadError, ValueError) as err:
        raise CLIError(str(err)) from None
    if prediction.missing_blocks:
        print(
            f"note: {prediction.missing_blocks} blocks of {args.prediction} are not predicted yet; they count as empty"
        )

    from tqdm import tqdm

    split = args.split or args.boundary is not None
    scratch = Path(tempfile.mkdtemp(prefix=".napari-msd-measure-", dir=Path(args.output).expanduser().parent))
    bar, stage = None, None
    try:
        if split and out is None:
            out = instances_store(scratch / "split.zarr", chunks=block_shape)
        events = iter_objects(
            labels,
            classes=classes,
            class_names=prediction.class_names,
            connectivity=labels.ndim if args.full_connectivity else 1,
            min_size=args.min_size,
            split=split,
            boundary=boundary,
            h=args.h,
            image=image,
            scale=scale,
            block_shape=block_shape,
            out=out,
            scratch=instances_store(scratch / "components.zarr", chunks=block_shape),
        )
        while True:
            try:
                event = next(events)
            except StopIteration as done:
                result = done.value
                break
            if event.stage != stage:
                if bar is not None:
                    bar.close()
                stage = event.stage
                bar = tqdm(total=event.total, desc=STAGES[stage], disable=args.quiet, dynamic_ncols=True)
            bar.n = event.done
            bar.refresh()
        write_csv(result.table, args.output, overwrite=args.overwrite)
    except (SourceError, TableWriteError, ValueError) as err:
        raise CLIError(str(err)) from None
    finally:
        if bar is not None:
            bar.close()
        shutil.rmtree(scratch, ignore_errors=True)
    table, ndim = result.table, labels.ndim
    size = "volume" if ndim == 3 else "area"
    physical = next((n for n in table.names if n.startswith(f"{size}_") and n != f"{size}_px"), None)
    names = prediction.class_names
    shown = classes or list(range(1, len(names) + 1)) or sorted({int(c) for c in table.columns["class_id"]})
    for k in shown:
        rows = table.columns["class_id"] == k
        name = names[k - 1] if k <= len(names) else f"class {k}"
        total = f", total {size} {int(table.columns[f'{size}_px'][rows].sum()):,} px"
        if physical is not None:
            total += f" = {table.columns[physical][rows].sum():.6g} {table.units[physical]}"
        print(f"{name}: {int(rows.sum())} objects{total}")
    where = f"; instances in {args.instances}" if args.instances else ""
    print(f"wrote {args.output}: {len(table)} objects{where}")


def _cmd_sample(args: argparse.Namespace) -> None:
    import shlex
    from pathlib import Path

    folder = Path(args.output)
    paths = [folder / name for name in SAMPLE_FILES]
    existing = [str(p) for p in paths if p.exists() or p.is_symlink()]
    if existing:
        raise CLIError(
            f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
            "choose another folder (nothing was written)"
        )
    if folder.exists() and not folder.is_dir():
        raise CLIError(f"{folder} is a file, not a folder; choose another folder")

    import tifffile

    from ._sample_data import CLASS_NAMES, CREDIT, read_sample

    sample = read_sample()
    written: list[Path] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for path, key in zip(paths, ("image", "strokes", "ground_truth")):
            with open(path, "xb") as fh:  # "x": never replace a file that appeared meanwhile
                written.append(path)
                tifffile.imwrite(fh, sample[key])
    except OSError as err:
        for path in written:  # only our own, partly written files
            path.unlink(missing_ok=True)
        raise CLIError(
            f"cannot write the sample into {folder} ({err.strerror or err}); choose a writable folder"
        ) from None
    image, strokes = (shlex.quote(str(p)) for p in paths[:2])
    names = ",".join(CLASS_NAMES[k] for k in sorted(CLASS_NAMES))
    print(
        f"wrote {paths[0]} (EM image, {'x'.join(map(str, sample['image'].shape))}), {paths[1]} (strokes: "
        + ", ".join(f"{k} = {v}" for k, v in sorted(CLASS_NAMES.items()))
        + f"; 0 = unlabeled) and {paths[2]} (dense labels, to score a prediction)"
    )
    print(f"data: {CREDIT}")
    print(f'next: napari-msd train {image} {strokes} --class-names "{names}" -o membranes.msd --time 60')


def _cmd_demo(args: argparse.Namespace) -> None:
    if args.screenshot is not None:
        _check_output_folder(args.screenshot, "--screenshot")
    try:
        from ._widgets.demo import run_demo
    except ImportError as err:
        raise CLIError(
            f"the napari GUI is not installed ({err}); install it with: pip install 'napari-msd[all]'"
        ) from None
    run_demo(screenshot=args.screenshot)


def _add_network_options(parser: argparse.ArgumentParser) -> None:
    from .models.registry import ARCHITECTURES

    parser.add_argument(
        "--arch",
        choices=list(ARCHITECTURES),
        default="msd",
        help="network (default: msd, 100 layers; unet, munet: multi-scale U-Net, gated_unet: gated skips; "
        "ensemble: --members networks of --member-arch, trained one after another)",
    )
    parser.add_argument("--ndim", type=int, choices=[2, 3], default=2, help="2: slice-wise model, 3: 3D patches")
    parser.add_argument("--slices", type=int, default=1, help="2.5D: N adjacent slices as channels (odd, e.g. 5)")
    parser.add_argument("--orientations", default="xy", help="2D models on volumes: xy, or xy,xz,yz (isotropic)")
    parser.add_argument("--depth", type=int, help="layers (MS-D, default 100) or poolings (U-Net, default 4)")
    parser.add_argument("--width", type=int, help="MS-D channels per layer (default 1)")
    parser.add_argument("--base-channels", type=int, help="U-Net channels of the first level (default 32)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subparser per subcommand."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="napari-msd",
        description="Train MS-D networks and U-Nets from sparse labels, and apply them to large volumes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", help="print a model file's metadata as JSON")
    info.add_argument("model", help="a model file written by napari-msd (or a bioimage.io package it exported)")
    info.set_defaults(func=_cmd_info)

    export = sub.add_parser(
        "export",
        help="export a model as a bioimage.io model package (zip)",
        description="Write MODEL as a bioimage.io model package: TorchScript weights, the normalisation as "
        "preprocessing, class names, a test input and napari-msd's prediction of it, and the model file itself "
        "(napari-msd loads the zip back). Needs: pip install 'napari-msd[bioimageio]'.",
    )
    export.add_argument("model", help="a model file written by napari-msd (or a package exported from one)")
    export.add_argument("-o", "--output", required=True, help="package to write (e.g. membranes.zip)")
    export.add_argument("--image", help="cut the test input from this image (the training image; default: synthetic)")
    export.add_argument("--name", help="the package's name (default: from the architecture and classes)")
    export.add_argument("--author", action="append", help="an author's name (repeatable; default: a placeholder)")
    export.add_argument("--license", default="CC-BY-4.0", help="SPDX license identifier (default: CC-BY-4.0)")
    export.add_argument("--overwrite", action="store_true", help="replace the package if it exists")
    export.set_defaults(func=_cmd_export)

    train = sub.add_parser(
        "train",
        help="train a model from sparse labels (0 = unlabeled, 1..K = classes)",
        description="Train MS-D or U-Net on painted labels. IMAGE and LABELS: TIFF, zarr (vol.zarr or "
        "vol.zarr::group/array), OME-Zarr, MRC or .npy; YX or ZYX. Ctrl-C stops and keeps the best model.",
    )
    train.add_argument("image", help="the image (YX or ZYX)")
    train.add_argument("labels", help="labels of the same shape: 0 = unlabeled, 1..K = classes")
    train.add_argument("-o", "--output", required=True, help="model file to write (e.g. membranes.msd)")
    _add_network_options(train)
    limit = train.add_mutually_exclusive_group()
    limit.add_argument("--steps", type=int, help="training steps (default 1000)")
    limit.add_argument("--time", type=float, metavar="SECONDS", help="train for this long instead")
    train.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    train.add_argument("--from", dest="init", metavar="MODEL", help="fine-tune this model instead of a new one")
    train.add_argument(
        "--replay",
        nargs=2,
        action="append",
        default=[],
        metavar=("IMAGE", "LABELS"),
        help="earlier training data to replay while fine-tuning (repeatable)",
    )
    train.add_argument(
        "--pair",
        nargs=2,
        action="append",
        default=[],
        metavar=("IMAGE", "LABELS"),
        help="another image with labels to train on (repeatable)",
    )
    train.add_argument(
        "--init",
        dest="pretrained",
        metavar="WEIGHTS",
        help="start the new model from self-supervised weights made by 'napari-msd pretrain' on "
        "this image (same network options)",
    )
    from .models.registry import ARCHITECTURES

    train.add_argument(
        "--members",
        type=int,
        metavar="N",
        help="--arch ensemble: networks trained one after another from seeds SEED, SEED+1, ... (default 3); with "
        "--time each gets TIME/N seconds, with --steps each makes STEPS steps",
    )
    train.add_argument(
        "--member-arch",
        choices=[arch for arch in ARCHITECTURES if arch != "ensemble"],
        help="--arch ensemble: the members' network (default msd; --depth, --width, --base-channels set it)",
    )
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--patch-size", type=int, help="patch side in pixels (default 64 in 2D, 48 in 3D)")
    train.add_argument(
        "--prior-correction",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after training, adapt the output to the class frequencies of the image (EM estimate; "
        "undone if it leaves one class nearly everywhere; on by default)",
    )
    train.add_argument("--lr", type=float, help="Adam learning rate (default 0.001)")
    train.add_argument(
        "--lr-schedule",
        choices=("constant", "linear", "cosine"),  # training.optim.LR_SCHEDULES (not imported: no torch here)
        help="how the learning rate falls over --time/--steps: constant, linear or cosine (down to 0 at the end)",
    )
    train.add_argument("--validate-every", type=int, default=50, metavar="STEPS")
    train.add_argument("--patience", type=int, default=10, help="validations without improvement before stopping")
    train.add_argument("--intensity", type=float, default=0.0, help="intensity jitter, e.g. 0.1")
    train.add_argument("--elastic", type=float, default=0.0, help="elastic deformation in pixels, e.g. 4")
    train.add_argument(
        "--dice", type=float, help="weight of a Dice term added to cross-entropy (default: 1 for munet, else 0)"
    )
    train.add_argument(
        "--edge-weight",
        type=float,
        metavar="W",
        help="weight of the edge-aware smoothness loss that moves class boundaries in unpainted "
        "regions onto image edges (on by default, weight 2; 0 = off)",
    )
    train.add_argument(
        "--forest-channels",
        action="store_true",
        help="a new network also takes the class probabilities of a random forest fitted on the strokes as "
        "input (out of fold on the painted slices; the forest is stored with the model; 2D input on xy planes "
        "only, no ensemble or --init); --from follows the parent",
    )
    train.add_argument(
        "--teacher-weight",
        type=float,
        metavar="W",
        help="weight of dense labels from a random forest fitted on the strokes (its confident "
        "pixels on the painted slices; default 1, 0 = off)",
    )
    train.add_argument(
        "--seen-tolerance",
        type=float,
        metavar="SHARE",
        help="with --from and --replay on the same image: the share of the parent's confident "
        "prediction around the new labels (beyond 8 px) a retraining may change before the parent "
        "is kept instead (default 0.03; 1 = not checked)",
    )
    train.add_argument(
        "--precision",
        choices=["auto", "float32", "bfloat16"],
        help="MS-D's arithmetic in training steps (default float32) and in forwards without gradients (default "
        "auto: bfloat16 where this CPU measures it at least 1.5x faster, or NAPARI_MSD_PRECISION): float32, "
        "bfloat16 (products and stored maps; weights and gradients stay float32) or auto for both",
    )
    train.add_argument("--class-names", help="comma-separated, e.g. membrane,interior")
    train.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--overwrite", action="store_true", help="replace MODEL if it exists")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=_cmd_train)

    pretrain = sub.add_parser(
        "pretrain",
        help="learn the image without labels (self-supervised), to start trainings from",
        description="Train the network body to predict hidden pixels from their surroundings (blind-spot masking, "
        "as Noise2Void) on every pixel of IMAGE; no labels needed. Start trainings from the result with "
        "'napari-msd train ... --init WEIGHTS'. Ctrl-C stops and saves.",
    )
    pretrain.add_argument("image", help="the image (YX or ZYX): TIFF, zarr, OME-Zarr, MRC or .npy")
    pretrain.add_argument("-o", "--output", required=True, metavar="WEIGHTS", help="file to write (e.g. em.pretrained)")
    _add_network_options(pretrain)
    plimit = pretrain.add_mutually_exclusive_group()
    plimit.add_argument("--time", type=float, default=300.0, metavar="SECONDS", help="pretrain this long (default 300)")
    plimit.add_argument("--steps", type=int, help="pretrain this many steps instead")
    pretrain.add_argument("--batch-size", type=int, default=16)
    pretrain.add_argument("--patch-size", type=int, help="patch side in pixels (default 64 in 2D, 48 in 3D)")
    pretrain.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    pretrain.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    pretrain.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--overwrite", action="store_true", help="replace WEIGHTS if it exists")
    pretrain.add_argument("--quiet", action="store_true", help="no progress bar")
    pretrain.set_defaults(func=_cmd_pretrain)

    predict = sub.add_parser(
        "predict",
        help="apply a model to a volume, writing zarr or OME-Zarr (resumable)",
        description="Predict INPUT (TIFF, zarr, OME-Zarr, MRC, .npy) block by block into OUTPUT, a zarr store "
        "(OME-Zarr 0.5 with a pyramid when it ends in .ome.zarr). Run the same command again after an "
        "interruption to finish only the missing blocks.",
    )
    predict.add_argument("model", help="a model file written by napari-msd (or a bioimage.io package it exported)")
    predict.add_argument("input", help="the image: a file, vol.zarr or vol.zarr::group/array")
    predict.add_argument(
        "output",
        help="the output zarr store, e.g. result.msd.zarr or result.msd.ome.zarr "
        "(OME-Zarr); napari opens *.msd.zarr / *.msd.ome.zarr without asking for a reader",
    )
    predict.add_argument(
        "--probabilities",
        nargs="?",
        const="uint8",
        default="none",
        choices=["none", "uint8", "float16"],
        help="also write class probabilities (uint8 by default)",
    )
    predict.add_argument("--no-labels", action="store_true", help="write probabilities only")
    predict.add_argument("--tile-size", type=int, help="in-plane block size in pixels (default: fits memory)")
    predict.add_argument("--halo", type=int, help="context around each block in pixels (default: the model's)")
    predict.add_argument(
        "--average-orientations",
        action="store_true",
        help="2D models on isotropic volumes: average the xy, xz and yz predictions",
    )
    predict.add_argument("--scheduler", help="'local' for a dask LocalCluster, or a scheduler address tcp://host:8786")
    predict.add_argument("--workers", type=int, default=2, help="workers of the local cluster (default 2)")
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    predict.add_argument("--batch-size", type=int, default=4, help="planes or blocks per forward pass")
    predict.add_argument(
        "--precision",
        choices=["auto", "float32", "bfloat16"],
        help="MS-D's arithmetic: auto (bfloat16 where this CPU measures it at least 1.5x faster; the default, or "
        "NAPARI_MSD_PRECISION), float32, bfloat16",
    )
    predict.add_argument("--overwrite", action="store_true", help="replace an existing, different prediction")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(func=_cmd_predict)

    measure = sub.add_parser(
        "measure",
        help="objects of a prediction (connected components, optionally split) and a CSV table of measurements",
        description="Label the objects of each class of PREDICTION (a napari-msd batch output, or any labels image: "
        "TIFF, zarr, OME-Zarr, MRC, .npy) block by block, optionally split touching objects by a watershed, and "
        "write one row per object (class, size, surface or perimeter, centroid, bounding box, intensity) to "
        "a CSV table. Sizes are in pixels, and in physical units with --scale or OME-Zarr pixel sizes.",
    )
    measure.add_argument("prediction", help="a batch output (*.msd.zarr) or a labels image (0 = none, 1..K)")
    measure.add_argument("-o", "--output", required=True, metavar="TABLE.csv", help="the table to write")
    measure.add_argument(
        "--class", dest="classes", action="append", metavar="NAME", help="measure this class only (repeatable)"
    )
    measure.add_argument("--image", help="the image predicted, for mean / min / max intensity per object")
    measure.add_argument("--split", action="store_true", help="split touching objects (distance-transform watershed)")
    measure.add_argument(
        "--boundary",
        metavar="NAME",
        help="split along this class's probability (e.g. membrane) instead; needs an output with probabilities",
    )
    measure.add_argument("--h", type=float, default=2.0, help="--split: how far (px) a seed must rise (default 2)")
    measure.add_argument("--min-size", type=int, default=0, metavar="N", help="drop objects under N pixels")
    measure.add_argument(
        "--full-connectivity", action="store_true", help="objects touching at an edge or corner are one object"
    )
    measure.add_argument("--instances", metavar="OUT.zarr", help="also write the object labels to this zarr array")
    measure.add_argument("--scale", type=float, nargs="+", metavar="SIZE", help="pixel size per axis, ZYX (or YX)")
    measure.add_argument("--unit", help="the unit of --scale, e.g. nm")
    measure.add_argument("--overwrite", action="store_true", help="replace the table and the instances if they exist")
    measure.add_argument("--quiet", action="store_true", help="no progress bar")
    measure.set_defaults(func=_cmd_measure)

    sample = sub.add_parser(
        "sample",
        help="write the sample EM data (image, strokes, ground truth) as TIFF files to try the CLI on",
        description=f"Write {', '.join(SAMPLE_FILES)} into DIR (created if missing; existing files are never "
        "replaced) and print the command that trains on them.",
    )
    sample.add_argument("-o", "--output", required=True, metavar="DIR", help="folder to write the files into")
    sample.set_defaults(func=_cmd_sample)

    demo = sub.add_parser("demo", help="open napari with sample EM data and the napari-msd docks")
    demo.add_argument("--screenshot", metavar="PNG", help="save a screenshot of the window to PNG and exit")
    demo.set_defaults(func=_cmd_demo)
    return parser


def _check_precision_setting() -> None:
    """A bad ``NAPARI_MSD_PRECISION`` ends the command before any work, not at its first prediction."""
    from .models.precision import current_precision

    try:
        current_precision()
    except ValueError as err:
        raise CLIError(str(err)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-msd`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_precision_setting()
        args.func(args)
    except CLIError as err:
        print(f"napari-msd {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-msd {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
