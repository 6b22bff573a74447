"""Optimizer state of Keras 2.0-2.3 ``.h5`` files: a list by position, not by name.

Keras 2.0 to 2.3 (standalone, and tf.keras 1.x) saved ``optimizer.weights`` under names
that say nothing (``Variable_104:0``, ``training/Adam/Variable_3:0``, ``moment_0:0``,
``accumulator_2_1:0``); what each array is follows from its position, as those optimizers
created them: ``[iterations] + <slot kind 1 for every trainable weight> + <kind 2 ...>``,
the trainable weights in ``model.trainable_weights`` order. This module maps that list
onto a Keras 3 optimizer's slots, checking every shape, or says exactly why it cannot.

=============  =================================================  ====================
Keras 2        weights list                                       Keras 3 slots
=============  =================================================  ====================
SGD            iterations, moments                                momentum
RMSprop        (iterations in 2.3,) accumulators                  velocity
Adagrad        (iterations in 2.3,) accumulators                  accumulator
Adadelta       (iterations in 2.3,) accumulators, delta accums    accumulated_grad,
                                                                  accumulated_delta_var
Adam           iterations, ms, vs (, vhats: shape (1,) unless      momentum, velocity
               amsgrad)                                           (, velocity_hat)
Adamax         iterations, ms, us                                 momentum, norm
Nadam          iterations, m_schedule, ms, vs                     momentum, velocity
                                                                  (u_product: m_schedule)
=============  =================================================  ====================

Example::

    values, problem = positional_state("Adam", arrays, [("layer_with_weights-0/kernel", (3, 4)), ...])
"""

from __future__ import annotations

import numpy as np

LAYOUTS: dict[str, tuple[str, ...]] = {
    "SGD": ("momentum",),
    "RMSprop": ("velocity",),
    "Adagrad": ("accumulator",),
    "Adadelta": ("accumulated_grad", "accumulated_delta_var"),
    "Adam": ("momentum", "velocity", "velocity_hat"),
    "Adamax": ("momentum", "norm"),
    "Nadam": ("momentum", "velocity"),
}


def positional_state(
    optimizer: str, arrays: list[np.ndarray], trainable: list[tuple[str, tuple]], *, amsgrad: bool = False
) -> tuple[dict[str, np.ndarray], str | None]:
    """Keras-3-keyed optimizer values from a Keras 2 positional list, or ``({}, why not)``.

    ``trainable``: ``(modelkeep key, shape)`` of the model's trainable weights in Keras 2's
    order (the file's layer order, each layer's trainable weights first).
    """
    kinds = LAYOUTS.get(optimizer)
    n = len(trainable)
    if kinds is None:
        return {}, f"Keras 2's positional layout of {optimizer} is not known here"
    if n == 0:
        return {}, "the model has no trainable weights"
    head = len(arrays) % n
    groups = (len(arrays) - head) // n
    if head > 2 or any(np.ndim(a) != 0 for a in arrays[:head]):
        return {}, f"{len(arrays)} arrays do not split into groups of {n} (one per trainable weight)"
    expected = kinds if optimizer != "Adam" else kinds[:groups]
    if groups != len(expected) or (optimizer == "Adam" and groups < 2):
        return {}, (f"{len(arrays)} arrays: {groups} group(s) of {n}, but Keras 2's {optimizer} keeps "
                    f"{len(kinds)} ({', '.join(kinds)})")
    values: dict[str, np.ndarray] = {}
    if head:
        values["iteration"] = np.asarray(arrays[0])
    if head == 2 and optimizer == "Nadam":
        values["variable"] = np.asarray(arrays[1])  # m_schedule: Keras 3's u_product
    for g, kind in enumerate(expected):
        chunk = arrays[head + g * n : head + (g + 1) * n]
        if kind == "velocity_hat" and not amsgrad:
            continue  # Keras 2.1+ kept placeholder vhats of shape (1,) without amsgrad
        for (key, shape), array in zip(trainable, chunk):
            if tuple(np.shape(array)) != tuple(shape):
                return {}, (f"array {head + g * n + trainable.index((key, shape))} (shape {np.shape(array)}), taken as "
                            f"the {kind} of '{key}', should have shape {tuple(shape)}")
            values[f"slots/{key}/{kind}"] = np.asarray(array)
    return values, None
