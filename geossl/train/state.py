"""The train state: one pytree that the sharded step consumes, returns and checkpoints."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
    """step () int32; params / opt_state / teacher / extra pytrees (see objectives.base.Variables);
    rng a raw uint32[2] key, folded with the step inside the train step."""

    step: jax.Array
    params: Any
    opt_state: Any
    teacher: Any
    extra: Any
    rng: jax.Array
