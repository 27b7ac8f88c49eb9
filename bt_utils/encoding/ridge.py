"""Voxelwise ridge encoding models with a cross-validated penalty per voxel.

Every voxel's response ``Y[:, j]`` is predicted from the delayed features ``X`` by ridge regression without
intercept (both are z-scored per story, so centred)::

    w_j = argmin_w ||X w - Y[:, j]||^2 + alpha_j ||w||^2

``alpha_j`` is chosen per voxel from a grid by the held-out score averaged over cross-validation splits
(:func:`story_folds`, :func:`bootstrap_chunk_splits`); the weights are then refit on all training rows.
:class:`EigenRidgeCV` does this with the estimator interface of himalaya's ``RidgeCV`` and its results, faster:
one eigendecomposition serves every alpha and split. Its arrays go through himalaya's backends.

On the test story, :func:`correlation_score` compares predictions with the mean of the repeats and
:func:`normalised_score` divides by the noise ceiling (``r / cc_max``; NaN where the ceiling is too low to divide by).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..validation import check_option

#: The reference grid (Huth lab bootstrap ridge), which penalises ``alpha**2``.
REFERENCE_ALPHAS = np.logspace(1, 4, 15)
#: The same penalties for a solver that penalises ``alpha`` (himalaya's and
#: this module's loss ``||X w - y||^2 + alpha ||w||^2``): ``logspace(2, 8, 15)``.
HIMALAYA_ALPHAS = REFERENCE_ALPHAS**2

#: himalaya backends :class:`EigenRidgeCV` runs on (its float64 eigendecomposition
#: rules out ``"torch_mps"``; ``"cupy"`` is not supported).
BACKENDS = ("numpy", "torch", "torch_cuda")
SCORINGS = ("r2", "correlation")
STRATEGIES = ("auto", "downdate", "per_fold")
DTYPES = ("float32", "float64")
SOLVER_PARAMS = ("strategy", "n_targets_batch")

#: Cost of a ``k x k`` float64 eigendecomposition in multiply-adds of float32
#: matrix products, in units of ``k**3`` (an empirical constant).
EIGH_COST = 15.0


# ----------------------------------------------------------------------------- splits


def story_folds(groups, n_folds: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """Leave-stories-out cross-validation splits from the story label of every TR, ``groups`` (n_trs,): a list of
    (train, test) pairs of sorted integer index arrays.

    Whole stories go to each test fold, dealt longest first to the fold with the fewest TRs so far (ties: the story
    seen first, the lowest fold), so that folds are balanced and the split is deterministic.
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
    """Random held-out chunks of consecutive TRs, the reference bootstrap scheme: a list of (train, test) pairs of
    sorted index arrays, each test array of ``chunk_len * int(n_trs * held_out_fraction / chunk_len)`` TRs.
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
    """Pearson r of shape (n_voxels,) between ``prediction`` and ``target`` of shape (n_samples, n_voxels), per voxel;
    0 where either series is constant.
    """
    prediction, target = np.asarray(prediction, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if prediction.shape != target.shape or prediction.ndim != 2:
        raise ValueError(
            f"prediction and target must have the same shape (n_samples, n_voxels), "
            f"got {prediction.shape} and {target.shape}"
        )
    prediction, target = prediction - prediction.mean(0), target - target.mean(0)
    return _centred_correlation(prediction, target, (target * target).sum(0), get_backend("numpy"))


def normalised_score(r: np.ndarray, ceiling: np.ndarray, min_ceiling: float = 0.05) -> np.ndarray:
    """Correlation as a fraction of the noise ceiling, ``r / cc_max``, both of shape (n_voxels,); NaN for excluded
    voxels (mask them with ``np.isfinite``).
    """
    r, ceiling = np.asarray(r, dtype=np.float64), np.asarray(ceiling, dtype=np.float64)
    if r.shape != ceiling.shape:
        raise ValueError(f"r and ceiling must have the same shape, got {r.shape} and {ceiling.shape}")
    if min_ceiling < 0:
        raise ValueError(f"min_ceiling must be >= 0, got {min_ceiling!r}")
    kept = ceiling > min_ceiling
    return np.divide(r, ceiling, out=np.full(r.shape, np.nan), where=kept)


def _column_sums(values, backend) -> np.ndarray:
    return backend.to_numpy(values.sum(0)).astype(np.float64)


def _centred_correlation(prediction, target, target_total, backend) -> np.ndarray:
    """Column-wise Pearson r of centred backend arrays (n_samples, n_voxels), given ``sum(target**2)``."""
    covariance = _column_sums(prediction * target, backend)
    scale = np.sqrt(_column_sums(prediction * prediction, backend) * target_total)
    return np.divide(covariance, scale, out=np.zeros_like(covariance), where=scale > 0)


def _held_out_score(prediction, target, centred_target, target_total, scoring: str, backend) -> np.ndarray:
    """Score per voxel (float64) of held-out predictions against targets (n_test, n_voxels)."""
    if scoring == "r2":
        residual = target - prediction
        error = _column_sums(residual * residual, backend)
        return np.divide(target_total - error, target_total, out=np.zeros_like(target_total), where=target_total > 0)
    return _centred_correlation(prediction - prediction.mean(0), centred_target, target_total, backend)


def _best_alpha_index(cv_scores: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """Row of the best score per voxel in ``cv_scores`` (n_alphas, n_voxels); ties go to the largest alpha."""
    largest_first = np.argsort(-alphas, kind="stable")
    return largest_first[np.argmax(cv_scores[largest_first], axis=0)]


# ----------------------------------------------------------------------------- backends


def check_backend(name: str) -> str:
    """Return ``name`` if it is a himalaya backend :class:`EigenRidgeCV` runs on, else raise a ValueError."""
    return check_option("backend", name, BACKENDS)


def get_backend(name: str):
    """himalaya's backend module ``name``, leaving himalaya's global backend as it is.

    Raises
    ------
    ValueError
        For a name not in :data:`BACKENDS`.
    RuntimeError
        For ``"torch_cuda"`` on a machine without a CUDA GPU.
    """
    check_backend(name)
    if name == "torch_cuda":
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(
                "backend='torch_cuda' needs a CUDA GPU, but torch.cuda.is_available() is False on this machine; "
                "use backend='torch' or backend='numpy'"
            )
    return importlib.import_module(f"himalaya.backend.{name}")


def _eigh(matrix, backend):
    """Ascending eigenvalues (clipped at 0) and eigenvectors of a float64 PSD backend matrix."""
    values, vectors = backend.eigh(matrix)
    return backend.clip(values, 0, None), vectors


def _spd_inverse(matrix, backend):
    """Inverse of a symmetric positive-definite float64 backend matrix (n, n), from its Cholesky factor."""
    if backend.name == "numpy":
        root_inverse = _lower_triangular_inverse(np.linalg.cholesky(matrix))
        return root_inverse.T @ root_inverse
    import torch

    return torch.cholesky_inverse(torch.linalg.cholesky(matrix))


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


def _check_solver_params(solver_params) -> dict:
    """``solver_params`` with defaults filled in: ``strategy`` and ``n_targets_batch``."""
    params = {"strategy": "auto", "n_targets_batch": None}
    unknown = sorted(set(solver_params or {}) - set(SOLVER_PARAMS))
    if unknown:
        raise ValueError(f"solver_params has unknown keys {unknown}; valid keys: {', '.join(SOLVER_PARAMS)}")
    params.update(solver_params or {})
    check_option("strategy", params["strategy"], STRATEGIES)
    batch = params["n_targets_batch"]
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1):
        raise ValueError(f"n_targets_batch must be a positive integer or None, got {batch!r}")
    return params


# ----------------------------------------------------------------------------- the solver


class _Spectrum:
    """The eigendecomposition of the full Gram (or kernel) matrix and the data in its basis."""

    def __init__(self, X, X64, form: str, backend, dtype: str):
        self.X, self.form, self.backend, self.dtype = X, form, backend, dtype
        self.values, self.vectors64 = _eigh(X64.T @ X64 if form == "primal" else X64 @ X64.T, backend)
        self.vectors = backend.asarray(self.vectors64, dtype=dtype)

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
        inverse = self.backend.asarray(1.0 / (self.values + alpha), dtype=self.dtype)
        in_basis = self.vectors @ (projected * inverse[:, None])
        return in_basis if self.form == "primal" else self.X.T @ in_basis


@dataclass
class _HeldOutMap:
    """Held-out predictions of one split and alpha: ``mix @ (left @ right)`` (no mix if None)."""

    mix: object
    left: object


class _Downdate:
    """Held-out predictions of every split from the full fit (no decomposition per split)."""

    def __init__(self, spectrum: _Spectrum, Y):
        self.spectrum, self.Y = spectrum, Y
        self.projected = spectrum.factor.T @ Y

    def split(self, train: np.ndarray, test: np.ndarray, alphas: np.ndarray):
        """The split's right factor (k, n_voxels) and a generator of one _HeldOutMap per alpha."""
        spectrum = self.spectrum
        backend, dtype = spectrum.backend, spectrum.dtype
        held = np.setdiff1d(np.arange(spectrum.factor.shape[0]), train)
        test_rows = backend.asarray(np.searchsorted(held, test))
        held_rows = backend.asarray(held)
        factor = spectrum.factor[held_rows]
        factor64 = backend.asarray(factor, dtype="float64")
        right = self.projected - factor.T @ self.Y[held_rows]
        n_held, n_test, k, n_voxels = len(held), len(test), factor.shape[1], right.shape[1]
        # mix @ (left @ right) costs n_held k m + n_test n_held m; (mix @ left) @ right, n_test n_held k + n_test k m
        mix_first = n_test * k * (n_held + n_voxels) < n_held * n_voxels * (k + n_test)

        def maps():
            for alpha in alphas:
                shrinkage = spectrum.shrinkage(alpha)
                root = factor64 * shrinkage**0.5
                system = -(root @ root.T)
                backend.diagonal_view(system)[:] += 1.0
                mix = backend.asarray(_spd_inverse(system, backend)[test_rows], dtype=dtype)
                left = factor * backend.asarray(shrinkage, dtype=dtype)
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
        backend, dtype, X = self.spectrum.backend, self.spectrum.dtype, self.spectrum.X
        train_rows, test_rows = backend.asarray(train), backend.asarray(test)
        if self.spectrum.form == "primal":
            held = backend.asarray(np.setdiff1d(np.arange(X.shape[0]), train))
            values, vectors64 = _eigh(self.gram - self.X64[held].T @ self.X64[held], backend)
            vectors = backend.asarray(vectors64, dtype=dtype)
            right = vectors.T @ (self.cross - X[held].T @ self.Y[held])
            left = X[test_rows] @ vectors
        else:
            values, vectors64 = _eigh(self.gram[train_rows][:, train_rows], backend)
            right = backend.asarray(vectors64, dtype=dtype).T @ self.Y[train_rows]
            left = backend.asarray(self.gram[test_rows][:, train_rows] @ vectors64, dtype=dtype)

        def maps():
            for alpha in alphas:
                yield _HeldOutMap(None, left * backend.asarray(1.0 / (values + alpha), dtype=dtype))

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


def _cross_validate(system, Y, splits, alphas, batches, scoring, backend) -> np.ndarray:
    """Held-out scores (n_alphas, n_voxels) averaged over splits, float64."""
    totals = np.zeros((len(alphas), Y.shape[1]))
    for train, test in splits:
        right, maps = system.split(train, test, alphas)
        target = Y[backend.asarray(test)]
        centred = target - target.mean(0)
        target_total = _column_sums(centred * centred, backend)
        for index, held_out in enumerate(maps):
            for batch in batches:
                prediction = held_out.left @ right[:, batch]
                if held_out.mix is not None:
                    prediction = held_out.mix @ prediction
                totals[index, batch] += _held_out_score(prediction, target[:, batch], centred[:, batch],
                                                        target_total[batch], scoring, backend)
    return totals / len(splits)


# ----------------------------------------------------------------------------- the estimator


class EigenRidgeCV:
    """Ridge regression with a cross-validated alpha per voxel, refit on all rows.

    Parameters
    ----------
    alphas : array-like of shape (n_alphas,)
        Penalties of ``||X w - y||^2 + alpha ||w||^2`` (default :data:`HIMALAYA_ALPHAS`).
    cv : list of (train, test) index arrays
        Splits, e.g. :func:`story_folds` or :func:`bootstrap_chunk_splits`; test rows must not be training rows
        (rows in neither are allowed).
    scoring : {"r2", "correlation"}
        Held-out score that chooses alpha (per split, averaged; 0 for a voxel constant over the held-out rows, as
        in himalaya).
    backend : {"numpy", "torch", "torch_cuda"}
        himalaya backend of the computation (:func:`get_backend`); himalaya's global backend is neither read nor
        changed.
    dtype : {"float32", "float64"}
        Working precision of data, projections and weights.
    solver_params : dict or None
        ``"strategy"``: ``"auto"`` (default), ``"downdate"`` or ``"per_fold"``; ``"n_targets_batch"``: voxels
        scored at once (default None: all), which bounds the memory each alpha of a split adds
        (``n_h x n_targets_batch`` values).

    Attributes
    ----------
    best_alphas_ : ndarray of shape (n_voxels,)
        The alpha chosen for each voxel (a value of ``alphas``), float64.
    cv_scores_ : ndarray of shape (n_voxels,)
        Cross-validated score at each voxel's alpha, float64.
    alpha_scores_ : ndarray of shape (n_alphas, n_voxels)
        Cross-validated score of every alpha, float64.
    coef_ : ndarray of shape (n_features, n_voxels)
        Weights refit on all rows with each voxel's alpha (numpy, ``dtype``).
    method_ : str
        Strategy and form used, e.g. ``"downdate/primal"``.
    """

    def __init__(self, alphas=HIMALAYA_ALPHAS, cv=None, scoring: str = "r2", backend: str = "numpy",
                 dtype: str = "float32", solver_params: dict | None = None):
        self.alphas = _check_alphas(alphas)
        self.cv = cv
        self.scoring = check_option("scoring", scoring, SCORINGS)
        self.backend = check_backend(backend)
        self.dtype = check_option("dtype", dtype, DTYPES)
        self.solver_params = _check_solver_params(solver_params)

    def fit(self, X, Y) -> EigenRidgeCV:
        """Choose each voxel's alpha by cross-validation and refit the weights on all rows, from ``X`` (n_samples,
        n_features) and ``Y`` (n_samples, n_voxels), both z-scored per story (no intercept is fitted).
        """
        X, Y = _check_data(X, Y)
        splits = _check_splits(self.cv, X.shape[0])
        backend = get_backend(self.backend)
        strategy, batch = self.solver_params["strategy"], self.solver_params["n_targets_batch"]
        if strategy == "auto":
            costs = _strategy_costs(*X.shape, Y.shape[1], len(self.alphas), splits)
            strategy = min(costs, key=costs.get)
        batch = batch or Y.shape[1]
        batches = [slice(start, start + batch) for start in range(0, Y.shape[1], batch)]

        X_work, Y_work = backend.asarray(X, dtype=self.dtype), backend.asarray(Y, dtype=self.dtype)
        X64 = backend.asarray(X, dtype="float64")
        form = "primal" if X.shape[1] <= X.shape[0] else "kernel"
        spectrum = _Spectrum(X_work, X64, form, backend, self.dtype)
        system = _Downdate(spectrum, Y_work) if strategy == "downdate" else _PerFold(spectrum, X64, Y_work)
        del X64
        self.alpha_scores_ = _cross_validate(system, Y_work, splits, self.alphas, batches, self.scoring, backend)
        best = _best_alpha_index(self.alpha_scores_, self.alphas)
        self.best_alphas_ = self.alphas[best]
        self.cv_scores_ = self.alpha_scores_[best, np.arange(Y.shape[1])]
        projected = system.projected
        self.coef_ = np.empty((X.shape[1], Y.shape[1]), dtype=np.dtype(self.dtype))
        for index in np.unique(best):
            voxels = np.flatnonzero(best == index)
            weights = spectrum.weights(projected[:, backend.asarray(voxels)], self.alphas[index])
            self.coef_[:, voxels] = backend.to_numpy(weights)
        self.method_ = f"{strategy}/{form}"
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X) -> np.ndarray:
        """Predicted responses, shape (n_samples, n_voxels), for features ``X`` (n_samples, n_features)."""
        if not hasattr(self, "coef_"):
            raise RuntimeError("this EigenRidgeCV is not fitted yet; call fit(X, Y) first")
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X must have shape (n_samples, {self.n_features_in_}) like the training features, got shape {X.shape}"
            )
        return X.astype(self.coef_.dtype, copy=False) @ self.coef_

    def score(self, X, Y) -> np.ndarray:
        """R^2 of the predictions of ``X`` against ``Y`` (n_samples, n_voxels) per voxel, shape (n_voxels,)."""
        prediction = self.predict(X)
        Y = np.asarray(Y, dtype=np.float64)
        if Y.shape != prediction.shape:
            raise ValueError(f"Y must have shape {prediction.shape} like the predictions, got {Y.shape}")
        centred = Y - Y.mean(0)
        return _held_out_score(prediction, Y, centred, (centred * centred).sum(0), "r2", get_backend("numpy"))
