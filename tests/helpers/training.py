"""Training settings shared by the engine's tests and the training process's tests."""

from __future__ import annotations

from napari_msd.training.engine import TrainConfig

MSD = {"model": {"depth": 8}}


def tiny_config(**overrides) -> TrainConfig:
    """Tiny, fast settings: an 8-layer MS-D, 48 px patches, one torch thread (the machine is shared); no forest
    teacher, no forest channels and no prior correction (on by default, tested in test_teacher, test_context and
    test_engine, and test_prior), so the mechanics tested see plain training."""
    settings = {
        **MSD,
        "patch_size": 48,
        "batch_size": 4,
        "steps": 30,
        "validate_every": 10,
        "learning_rate": 1e-2,
        "threads": 1,
        "seed": 0,
        "teacher_weight": 0.0,
        "forest_channels": False,
        "prior_correction": False,
    }
    settings.update(overrides)
    return TrainConfig(**settings)
