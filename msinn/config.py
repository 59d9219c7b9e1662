"""Model hyperparameters, with the released configuration as the default."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Latent channels per decoding level, coarsest first. They follow from the
# transform itself (3 colour channels, four 2x2 space-to-depth steps, a
# channel split after each), so they are not a free hyperparameter.
LATENT_CHANNELS: tuple[int, ...] = (48, 48, 24, 12, 6)

PERMUTATIONS = ("invconv", "shuffle", "reverse", "cross")
COUPLINGS = ("affine", "additive")


@dataclass(frozen=True)
class MSINNConfig:
    """Everything needed to rebuild a model before loading its weights.

    N: hidden width of the coupling networks of the three finer stages.
    M: hidden width of the coupling networks of the coarsest stage.
    depths: invertible units per stage, finest stage first.
    context_channels: width of the channel-context, spatial-context and LRP networks.
    anchor_num: number of trained rate anchors (gain vectors).
    """

    N: int = 128
    M: int = 192
    depths: tuple[int, int, int, int] = (4, 4, 4, 4)
    context_channels: int = 128
    anchor_num: int = 8
    flow_permutation: str = "invconv"
    flow_coupling: str = "affine"
    act_norm: bool = True
    post_process: bool = True
    lrp: bool = True
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        if len(self.depths) != 4 or min(self.depths) < 1:
            raise ValueError(f"depths must be four positive integers, got {self.depths}")
        if self.flow_permutation not in PERMUTATIONS:
            raise ValueError(f"flow_permutation must be one of {PERMUTATIONS}")
        if self.flow_coupling not in COUPLINGS:
            raise ValueError(f"flow_coupling must be one of {COUPLINGS}")
        if self.anchor_num < 2:
            raise ValueError("anchor_num must be at least 2")
        for name in ("N", "M", "context_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["depths"] = list(self.depths)
        d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MSINNConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "extra"}
        return cls(**known)
