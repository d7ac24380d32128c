"""Minimal stand-in for Genesis's tests/utils/assertions.py."""

import numpy as np
import torch


def _to_array(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def assert_allclose(actual, desired, *, rtol=0.0, atol=0.0, err_msg=""):
    np.testing.assert_allclose(_to_array(actual), _to_array(desired), rtol=rtol, atol=atol, err_msg=err_msg)


def assert_equal(actual, desired, *, err_msg=""):
    np.testing.assert_array_equal(_to_array(actual), _to_array(desired), err_msg=err_msg)
