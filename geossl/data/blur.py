"""Separable Gaussian blur of (H, W, C) float32 images in numpy, with mirrored borders.

The taps are scipy's (radius int(truncate·σ + 0.5), normalised weights) and the border rule is
the one of ``cv2.GaussianBlur`` (BORDER_REFLECT_101, "dcb|abcd|cba": the edge pixel is not
repeated), which SSL4EO-S12's blur calls and torchvision's ``gaussian_blur`` shares; it is scipy's
``mode="mirror"``, so ``gaussian_blur`` equals two passes of ``scipy.ndimage.gaussian_filter1d``
in that mode. With OpenCV (``cv2``, a core dependency) the two passes are one ``cv2.sepFilter2D``
(about 6x fewer CPU seconds, input pipeline benchmark); without it, or when the radius reaches
the image size, each pass is a banded matrix product run on one BLAS thread. Importing this
module sets OpenCV to one thread: views are built in parallel by the pipeline's workers, not
inside one view.
"""

from __future__ import annotations

import contextlib

import numpy as np

try:
    import cv2
    cv2.setNumThreads(1)
except ImportError:  # optional: the numpy path below gives the same values
    cv2 = None
try:
    from threadpoolctl import ThreadpoolController
except ImportError:  # optional: without it BLAS keeps its own thread count
    ThreadpoolController = None
_BLAS = []


def gaussian_kernel(sigma: float, truncate: float = 3.0) -> np.ndarray:
    """(2r+1,) float64 normalised Gaussian, r = int(truncate·σ + 0.5) (scipy's radius)."""
    r = int(truncate * float(sigma) + 0.5)
    t = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def mirror_index(index: np.ndarray, n: int) -> np.ndarray:
    """Indices mirrored into [0, n) about the edge pixels, "dcb|abcd|cba" (OpenCV's
    BORDER_REFLECT_101, numpy's pad mode "reflect"), reflections of reflections included."""
    if n == 1:
        return np.zeros_like(index)
    q = np.mod(index, 2 * n - 2)
    return np.where(q >= n, 2 * n - 2 - q, q)


def blur_matrix(n: int, kernel: np.ndarray) -> np.ndarray:
    """(n, n) float32 banded matrix of a symmetric 1-D correlation with mirrored borders."""
    r = len(kernel) // 2
    m = np.zeros((n, n), np.float64)
    rows = np.arange(n)
    for j in range(-r, r + 1):
        m[rows, mirror_index(rows + j, n)] += kernel[j + r]   # (row, col) pairs unique for fixed j
    return m.astype(np.float32)


def _one_blas_thread():
    """Context running BLAS on the calling thread only: the blur's GEMMs are small, and spinning
    BLAS threads would compete with the input pipeline's own workers."""
    if ThreadpoolController is None:
        return contextlib.nullcontext()
    if not _BLAS:
        _BLAS.append(ThreadpoolController())
    return _BLAS[0].limit(limits=1, user_api="blas")


def _banded_matmul(m: np.ndarray, x: np.ndarray, radius: int, block: int = 32) -> np.ndarray:
    """m (n, n) with m[i, j] = 0 for |i − j| > radius, times x (n, k) → (n, k) float32: one small
    GEMM per block of output rows over the input rows the band reaches."""
    n = m.shape[0]
    if radius >= n:
        return m @ x
    out = np.empty(x.shape, np.float32)
    for i in range(0, n, block):
        a, b = max(0, i - radius), min(n, i + block + radius)
        np.matmul(m[i:i + block, a:b], x[a:b], out=out[i:i + block])
    return out


def gaussian_blur(x: np.ndarray, sigma: float, truncate: float = 3.0,
                  out: np.ndarray | None = None) -> np.ndarray:
    """(H, W, C) float → float32 blurred over H and W (separable, mirrored borders "dcb|abcd",
    radius int(truncate·σ + 0.5) as scipy); channels independent; written into ``out`` (H, W, C)
    float32 when given. OpenCV's ``sepFilter2D``, else each axis a banded matrix product on one
    BLAS thread, W after swapping it to the front."""
    k = gaussian_kernel(sigma, truncate)
    r = len(k) // 2
    x = np.asarray(x, np.float32)
    h, w, c = x.shape
    if r == 0:
        return x.copy() if out is None else write_into(x, out)
    if out is not None and np.may_share_memory(x, out):
        return write_into(gaussian_blur(x, sigma, truncate), out)
    if cv2 is not None and r < min(h, w) and c <= 512:
        taps = k.astype(np.float32)
        y = cv2.sepFilter2D(x, -1, taps, taps, dst=out, borderType=cv2.BORDER_REFLECT_101)
        return y.reshape(h, w, c) if out is None else write_into(y, out)
    with _one_blas_thread():
        y = _banded_matmul(blur_matrix(h, k), x.reshape(h, w * c), r).reshape(h, w, c)
        y = np.ascontiguousarray(y.transpose(1, 0, 2)).reshape(w, h * c)
        y = _banded_matmul(blur_matrix(w, k), y, r).reshape(w, h, c)
    y = y.transpose(1, 0, 2)
    return np.ascontiguousarray(y) if out is None else write_into(y, out)


def write_into(y: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """``y`` when there is no ``out``; else ``out`` holding y's values, copied unless y already
    is out's memory (OpenCV wrote there). The view kernels' ``out=`` arguments end here."""
    if out is None or y is out:
        return y
    if not (y.ctypes.data == out.ctypes.data and y.size == out.size and y.flags.c_contiguous):
        np.copyto(out, y if y.shape == out.shape else y.reshape(out.shape))
    return out
