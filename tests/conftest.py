"""Shared helpers: reference files and the error measure every comparison uses."""
import os

import numpy as np
import pytest

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def rel_l2(actual, expected) -> float:
    """||actual - expected|| / ||expected||, in float64."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != reference {expected.shape}"
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30))


def assert_close(actual, expected, tol: float, what: str = "") -> None:
    """Relative L2 error at most tol; on failure prints the first values and the worst difference."""
    err = rel_l2(actual, expected)
    if not err <= tol:
        a = np.asarray(actual, np.float64).ravel()
        e = np.asarray(expected, np.float64).ravel()
        worst = int(np.argmax(np.abs(a - e)))
        pytest.fail(f"{what}: relative L2 error {err:.3e} > {tol:.0e}; first values {a[:4]} vs {e[:4]}; "
                    f"max |diff| {abs(a[worst] - e[worst]):.3e} at flat index {worst}")


def load_reference(path: str) -> dict:
    from safetensors.numpy import load_file

    return load_file(path)


@pytest.fixture
def data_dir():
    return DATA
