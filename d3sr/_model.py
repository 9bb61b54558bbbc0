"""What every model class shares: its model in the C core, the weight table,
memory reports and capturing each block's output."""
from __future__ import annotations

import threading
from typing import Dict, Iterable, Mapping, Tuple, Union

import numpy as np

from ._weights import load_arrays


class CoreModel:
    """Base of VAE, UNet and PatchHead: self._model is a d3sr._core.Model."""

    _model = None

    def load_weights(self, weights: Union[Mapping[str, np.ndarray], Iterable[Tuple[str, np.ndarray]]]) -> None:
        """Sets every weight from a {state_dict name: array} mapping, or from
        (name, array) pairs one at a time (e.g. d3sr.testing.iter_random_weights,
        so a large model is never held twice); a missing one is an error naming it."""
        load_arrays(self._model, weights.items() if hasattr(weights, "items") else weights)

    def weight_shapes(self) -> Dict[str, Tuple[int, ...]]:
        """{state_dict name: shape} of every weight this model expects."""
        return {name: shape for name, shape, _ in self._model.weights()}

    def memory(self) -> Dict[str, int]:
        """Bytes held by the weights and by the activation arena."""
        return self._model.memory()

    def profile(self, enable: bool = True) -> Dict[str, Tuple[int, float]]:
        """Turns per-op timing on (from zero) or off and returns what was
        accumulated so far: {op: (calls, seconds)}, e.g. to see where a call's
        time goes: model.profile(); model(...); print(model.profile(False))."""
        stats = self._model.profile()
        self._model.set_profiling(enable)
        return stats

    def _run(self, fn, *args, return_intermediates: bool = False, **kwargs):
        """fn(*args, **kwargs), and with return_intermediates also the
        {block name: activation} the core captured during the call.

        Turning capture on, the call and reading the captures are three core
        calls; a lock per model holds them together, so a call from another
        thread can neither capture into nor clear this call's intermediates.
        (dict.setdefault is atomic under the GIL: one lock per model.)"""
        lock = self.__dict__.setdefault("_call_lock", threading.Lock())
        with lock:
            if not return_intermediates:
                return fn(*args, **kwargs)
            self._model.set_capture(True)
            try:
                return fn(*args, **kwargs), self._model.captured()
            finally:
                self._model.set_capture(False)
