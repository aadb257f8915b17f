"""Vectorized activations (rc_activations.h) exposed to Python, and the SIMD level.

Used by the accuracy tests and ``rnncore.show_config()``; the cell kernels
call the same C functions directly.
"""
import numpy as np

cdef extern from "rc_activations.h" nogil:
    void rc_tanh_array_f(const float *x, float *y, Py_ssize_t n)
    void rc_tanh_array_d(const double *x, double *y, Py_ssize_t n)
    void rc_sigmoid_array_f(const float *x, float *y, Py_ssize_t n)
    void rc_sigmoid_array_d(const double *x, double *y, Py_ssize_t n)
    const char *rc_simd_level()


def _map(x, int which):
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"x: expected a float32 or float64 array, got {x.dtype}")
    src = np.ascontiguousarray(x)
    out = np.empty_like(src)
    cdef Py_ssize_t n = src.size
    cdef float[::1] f_in, f_out
    cdef double[::1] d_in, d_out
    if n == 0:
        return out
    if src.dtype == np.float32:
        f_in = src.reshape(-1)
        f_out = out.reshape(-1)
        with nogil:
            if which == 0:
                rc_tanh_array_f(&f_in[0], &f_out[0], n)
            else:
                rc_sigmoid_array_f(&f_in[0], &f_out[0], n)
    else:
        d_in = src.reshape(-1)
        d_out = out.reshape(-1)
        with nogil:
            if which == 0:
                rc_tanh_array_d(&d_in[0], &d_out[0], n)
            else:
                rc_sigmoid_array_d(&d_in[0], &d_out[0], n)
    return out


def tanh(x):
    """tanh of a float32/float64 array with the kernels' vectorized code."""
    return _map(x, 0)


def sigmoid(x):
    """Logistic sigmoid of a float32/float64 array with the kernels' code."""
    return _map(x, 1)


def simd_level():
    """The instruction set the kernels' elementwise code was dispatched to."""
    return rc_simd_level().decode()
