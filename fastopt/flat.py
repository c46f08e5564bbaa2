"""Flat parameters: many arrays in one buffer, so a whole model's step is one pass over memory."""
import numpy as np

from . import _validation as V


class FlatParams:
    """Params packed back to back in one flat buffer, with a matching flat gradient buffer.

    ``params[i]`` and ``grads[i]`` are shaped views into ``data`` and ``grad``. Build the model on
    the views (or copy into them), let the backward pass write each gradient into its view, and give
    the optimizer the single flat pair::

        flat = fastopt.flatten([W1, b1, W2, b2])       # copies the values in
        W1, b1, W2, b2 = flat.params                   # use these from now on
        opt = fastopt.Adam([flat.data], lr=1e-3)
        ...
        np.matmul(x.T, delta, out=flat.grads[0])       # backward writes into the views
        opt.step([flat.grad])                          # one pass over one buffer

    A step over one flat buffer has no per-array work at all, and its state arenas are laid out in
    the same order, so every stream is read sequentially.

    Attributes
    ----------
    data, grad : ndarray
        1-D buffers of ``size`` elements.
    params, grads : list of ndarray
        Shaped views into ``data`` and ``grad``, one per packed array.
    shapes : list of tuple
    offsets : ndarray
        ``offsets[i]:offsets[i + 1]`` is array i's range in the flat buffers.

    Examples
    --------
    >>> import numpy as np
    >>> import fastopt
    >>> flat = fastopt.FlatParams([(2, 3), (3,)])
    >>> flat
    FlatParams(2 arrays, 9 elements, float32)
    >>> W, b = flat.params                         # views into flat.data
    >>> W[...] = 1.0
    >>> flat.grads[1][...] = 0.5                   # a backward pass writes into the grad views
    >>> opt = fastopt.SGD([flat.data], lr=0.1)
    >>> _ = opt.step([flat.grad])                  # one step over one buffer
    >>> print(flat.data)
    [ 1.    1.    1.    1.    1.    1.   -0.05 -0.05 -0.05]
    """

    def __init__(self, shapes, dtype=np.float32):
        dtype = np.dtype(dtype)
        if dtype not in V.FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        self.shapes = []
        for i, shape in enumerate(shapes):
            try:
                shape = tuple(int(d) for d in (shape if isinstance(shape, (tuple, list)) else (shape,)))
            except (TypeError, ValueError):
                raise TypeError(f"shapes[{i}] must be a tuple of ints, got {shape!r}") from None
            if any(d < 0 for d in shape):
                raise ValueError(f"shapes[{i}] has a negative dimension: {shape}")
            self.shapes.append(shape)
        sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.intp)
        self.size = int(self.offsets[-1])
        self.data = np.zeros(self.size, dtype=dtype)
        self.grad = np.zeros(self.size, dtype=dtype)
        self.params = self.views(self.data)
        self.grads = self.views(self.grad)

    @property
    def dtype(self):
        return self.data.dtype

    def views(self, buffer):
        """Shaped views of a flat ``buffer`` laid out like these params (e.g. an optimizer state)."""
        buffer = np.asarray(buffer)
        if buffer.shape != (self.size,):
            raise ValueError(f"buffer must have shape ({self.size},), got {buffer.shape}")
        return [buffer[a:b].reshape(s) for a, b, s in zip(self.offsets[:-1], self.offsets[1:], self.shapes)]

    def zero_grad(self):
        """Set every gradient to zero (one memset over the flat gradient buffer)."""
        self.grad.fill(0)

    def __len__(self):
        return len(self.shapes)

    def __repr__(self):
        return f"FlatParams({len(self.shapes)} arrays, {self.size} elements, {self.dtype})"


def flatten(arrays, dtype=None):
    """Pack ``arrays`` into a new :class:`FlatParams`, copying their values.

    Parameters
    ----------
    arrays : iterable of array_like
        The initial values; their shapes define the layout.
    dtype : float32 or float64, optional
        Default: the common result type of the arrays (float32 if all are float32).

    Returns
    -------
    FlatParams
        Use ``flat.params`` (views) in place of the original arrays from then on.

    Examples
    --------
    >>> import numpy as np
    >>> import fastopt
    >>> W, b = np.ones((2, 2), dtype=np.float32), np.zeros(2, dtype=np.float32)
    >>> flat = fastopt.flatten([W, b])
    >>> W, b = flat.params                         # use the views from now on
    >>> flat.data
    array([1., 1., 1., 1., 0., 0.], dtype=float32)
    >>> flat.offsets
    array([0, 4, 6])
    """
    arrays = [np.asarray(a) for a in arrays]
    if dtype is None:
        dtype = np.result_type(*arrays) if arrays else np.dtype(np.float32)
        if dtype.kind in "iub":   # integer initial values: train in float64
            dtype = np.dtype(np.float64)
    flat = FlatParams([a.shape for a in arrays], dtype=dtype)
    for view, a in zip(flat.params, arrays):
        view[...] = a
    return flat
