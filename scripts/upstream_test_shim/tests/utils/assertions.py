"""Minimal stand-in for Genesis's tests/utils/assertions.py."""

import numpy as np
import torch


def _to_array(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def assert_allclose(actual, desired, *, atol=None, rtol=None, tol=None, err_msg=""):
    # Genesis's signature: `tol` for both tolerances, or `atol` / `rtol`, not both kinds.
    assert (tol is not None) ^ (atol is not None or rtol is not None)
    if tol is not None:
        atol = rtol = tol
    rtol = 0.0 if rtol is None else rtol
    atol = 0.0 if atol is None else atol
    np.testing.assert_allclose(_to_array(actual), _to_array(desired), rtol=rtol, atol=atol, err_msg=err_msg)


def assert_equal(actual, desired, *, err_msg=""):
    np.testing.assert_array_equal(_to_array(actual), _to_array(desired), err_msg=err_msg)
