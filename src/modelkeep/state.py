"""``ModelState``: the one representation every format reads and writes.

Plain data, no Keras objects: an ordered mapping of variable name to numpy array,
plus the model's config, its compile config and training metadata.

Variable names are structural, so the same architecture gives the same names in any
process:

* ``model/layer_with_weights-0/kernel`` — model variables, in ``model.weights`` order;
* ``optimizer/iteration``, ``optimizer/slots/layer_with_weights-0/kernel/momentum`` —
  optimizer variables, in ``optimizer.variables`` order;
* ``rng/...`` and ``metrics/...`` — seed-generator and metric states (exact resume);
* ``layers/<n>/vars/...``, ``layers/<n>/assets/...`` — a layer's own state (lookup tables).

Example::

    state = ModelState({"model/layer_with_weights-0/kernel": np.zeros((2, 3))})
    state.group("model")  # {"layer_with_weights-0/kernel": array(...)}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MODEL = "model"
OPTIMIZER = "optimizer"
RNG = "rng"
METRICS = "metrics"
#: a layer's own state (``save_own_variables`` / ``save_assets``): see ``modelkeep.own_state``
LAYERS = "layers"
GROUPS = (MODEL, OPTIMIZER, RNG, METRICS, LAYERS)


@dataclass
class ModelState:
    """Variables, config and metadata of a Keras model, as plain data."""

    variables: dict[str, np.ndarray] = field(default_factory=dict)
    model_config: dict[str, Any] | None = None
    compile_config: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def group(self, name: str) -> dict[str, np.ndarray]:
        """The variables of one group (``model``, ``optimizer``, ...), prefix removed."""
        prefix = name + "/"
        return {k[len(prefix):]: v for k, v in self.variables.items() if k.startswith(prefix)}

    @property
    def has_optimizer(self) -> bool:
        return any(k.startswith(OPTIMIZER + "/") for k in self.variables)

    def weights_only(self) -> ModelState:
        """A state with the model variables only (what ``save_weights`` keeps)."""
        return ModelState(
            {k: v for k, v in self.variables.items() if k.startswith((MODEL + "/", LAYERS + "/"))},
            self.model_config,
            None,
            dict(self.metadata),
        )

    @property
    def nbytes(self) -> int:
        return sum(int(v.nbytes) for v in self.variables.values())

    def header_json(self) -> str:
        """Config, compile config and metadata as one JSON document."""
        return json.dumps(
            {
                "model_config": self.model_config,
                "compile_config": self.compile_config,
                "metadata": self.metadata,
            },
            default=_json_default,
        )

    @staticmethod
    def header_from_json(text: str) -> tuple[dict | None, dict | None, dict]:
        doc = json.loads(text)
        return doc.get("model_config"), doc.get("compile_config"), doc.get("metadata") or {}


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
