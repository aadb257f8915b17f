"""The recurrent models' shared docstring sections (models.py composes them)."""
from __future__ import annotations

from . import _regularise as R

COMMON_PARAMS = """
    input_size : int
        D, the number of features of ``x``.
    hidden_size : int
        H, the number of features of the hidden state.
    num_layers : int, default 1
        Stacked layers; layer k > 0 reads layer k-1's output (2H wide when
        bidirectional, whatever ``merge_mode``).
    bias : bool, default True
        With False, no ``bias_ih``/``bias_hh`` parameters.
    batch_first : bool, default False
        ``x`` and ``out`` are (N, T, ·) instead of (T, N, ·). **The states**
        ``h0``/``h_n`` (and ``c0``/``c_n``) **are (num_layers * num_directions,
        N, H) either way**, as in PyTorch.
    dropout : float in [0, 1), default 0
        Dropout on each layer's output except the last, in training mode only,
        drawn from the model's seeded generator; the mask is reused in backward.
    bidirectional : bool, default False
        Add a reverse direction with its own ``*_reverse`` weights.
    merge_mode : {'concat', 'sum', 'mul', 'ave'}, default 'concat'
        How the last layer's two directions are combined into ``out``
        (bidirectional RNNs as in Graves 2013; Keras' names). 'concat' is PyTorch's layout
        (2H features); the others give H features. Intermediate layers always
        concatenate, so parameter shapes match PyTorch for every mode.
    dtype : {np.float32, np.float64}, default np.float32
    seed : int or None
        Seeds the parameter initialisation and the dropout masks.
    device : None or 'cpu', keyword-only
        PyTorch's argument; any other device raises ValueError (not supported).
""" + R.PARAMS_DOC

COMMON_CALL = """
    Calling: ``model(x, {state}=None, lengths=None)`` is :meth:`forward`;
    ``model.backward(dout, {dstate}=None)`` back-propagates the last
    training-mode forward and *accumulates* parameter gradients into
    ``model.grads`` (clear them with :meth:`zero_grad`). With
    ``input_grad=False`` it computes no ``dx`` (returning None), which skips
    the first layer's products with ``weight_ih``: for an input that needs no
    gradient, such as data (PyTorch's ``requires_grad=False``; an LSTM's
    forward + backward 1.07-1.15x faster). A new model is in
    training mode, and then (as in PyTorch) every call keeps its activations
    for backward and applies dropout; after ``model.eval()`` or inside
    ``with rnncore.no_grad():`` calls keep nothing. ``train=True/False``
    overrides the mode for one call. ``x`` and the initial states are copied
    when kept for backward, so changing them afterwards does not change the
    gradients.

    ``lengths`` (N ints in [0, T], any order) on a zero-padded batch gives
    what PyTorch gives for ``pack_padded_sequence(x, lengths,
    enforce_sorted=False)`` followed by ``pad_packed_sequence``: ``out`` is
    zero past each length, the final state is each sequence's own last valid
    step, the reverse direction starts at it, and padding never reaches a
    gradient. It is computed without packing: the kernels shrink the active
    batch step by step.

    Not thread-safe per instance: a model holds its last forward's
    activations; give each thread its own model (a second thread calling a
    busy model gets a RuntimeError).
"""
