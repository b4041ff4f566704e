"""An ensemble of networks trained from the same strokes (genenet: Pfeiffer et al.; Krogh & Vedelsby 1995).

Its members (MS-D, U-Nets, any registered architecture, with different seeds and/or architectures) are trained one
after another (``training.ensemble``) and predict together: the ensemble's probability of a class is the **mean of the
members' softmax probabilities**, as genenet averages its networks' class prediction maps. :meth:`Ensemble.forward`
returns ``log(mean p)`` (clamped away from ``log 0``) as logits, so that ``softmax(forward(x))`` is that mean and every
consumer of a network's logits (the predictor, the engine's validation, the model file, tiled prediction) works
unchanged. :meth:`Ensemble.member_probabilities` gives the members' own probabilities, from which
``inference.uncertainty.disagreement`` measures where they disagree (Krogh & Vedelsby's ensemble *ambiguity*, used
there for active learning: where to label next).

Sizes: ``in_channels``, ``out_channels`` and ``ndim`` are the members' (which must agree); the receptive field is the
largest member's; the alignment of tiles (``pool_factors``) is, per axis, the least common multiple of the members'
pooling factors (a U-Net's; 1 for an MS-D), so every member sees its own pooling grid as in a whole-image pass.

The configuration is plain data, ``{"members": [{"arch": "msd", "config": {...}}, ...]}``, each member's config what
its ``config()`` returns; ``in_channels``, ``out_channels`` and ``ndim`` given to the constructor override every
member's (how the engine and the Model dock complete a preset). A model file holds the ensemble as one network (state
dict keys ``members.0.…``, ``members.1.…``). Members are built through :func:`.registry.build_model`, imported when an
ensemble is built (the registry imports this module).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

# the smallest normal float32: log(mean p) stays finite, and softmax(log(mean p)) equals mean p to float32 rounding
PROBABILITY_FLOOR = torch.finfo(torch.float32).tiny


def ensemble_config(arch: str, member_config: Mapping[str, Any], n: int) -> dict[str, Any]:
    """The configuration of an ensemble of ``n`` members of architecture ``arch``, each built from ``member_config``
    (what differs between them is the seed their training starts from)."""
    if int(n) < 1:
        raise ValueError(f"an ensemble needs at least one member, got {n}")
    return {"members": [{"arch": str(arch), "config": dict(member_config)} for _ in range(int(n))]}


class Ensemble(nn.Module):
    """Members whose mean softmax probability is the prediction; see the module docstring."""

    arch = "ensemble"

    def __init__(
        self,
        members: Sequence[Mapping[str, Any]],
        in_channels: int | None = None,
        out_channels: int | None = None,
        ndim: int | None = None,
    ):
        super().__init__()
        from .registry import build_model  # the registry imports this module

        if isinstance(members, str | bytes) or not isinstance(members, Sequence) or not members:
            raise ValueError("an ensemble needs a list of members, each {'arch': ..., 'config': {...}}")
        built: list[Any] = []  # registered networks: arch, config(), sizes (nn.Module types them as tensors)
        for k, member in enumerate(members):
            if not isinstance(member, Mapping) or not isinstance(member.get("arch"), str):
                raise ValueError(f"ensemble member {k} must be {{'arch': ..., 'config': {{...}}}}, got {member!r}")
            if member["arch"] == self.arch:
                raise ValueError(f"ensemble member {k} is itself an ensemble; list its members instead")
            config = dict(member.get("config") or {})
            for key, value in (("in_channels", in_channels), ("out_channels", out_channels), ("ndim", ndim)):
                if value is not None:
                    config[key] = int(value)
            built.append(build_model(member["arch"], config))
        sizes = [(int(m.in_channels), int(m.out_channels), int(m.ndim)) for m in built]
        if len(set(sizes)) > 1:
            raise ValueError(
                "ensemble members must agree on input channels, classes and dimensions (in, out, ndim), got "
                + ", ".join(f"{m.arch} {s}" for m, s in zip(built, sizes))
            )
        self.members = nn.ModuleList(built)
        self.in_channels, self.out_channels, self.ndim = sizes[0]

    @classmethod
    def of(cls, networks: Sequence[nn.Module]) -> Ensemble:
        """An ensemble of copies of trained ``networks`` (registered architectures), weights included."""
        nets: list[Any] = list(networks)  # registered networks: arch, config() (nn.Module types them as tensors)
        ensemble = cls([{"arch": net.arch, "config": net.config()} for net in nets])
        for mine, theirs in zip(ensemble.members, nets):
            mine.load_state_dict(theirs.state_dict())
        if nets:
            parameter = next(iter(nets[0].parameters()), None)
            if parameter is not None:
                ensemble.to(parameter.device)
        return ensemble

    @property
    def n_members(self) -> int:
        return len(self.members)

    def _nets(self) -> list[Any]:
        """The members, typed as the registered networks they are (arch, config(), sizes)."""
        return list(self.members)

    @property
    def receptive_field(self) -> int:
        """Theoretical radius in pixels: the largest member's."""
        return max(int(m.receptive_field) for m in self._nets())

    @property
    def pool_factors(self) -> tuple[int, ...]:
        """Per spatial axis, the least common multiple of the members' pooling factors; () when no member pools."""
        factors: list[tuple[int, ...]] = [tuple(getattr(m, "pool_factors", ())) for m in self.members]
        factors = [f for f in factors if f]
        if not factors:
            return ()
        return tuple(math.lcm(*(int(f[axis]) for f in factors)) for axis in range(len(factors[0])))

    def config(self) -> dict:
        """Constructor arguments, enough to rebuild the architecture."""
        return {"members": [{"arch": m.arch, "config": m.config()} for m in self._nets()]}

    def member_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """The members' softmax probabilities, ``(members, N, out_channels, *spatial)``."""
        out = []
        for member in self.members:
            logits = member(x)
            out.append(torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=1))
        return torch.stack(out)

    def forward_members(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, member probabilities)`` of one pass: :meth:`forward`'s logits and
        :meth:`member_probabilities`."""
        members = self.member_probabilities(x)
        return torch.log(members.mean(0).clamp_min(PROBABILITY_FLOOR)), members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, *spatial)`` to ``(N, out_channels, *spatial)`` logits: ``log`` of the members' mean
        probability, so that their softmax is that mean."""
        return self.forward_members(x)[0]

    def extra_repr(self) -> str:
        return f"in={self.in_channels}, out={self.out_channels}, ndim={self.ndim}, members={self.n_members}"
