"""Voxelwise ridge encoding models with a cross-validated regularisation per voxel.

The model (METHOD.md) predicts every voxel's response ``Y[:, j]`` from the
delayed features ``X`` with ridge regression without intercept (``X`` and ``Y``
are z-scored per story, so both are centred)::

    w_j = argmin_w ||X w - Y[:, j]||^2 + alpha_j ||w||^2

The penalty ``alpha_j`` is chosen per voxel from a grid by the held-out score
averaged over cross-validation splits, then the weights are refit on all the
training data. :func:`fit_ridge_cv` does this with its own solver and
:func:`fit_himalaya` with himalaya's ``RidgeCV``, the reference; both return a
:class:`RidgeFit`.

How :func:`fit_ridge_cv` is fast
--------------------------------
Everything goes through one symmetric eigendecomposition (``eigh``) of the
Gram matrix ``G = X^T X`` (the *primal* form, when ``n_features <= n_samples``)
or of the kernel ``K = X X^T`` (the *kernel* form, otherwise), so the solver
works in ``k = min(n_samples, n_features)`` dimensions. In that eigenbasis
``(G + alpha I)^-1`` is the diagonal ``1 / (lambda + alpha)``, so trying
another alpha only rescales a diagonal, and all alphas reuse the same
projections of the data. Splits are handled by one of two strategies, picked
by a flop count (``strategy="auto"``):

``"downdate"`` (held-out sets small next to ``k``)
    No decomposition per split. With the hat matrix ``S = X (G + alpha I)^-1 X^T``
    of the fit on all rows, the Woodbury identity gives the predictions of the
    model fitted without the held-out rows ``h`` exactly::

        P_h = (I - S_hh)^-1 X_h (G + alpha I)^-1 X_t^T Y_t

    (``t``: the training rows), which costs one ``n_h x n_h`` inverse per split
    and alpha instead of one ``k x k`` eigendecomposition per split; the
    predictions are formed directly, not as ``Y_h`` minus residuals, which would
    cancel in float32 when strong shrinkage makes them small.
``"per_fold"`` (few features next to the held-out sets)
    One ``eigh`` per split of the training rows' Gram matrix, obtained from the
    shared one as ``G - X_h^T X_h`` (primal) or as the training block of ``K``
    (kernel); held-out predictions are ``X_test V diag(1 / (lambda + alpha)) V^T X_train^T Y_train``.

Precision: data, projections and predictions use ``dtype`` (float32 by
default); the Gram or kernel matrix, its eigendecomposition and the small
``n_h x n_h`` systems use float64, because float32 there loses the small
eigenvalues that the smallest alphas depend on.

Memory: with ``b`` bytes per value of ``dtype``, ``k = min(n, p)`` and
``n_h`` held-out rows per split, the peak is at most about
``b (n p + 2 n m + n k + 2 k m + p m) + 8 (n p + 2 k^2 + 3 n_h k)`` bytes:
``X``, ``Y`` and the held-out rows of ``Y``, the data projected onto the
eigenvectors (``n k`` and ``k m``), the weights (``p m``), float64 copies of
``X`` (for the Gram matrix) and of the eigenvectors, and one split's float64
system. ``"per_fold"`` in the primal form adds ``X^T Y`` (``b p m``). Within a
split each alpha adds ``b n_h (k + 2 m_b)`` bytes for ``m_b = voxel_batch``
voxels: ``voxel_batch`` bounds only that term. (The benchmark problem, 4,000 x
3,072 x 4,000 in float32, allocates 0.44 GB on top of its 0.11 GB inputs, as
the float64 copy of ``X`` is freed before the splits are solved.)

Scores
------
``"r2"`` is ``1 - SSE / sum((y - mean(y))^2)`` per split and ``"correlation"``
the Pearson r per split, both 0 for a voxel that is constant over the held-out
rows, as in himalaya. Ties between alphas go to the largest alpha.

Evaluation on the test story: :func:`correlation_score` between the
predictions and the mean of the test repeats, and :func:`normalised_score`
(``r / cc_max``), which is NaN for voxels with ``cc_max <= 0.05``, whose
ceiling is too unreliable to divide by; callers mask them with ``np.isfinite``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..validation import check_option

#: The reference grid (Huth lab bootstrap ridge), which penalises ``alpha**2``.
REFERENCE_ALPHAS = np.logspace(1, 4, 15)
#: The same penalties for a solver that penalises ``alpha`` (himalaya's and
#: this module's loss ``||X w - y||^2 + alpha ||w||^2``): ``logspace(2, 8, 15)``.
HIMALAYA_ALPHAS = REFERENCE_ALPHAS**2

BACKENDS = ("numpy", "torch", "torch_cuda")
SCORES = ("r2", "correlation")
SOLVERS = ("eigh", "himalaya")
STRATEGIES = ("auto", "downdate", "per_fold")
DTYPES = ("float32", "float64")

#: Cost of a ``k x k`` float64 eigendecomposition in multiply-adds of float32
#: matrix products, in units of ``k**3``; measured on a 2-core AVX-512 CPU
#: (``np.linalg.eigh`` of 3072 x 3072: 2.6 s; GEMM: 170 G multiply-adds/s).
EIGH_COST = 15.0


@dataclass
class RidgeFit:
    """A fitted voxelwise ridge model.

    Attributes
    ----------
    alphas : ndarray of shape (n_alphas,)
        The grid searched.
    best_alphas : ndarray of shape (n_voxels,)
        The alpha chosen for each voxel (a value of ``alphas``).
    cv_scores : ndarray of shape (n_alphas, n_voxels)
        Held-out score of every alpha, averaged over splits (float64).
    weights : ndarray of shape (n_features, n_voxels)
        Weights refit on all training rows with each voxel's alpha.
    score : str
        ``"r2"`` or ``"correlation"``.
    method : str
        How it was fitted, e.g. ``"eigh/downdate/primal"`` or ``"himalaya"``.
    """

    alphas: np.ndarray
    best_alphas: np.ndarray
    cv_scores: np.ndarray
    weights: np.ndarray
    score: str
    method: str

    @property
    def best_scores(self) -> np.ndarray:
        """Cross-validated score at each voxel's alpha, shape (n_voxels,)."""
        rows = np.argmax(self.alphas[:, None] == self.best_alphas[None, :], axis=0)
        return self.cv_scores[rows, np.arange(self.cv_scores.shape[1])]

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted responses, shape (n_samples, n_voxels), for features ``X`` (n_samples, n_features)."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.weights.shape[0]:
            raise ValueError(
                f"X must have shape (n_samples, {self.weights.shape[0]}) like the training features, "
                f"got shape {X.shape}"
            )
        return X.astype(self.weights.dtype, copy=False) @ self.weights


# ----------------------------------------------------------------------------- splits


def story_folds(groups, n_folds: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """Leave-stories-out cross-validation splits.

    Whole stories go to each test fold; stories are dealt longest first to the
    fold with the fewest TRs so far (ties: the story seen first, the lowest
    fold), which balances fold sizes and is deterministic.

    Parameters
    ----------
    groups : array-like of shape (n_trs,)
        Story label of every TR of the concatenated training data.
    n_folds : int
        Number of splits, from 2 to the number of stories.

    Returns
    -------
    splits : list of (train, test) pairs
        Sorted integer index arrays of shape (n_train,) and (n_test,).
    """
    groups = np.asarray(groups)
    if groups.ndim != 1 or groups.size == 0:
        raise ValueError(f"groups must be a non-empty 1-D array of story labels, got shape {groups.shape}")
    _, first, story_of_tr, lengths = np.unique(groups, return_index=True, return_inverse=True, return_counts=True)
    if not 2 <= n_folds <= len(lengths):
        raise ValueError(f"n_folds={n_folds!r} must lie between 2 and the number of stories ({len(lengths)})")
    fold_sizes = np.zeros(n_folds, dtype=np.int64)
    fold_of_story = np.empty(len(lengths), dtype=np.int64)
    for story in sorted(range(len(lengths)), key=lambda s: (-lengths[s], first[s])):
        fold = int(np.argmin(fold_sizes))
        fold_of_story[story] = fold
        fold_sizes[fold] += lengths[story]
    fold_of_tr = fold_of_story[story_of_tr.ravel()]
    return [(np.flatnonzero(fold_of_tr != fold), np.flatnonzero(fold_of_tr == fold)) for fold in range(n_folds)]


def bootstrap_chunk_splits(n_trs: int, n_boots: int = 3, chunk_len: int = 20, held_out_fraction: float = 0.25,
                           rng=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random held-out chunks of consecutive TRs, the reference bootstrap scheme.

    The TRs are cut into ``n_trs // chunk_len`` whole chunks (a shorter tail
    always trains); each bootstrap holds out ``int(n_trs * held_out_fraction / chunk_len)``
    chunks drawn without replacement and trains on every other TR.

    Parameters
    ----------
    n_trs : int
        Number of training TRs.
    n_boots : int
        Number of splits.
    chunk_len : int
        TRs per chunk (consecutive TRs are autocorrelated, so they are held out together).
    held_out_fraction : float
        Target fraction of TRs held out, in (0, 1).
    rng : None, int or numpy.random.Generator
        Seed or generator for the draw.

    Returns
    -------
    splits : list of (train, test) pairs
        Sorted integer index arrays; every test array has
        ``chunk_len * int(n_trs * held_out_fraction / chunk_len)`` TRs.
    """
    if n_boots < 1 or chunk_len < 1:
        raise ValueError(f"n_boots={n_boots!r} and chunk_len={chunk_len!r} must be positive")
    if not 0 < held_out_fraction < 1:
        raise ValueError(f"held_out_fraction={held_out_fraction!r} must lie strictly between 0 and 1")
    n_chunks = n_trs // chunk_len
    n_held = int(n_trs * held_out_fraction / chunk_len)
    if not 1 <= n_held < n_chunks:
        raise ValueError(
            f"n_trs={n_trs!r} gives {n_chunks} chunks of {chunk_len} TRs and {n_held} to hold out; "
            "need at least one held-out and one training chunk: use more TRs or a shorter chunk_len"
        )
    rng = np.random.default_rng(rng)
    splits = []
    for _ in range(n_boots):
        chunks = rng.choice(n_chunks, size=n_held, replace=False)
        test = np.sort((chunks[:, None] * chunk_len + np.arange(chunk_len)).ravel())
        splits.append((np.setdiff1d(np.arange(n_trs), test), test))
    return splits


# ----------------------------------------------------------------------------- scores


def correlation_score(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Pearson r between prediction and target of each voxel.

    Parameters
    ----------
    prediction, target : ndarray of shape (n_samples, n_voxels)

    Returns
    -------
    r : ndarray of shape (n_voxels,)
        float64; 0 where either series is constant.
    """
    prediction, target = np.asarray(prediction, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if prediction.shape != target.shape or prediction.ndim != 2:
        raise ValueError(
            f"prediction and target must have the same shape (n_samples, n_voxels), "
            f"got {prediction.shape} and {target.shape}"
        )
    prediction, target = prediction - prediction.mean(0), target - target.mean(0)
    return _centred_correlation(prediction, target, (target * target).sum(0), _NumpyOps())


def normalised_score(r: np.ndarray, ceiling: np.ndarray, min_ceiling: float = 0.05) -> np.ndarray:
    """Correlation as a fraction of the noise ceiling, ``r / cc_max``.

    Parameters
    ----------
    r : ndarray of shape (n_voxels,)
        :func:`correlation_score` on the test story.
    ceiling : ndarray of shape (n_voxels,)
        :func:`bt_utils.data.noise_ceiling.cc_max` of the test repeats.
    min_ceiling : float
        Voxels with ``ceiling <= min_ceiling`` get NaN (METHOD.md: 0.05).

    Returns
    -------
    normalised : ndarray of shape (n_voxels,)
        float64; NaN for excluded voxels (mask them with ``np.isfinite``).
    """
    r, ceiling = np.asarray(r, dtype=np.float64), np.asarray(ceiling, dtype=np.float64)
    if r.shape != ceiling.shape:
        raise ValueError(f"r and ceiling must have the same shape, got {r.shape} and {ceiling.shape}")
    if min_ceiling < 0:
        raise ValueError(f"min_ceiling must be >= 0, got {min_ceiling!r}")
    kept = ceiling > min_ceiling
    return np.divide(r, ceiling, out=np.full(r.shape, np.nan), where=kept)


def _column_sums(values, ops) -> np.ndarray:
    return ops.numpy(values.sum(0)).astype(np.float64)


def _centred_correlation(prediction, target, target_total, ops) -> np.ndarray:
    """Column-wise Pearson r of centred backend arrays (n_samples, n_voxels), given ``sum(target**2)``.

    Returns float64 numpy (n_voxels,), 0 where either column is constant.
    """
    covariance = _column_sums(prediction * target, ops)
    scale = np.sqrt(_column_sums(prediction * prediction, ops) * target_total)
    return np.divide(covariance, scale, out=np.zeros_like(covariance), where=scale > 0)


def _held_out_score(prediction, target, centred_target, target_total, score: str, ops) -> np.ndarray:
    """Score per voxel (float64) of held-out predictions against targets (n_test, n_voxels).

    ``centred_target`` is ``target - mean(target)`` and ``target_total`` its column sums of squares
    (both computed once per split, not per alpha); constant targets score 0.
    """
    if score == "r2":
        residual = target - prediction
        error = _column_sums(residual * residual, ops)
        return np.divide(target_total - error, target_total, out=np.zeros_like(target_total), where=target_total > 0)
    return _centred_correlation(prediction - prediction.mean(0), centred_target, target_total, ops)


def _best_alpha_index(cv_scores: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """Row of the best score per voxel in ``cv_scores`` (n_alphas, n_voxels); ties go to the largest alpha."""
    largest_first = np.argsort(-alphas, kind="stable")
    return largest_first[np.argmax(cv_scores[largest_first], axis=0)]


# ----------------------------------------------------------------------------- backends


class _NumpyOps:
    """Array operations of the numpy backend (the solver otherwise uses operators shared with torch).

    Linear algebra goes through numpy's LAPACK, not scipy's: scipy wheels bundle
    a second OpenBLAS whose threads and numpy's spin against each other when
    calls alternate (a 200 x 200 Cholesky then takes 0.3 s on 2 cores).
    """

    def __init__(self):
        self.dtypes = {"float32": np.float32, "float64": np.float64}

    def array(self, values, dtype: str):
        return np.asarray(values, dtype=self.dtypes[dtype])

    def index(self, indices: np.ndarray):
        return indices

    def numpy(self, values) -> np.ndarray:
        return values

    def eye(self, n: int):
        return np.eye(n)

    def eigh(self, matrix):
        """Ascending eigenvalues (clipped at 0) and eigenvectors of a float64 PSD matrix."""
        values, vectors = np.linalg.eigh(matrix)
        return values.clip(min=0), vectors

    def inverse(self, matrix):
        """Inverse of a symmetric positive-definite matrix from its Cholesky factor (1.7x faster than np.linalg.inv)."""
        root_inverse = _lower_triangular_inverse(np.linalg.cholesky(matrix))
        return root_inverse.T @ root_inverse


class _TorchOps:
    """Array operations of the torch backends (CPU or one CUDA device)."""

    def __init__(self, device: str):
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                "backend='torch_cuda' needs a CUDA GPU, but torch.cuda.is_available() is False on this machine; "
                "use backend='torch' or backend='numpy'"
            )
        self.torch = torch
        self.device = torch.device(device)
        self.dtypes = {"float32": torch.float32, "float64": torch.float64}

    def array(self, values, dtype: str):
        if isinstance(values, self.torch.Tensor):
            return values.to(device=self.device, dtype=self.dtypes[dtype])
        return self.torch.as_tensor(np.asarray(values), dtype=self.dtypes[dtype], device=self.device)

    def index(self, indices: np.ndarray):
        return self.torch.as_tensor(indices, dtype=self.torch.int64, device=self.device)

    def numpy(self, values) -> np.ndarray:
        return values.cpu().numpy()

    def eye(self, n: int):
        return self.torch.eye(n, dtype=self.torch.float64, device=self.device)

    def eigh(self, matrix):
        values, vectors = self.torch.linalg.eigh(matrix)
        return values.clip(min=0), vectors

    def inverse(self, matrix):
        return self.torch.cholesky_inverse(self.torch.linalg.cholesky(matrix))


def _lower_triangular_inverse(lower: np.ndarray) -> np.ndarray:
    """Inverse of a lower-triangular matrix (n, n) by 2 x 2 blocks, so most work is matrix products."""
    n = len(lower)
    if n <= 128:
        return np.linalg.inv(lower)
    half = n // 2
    top = _lower_triangular_inverse(lower[:half, :half])
    bottom = _lower_triangular_inverse(lower[half:, half:])
    inverse = np.zeros_like(lower)
    inverse[:half, :half] = top
    inverse[half:, half:] = bottom
    inverse[half:, :half] = -bottom @ (lower[half:, :half] @ top)
    return inverse


def _get_ops(backend: str):
    check_option("backend", backend, BACKENDS)
    if backend == "numpy":
        return _NumpyOps()
    return _TorchOps("cpu" if backend == "torch" else "cuda")


# ----------------------------------------------------------------------------- input checks


def _check_data(X, Y) -> tuple[np.ndarray, np.ndarray]:
    X, Y = np.asarray(X), np.asarray(Y)
    if X.ndim != 2 or Y.ndim != 2:
        raise ValueError(
            f"X must be (n_samples, n_features) and Y (n_samples, n_voxels), got shapes {X.shape} and {Y.shape}; "
            "reshape a single voxel with Y[:, None]"
        )
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but Y has {Y.shape[0]}; they must be the same TRs")
    if X.shape[0] < 2 or X.shape[1] == 0 or Y.shape[1] == 0:
        raise ValueError(f"X {X.shape} and Y {Y.shape} need at least 2 rows, 1 feature and 1 voxel")
    for name, values in (("X", X), ("Y", Y)):
        bad = np.size(values) - np.count_nonzero(np.isfinite(values))
        if bad:
            raise ValueError(
                f"{name} has {bad} NaN or infinite values; drop or fill them first (e.g. np.nan_to_num after z-scoring)"
            )
    return X, Y


def _check_alphas(alphas) -> np.ndarray:
    alphas = np.asarray(alphas, dtype=np.float64)
    if alphas.ndim != 1 or alphas.size == 0 or not np.all(np.isfinite(alphas)) or np.any(alphas <= 0):
        raise ValueError(f"alphas must be a non-empty 1-D array of positive numbers, got {alphas!r}")
    if len(np.unique(alphas)) != alphas.size:
        raise ValueError(f"alphas has repeated values: {alphas!r}")
    return alphas


def _check_splits(cv, n_samples: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validated (train, test) index pairs; test rows must not be training rows."""
    if isinstance(cv, (int, np.integer)) or cv is None:
        raise TypeError(
            f"cv must be a list of (train, test) index arrays, got {cv!r}; build one with story_folds or "
            "bootstrap_chunk_splits"
        )
    splits = []
    for number, split in enumerate(cv):
        train, test = (np.asarray(part) for part in split)
        for name, part in (("train", train), ("test", test)):
            if part.ndim != 1 or part.size == 0 or not np.issubdtype(part.dtype, np.integer):
                raise ValueError(f"split {number}: {name} must be a non-empty 1-D integer index array, got {part!r}")
            if part.min() < 0 or part.max() >= n_samples:
                raise ValueError(
                    f"split {number}: {name} indices must lie in [0, {n_samples}), got {part.min()}..{part.max()}"
                )
        if len(np.unique(train)) != train.size:
            raise ValueError(f"split {number}: train repeats rows; sample without replacement")
        if np.intersect1d(train, test).size:
            raise ValueError(f"split {number}: {np.intersect1d(train, test).size} test rows are also training rows")
        splits.append((np.sort(train), np.sort(test)))
    if not splits:
        raise ValueError("cv has no splits")
    return splits


# ----------------------------------------------------------------------------- the eigh solver


def _gram_eigh(X64, form: str, ops):
    """Eigenvalues (k,) and eigenvectors (k, k) of X^T X (primal) or X X^T (kernel), all float64."""
    return ops.eigh(X64.T @ X64 if form == "primal" else X64 @ X64.T)


class _Spectrum:
    """The eigendecomposition of the full Gram (or kernel) matrix and the data in its basis.

    ``factor`` (n_samples, k) and ``shrinkage(alpha)`` (k,) give the hat matrix of
    the fit on all rows as ``S = factor diag(shrinkage) factor^T``: in the primal
    form ``factor = X V`` and ``shrinkage = 1 / (lambda + alpha)``; in the kernel
    form ``factor = U`` and ``shrinkage = lambda / (lambda + alpha)``.
    """

    def __init__(self, X, X64, form: str, ops, dtype: str):
        self.X, self.form, self.ops, self.dtype = X, form, ops, dtype
        self.values, self.vectors64 = _gram_eigh(X64, form, ops)
        self.vectors = ops.array(self.vectors64, dtype)

    @cached_property
    def factor(self):
        """(n_samples, k) in the working dtype."""
        return self.X @ self.vectors if self.form == "primal" else self.vectors

    def shrinkage(self, alpha: float):
        """float64 (k,)."""
        if self.form == "primal":
            return 1.0 / (self.values + alpha)
        return self.values / (self.values + alpha)

    def weights(self, projected, alpha: float):
        """Weights (n_features, n_cols) of the fit on all rows, from ``factor^T Y`` (k, n_cols)."""
        inverse = self.ops.array(1.0 / (self.values + alpha), self.dtype)
        in_basis = self.vectors @ (projected * inverse[:, None])
        return in_basis if self.form == "primal" else self.X.T @ in_basis


@dataclass
class _HeldOutMap:
    """Held-out predictions of one split and alpha: ``mix @ (left @ right)`` (no mix if None).

    ``left`` (n_rows, k) and ``mix`` (n_test, n_rows) depend on alpha; ``right``
    (k, n_voxels), the training rows' targets in the eigenbasis, does not.
    """

    mix: object
    left: object


class _Downdate:
    """Held-out predictions of every split from the full fit (no decomposition per split).

    For held-out rows ``h`` (the rows not in train) and the full fit's hat
    matrix ``S``, the model fitted without ``h`` predicts
    ``(I - S_hh)^-1 F_h diag(shrinkage) F_t^T Y_t`` there, with ``F_t^T Y_t = F^T Y - F_h^T Y_h``.
    """

    def __init__(self, spectrum: _Spectrum, Y):
        self.spectrum, self.Y = spectrum, Y
        self.projected = spectrum.factor.T @ Y

    def split(self, train: np.ndarray, test: np.ndarray, alphas: np.ndarray):
        """The split's right factor (k, n_voxels) and a generator of one _HeldOutMap per alpha."""
        ops, spectrum = self.spectrum.ops, self.spectrum
        held = np.setdiff1d(np.arange(spectrum.factor.shape[0]), train)
        test_rows = ops.index(np.searchsorted(held, test))
        factor = spectrum.factor[ops.index(held)]
        factor64 = ops.array(factor, "float64")
        right = self.projected - factor.T @ self.Y[ops.index(held)]
        n_held, n_test, k, n_voxels = len(held), len(test), factor.shape[1], right.shape[1]
        # mix @ (left @ right) costs n_held k m + n_test n_held m; (mix @ left) @ right, n_test n_held k + n_test k m
        mix_first = n_test * k * (n_held + n_voxels) < n_held * n_voxels * (k + n_test)

        def maps():
            for alpha in alphas:
                shrinkage = spectrum.shrinkage(alpha)
                root = factor64 * shrinkage**0.5
                mix = ops.array(ops.inverse(ops.eye(n_held) - root @ root.T)[test_rows], spectrum.dtype)
                left = factor * ops.array(shrinkage, spectrum.dtype)
                yield _HeldOutMap(None, mix @ left) if mix_first else _HeldOutMap(mix, left)

        return right, maps()


class _PerFold:
    """Held-out predictions of every split from an eigendecomposition of its training rows."""

    def __init__(self, spectrum: _Spectrum, X64, Y):
        self.spectrum, self.X64, self.Y = spectrum, X64, Y
        if spectrum.form == "primal":
            self.gram = X64.T @ X64
            self.cross = spectrum.X.T @ Y
        else:
            self.gram = X64 @ X64.T

    @property
    def projected(self):
        """``factor^T Y`` (k, n_voxels), for the refit."""
        if self.spectrum.form == "primal":
            return self.spectrum.vectors.T @ self.cross
        return self.spectrum.factor.T @ self.Y

    def split(self, train: np.ndarray, test: np.ndarray, alphas: np.ndarray):
        """The split's right factor (k_train, n_voxels) and a generator of one _HeldOutMap per alpha."""
        ops, dtype, X = self.spectrum.ops, self.spectrum.dtype, self.spectrum.X
        train_rows, test_rows = ops.index(train), ops.index(test)
        if self.spectrum.form == "primal":
            held = ops.index(np.setdiff1d(np.arange(X.shape[0]), train))
            values, vectors64 = ops.eigh(self.gram - self.X64[held].T @ self.X64[held])
            vectors = ops.array(vectors64, dtype)
            right = vectors.T @ (self.cross - X[held].T @ self.Y[held])
            left = X[test_rows] @ vectors
        else:
            values, vectors64 = ops.eigh(self.gram[train_rows][:, train_rows])
            right = ops.array(vectors64, dtype).T @ self.Y[train_rows]
            left = ops.array(self.gram[test_rows][:, train_rows] @ vectors64, dtype)

        def maps():
            for alpha in alphas:
                yield _HeldOutMap(None, left * ops.array(1.0 / (values + alpha), dtype))

        return right, maps()


def _strategy_costs(n_samples: int, n_features: int, n_voxels: int, n_alphas: int,
                    splits: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Multiply-adds of the two strategies, counting float64 work twice and an eigh as ``EIGH_COST * k**3``."""
    k = min(n_samples, n_features)
    costs = {"downdate": EIGH_COST * k**3, "per_fold": EIGH_COST * k**3}
    for train, test in splits:
        n_held, n_test, k_fold = n_samples - len(train), len(test), min(len(train), n_features)
        prediction = min(n_held * (k + n_test) * n_voxels, n_test * k * (n_held + n_voxels))
        per_alpha = n_held**2 * k + 2 * n_held**3 + prediction
        costs["downdate"] += n_alphas * per_alpha
        decomposition = EIGH_COST * k_fold**3 + 2 * n_held * k_fold**2 + n_test * k_fold * k
        right = k_fold * (k_fold + n_held) * n_voxels
        costs["per_fold"] += decomposition + right + n_alphas * n_test * k_fold * n_voxels
    return costs


def _voxel_batches(n_voxels: int, voxel_batch: int | None) -> list[slice]:
    if voxel_batch is None:
        return [slice(0, n_voxels)]
    if isinstance(voxel_batch, bool) or not isinstance(voxel_batch, (int, np.integer)) or voxel_batch < 1:
        raise ValueError(f"voxel_batch must be a positive integer or None, got {voxel_batch!r}")
    return [slice(start, start + voxel_batch) for start in range(0, n_voxels, voxel_batch)]


def fit_ridge_cv(X: np.ndarray, Y: np.ndarray, *, cv, alphas=HIMALAYA_ALPHAS, backend: str = "numpy",
                 voxel_batch: int | None = None, score: str = "r2", solver: str = "eigh",
                 strategy: str = "auto", dtype: str = "float32") -> RidgeFit:
    """Ridge regression with a cross-validated alpha per voxel, refit on all rows.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        Training features (z-scored per story: no intercept is fitted).
    Y : ndarray of shape (n_samples, n_voxels)
        Training responses (z-scored per story).
    cv : list of (train, test) index arrays
        Splits, e.g. :func:`story_folds` or :func:`bootstrap_chunk_splits`;
        test rows must not be training rows.
    alphas : ndarray of shape (n_alphas,)
        Penalties of ``||X w - y||^2 + alpha ||w||^2`` (default :data:`HIMALAYA_ALPHAS`).
    backend : {"numpy", "torch", "torch_cuda"}
        Array library; ``"torch_cuda"`` runs the same code on the first CUDA device.
    voxel_batch : int or None
        Voxels scored at once (None: all), to bound the memory of each split (see module docstring).
    score : {"r2", "correlation"}
        Held-out score that chooses alpha.
    solver : {"eigh", "himalaya"}
        This module's solver, or :func:`fit_himalaya` (the reference; ignores
        ``voxel_batch`` and ``strategy``).
    strategy : {"auto", "downdate", "per_fold"}
        How splits are solved (module docstring); ``"auto"`` picks the fewer flops.
    dtype : {"float32", "float64"}
        Working precision of data, projections and weights.

    Returns
    -------
    fit : RidgeFit
        ``weights`` are a numpy array of ``dtype``.
    """
    check_option("solver", solver, SOLVERS)
    check_option("score", score, SCORES)
    check_option("strategy", strategy, STRATEGIES)
    check_option("dtype", dtype, DTYPES)
    if solver == "himalaya":
        return fit_himalaya(X, Y, cv=cv, alphas=alphas, backend=backend, score=score, dtype=dtype)
    X, Y = _check_data(X, Y)
    alphas = _check_alphas(alphas)
    splits = _check_splits(cv, X.shape[0])
    batches = _voxel_batches(Y.shape[1], voxel_batch)
    ops = _get_ops(backend)
    if strategy == "auto":
        costs = _strategy_costs(*X.shape, Y.shape[1], len(alphas), splits)
        strategy = min(costs, key=costs.get)

    X_work, Y_work, X64 = ops.array(X, dtype), ops.array(Y, dtype), ops.array(X, "float64")
    form = "primal" if X.shape[1] <= X.shape[0] else "kernel"
    spectrum = _Spectrum(X_work, X64, form, ops, dtype)
    system = _Downdate(spectrum, Y_work) if strategy == "downdate" else _PerFold(spectrum, X64, Y_work)
    del X64
    cv_scores = _cross_validate(system, Y_work, splits, alphas, batches, score, ops)
    best = _best_alpha_index(cv_scores, alphas)
    projected = system.projected
    weights = np.empty((X.shape[1], Y.shape[1]), dtype=np.dtype(dtype))
    for index in np.unique(best):
        voxels = np.flatnonzero(best == index)
        weights[:, voxels] = ops.numpy(spectrum.weights(projected[:, ops.index(voxels)], alphas[index]))
    return RidgeFit(alphas, alphas[best], cv_scores, weights, score, f"eigh/{strategy}/{form}")


def _cross_validate(system, Y, splits, alphas, batches, score, ops) -> np.ndarray:
    """Held-out scores (n_alphas, n_voxels) averaged over splits, float64."""
    totals = np.zeros((len(alphas), Y.shape[1]))
    for train, test in splits:
        right, maps = system.split(train, test, alphas)
        target = Y[ops.index(test)]
        centred = target - target.mean(0)
        target_total = _column_sums(centred * centred, ops)
        for index, held_out in enumerate(maps):
            for batch in batches:
                prediction = held_out.left @ right[:, batch]
                if held_out.mix is not None:
                    prediction = held_out.mix @ prediction
                totals[index, batch] += _held_out_score(prediction, target[:, batch], centred[:, batch],
                                                        target_total[batch], score, ops)
    return totals / len(splits)


# ----------------------------------------------------------------------------- the reference


def fit_himalaya(X: np.ndarray, Y: np.ndarray, *, cv, alphas=HIMALAYA_ALPHAS, backend: str = "numpy",
                 score: str = "r2", dtype: str = "float32") -> RidgeFit:
    """The same fit with himalaya's ``RidgeCV`` (default solver settings), the reference path.

    Parameters are those of :func:`fit_ridge_cv`. himalaya reports only the
    score of the best alpha, so the score of every alpha is recorded from the
    score function it calls once per split; ``best_alphas`` are himalaya's,
    snapped back onto the grid (it returns them in ``dtype``).

    Returns
    -------
    fit : RidgeFit
    """
    from himalaya.backend import get_backend, set_backend
    from himalaya.ridge import RidgeCV
    from himalaya.scoring import correlation_score as himalaya_correlation
    from himalaya.scoring import r2_score as himalaya_r2

    check_option("backend", backend, BACKENDS)
    check_option("score", score, SCORES)
    check_option("dtype", dtype, DTYPES)
    X, Y = _check_data(X, Y)
    alphas = _check_alphas(alphas)
    splits = _check_splits(cv, X.shape[0])
    if backend == "torch_cuda":
        _get_ops(backend)  # a clear error without CUDA
    score_function = himalaya_r2 if score == "r2" else himalaya_correlation
    recorded = []

    def recording_score(y_true, y_pred):
        scores = score_function(y_true, y_pred)
        recorded.append(get_backend().to_numpy(scores).astype(np.float64))
        return scores

    previous = get_backend()
    set_backend(backend, on_error="raise")
    try:
        model = RidgeCV(alphas=alphas, cv=splits, solver_params={"score_func": recording_score})
        model.fit(X.astype(dtype, copy=False), Y.astype(dtype, copy=False))
        himalaya_backend = get_backend()
        chosen = himalaya_backend.to_numpy(model.best_alphas_).astype(np.float64)
        weights = himalaya_backend.to_numpy(model.coef_).astype(dtype, copy=False)
    finally:
        set_backend(previous)
    if len(recorded) != len(splits) or recorded[0].shape != (len(alphas), Y.shape[1]):
        raise RuntimeError(
            f"himalaya scored {len(recorded)} batches for {len(splits)} splits; this himalaya version batches "
            "alphas or voxels differently from 0.4, which fit_himalaya expects"
        )
    nearest = np.abs(np.log(chosen)[None, :] - np.log(alphas)[:, None]).argmin(axis=0)
    return RidgeFit(alphas, alphas[nearest], np.mean(recorded, axis=0), weights, score, "himalaya")
