"""Slowdown models, all with one interface: fit on feature rows, predict a slowdown
and an interval (by default the 10th-90th percentile, an 80% interval).

The learned models predict log(slowdown) so that "twice as slow" and "half the
extra time" are symmetric errors, and clip the expected slowdown at 1 (a tool call
is never faster than alone, by definition of its solo baseline; measured faster
runs are noise, which the interval's low bound does show).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from agentd.predictor.features import FEATURE_NAMES

Array = NDArray[np.float64]
QUANTILES = (0.1, 0.9)

#: The first-principles model's columns (features.cpu_share_slowdown and the I/O
#: interactions): what transfers to a workload type never seen.
SHARE_COLUMNS = [
    FEATURE_NAMES.index(n)
    for n in ("cpu_share_slowdown", "io_share_x_psi_io", "io_share_x_disk_busy")
]

#: The PSI columns: "linear on PSI" uses only these.
PSI_COLUMNS = [
    FEATURE_NAMES.index(n)
    for n in ("psi_cpu_some", "psi_memory_some", "psi_memory_full", "psi_io_some", "psi_io_full")
]


class SlowdownModel(Protocol):
    name: str

    def fit(self, x: Array, y: Array, classes: list[str]) -> None: ...

    def predict(self, x: Array, classes: list[str]) -> tuple[Array, Array, Array]:
        """(slowdown, low, high), each of shape (n,)."""
        ...


def _residual_bounds(residuals: Array) -> tuple[float, float]:
    if residuals.size == 0:
        return 0.0, 0.0
    low, high = np.quantile(residuals, QUANTILES)
    return float(low), float(high)


#: Folds of command classes for the held-out-class residuals (each fold's classes
#: predicted by a model fitted on the others): three keep training to 3 + 2 x 3 fits.
CLASS_FOLDS = 3


def class_folds(classes: list[str], folds: int = CLASS_FOLDS) -> list[Array] | None:
    """Boolean masks of `folds` groups of whole classes (None with fewer than three
    classes): rows of one class are always in the same fold."""
    names = sorted(set(classes))
    if len(names) < 3:
        return None
    fold_of = {name: i % folds for i, name in enumerate(names)}
    index = np.array([fold_of[c] for c in classes])
    return [index == k for k in range(min(folds, len(names)))]


def held_out_class_residuals(
    fit_predict: Callable[[Array, Array, Array], Array], x: Array, logy: Array, classes: list[str]
) -> Array | None:
    """Log residuals of every row as predicted by a model fitted without its class
    (None with fewer than three classes). In-sample residuals make intervals far too
    narrow for a command class never seen; these are what a new class will meet."""
    masks = class_folds(classes)
    if masks is None:
        return None
    out = np.empty(len(logy))
    for held in masks:
        out[held] = logy[held] - fit_predict(x[~held], logy[~held], x[held])
    return out


def _conformal_quantile(scores: Array, coverage: float) -> float:
    """The split-conformal quantile: the (n + 1) * coverage-th smallest score."""
    n = len(scores)
    q = min(1.0, np.ceil((n + 1) * coverage) / n)
    return float(np.quantile(scores, q))


class NoSlowdown:
    """Baseline: every call runs as fast as alone."""

    name = "no-slowdown"

    def fit(self, x: Array, y: Array, classes: list[str]) -> None:
        self._low, self._high = _residual_bounds(np.log(y))

    def predict(self, x: Array, classes: list[str]) -> tuple[Array, Array, Array]:
        ones = np.ones(len(x))
        return ones, np.exp(self._low) * ones, np.exp(self._high) * ones


class ClassMean:
    """Baseline: the mean slowdown the class saw in training (all classes' mean for a
    class never seen)."""

    name = "class-mean"

    def fit(self, x: Array, y: Array, classes: list[str]) -> None:
        logs = np.log(y)
        self._overall = float(logs.mean()) if len(logs) else 0.0
        self._means: dict[str, float] = {}
        for cls in set(classes):
            mask = np.array([c == cls for c in classes])
            self._means[cls] = float(logs[mask].mean())
        fitted = np.array([self._means[c] for c in classes])
        self._low, self._high = _residual_bounds(logs - fitted)

    def predict(self, x: Array, classes: list[str]) -> tuple[Array, Array, Array]:
        mid = np.array([self._means.get(c, self._overall) for c in classes])
        return _bounded(mid, mid + self._low, mid + self._high)


class PsiLinear:
    """Baseline: least squares on the node's PSI fractions only."""

    name = "psi-linear"

    def fit(self, x: Array, y: Array, classes: list[str]) -> None:
        from sklearn.linear_model import LinearRegression

        self._model = LinearRegression().fit(x[:, PSI_COLUMNS], np.log(y))
        self._low, self._high = _residual_bounds(np.log(y) - self._model.predict(x[:, PSI_COLUMNS]))

    def predict(self, x: Array, classes: list[str]) -> tuple[Array, Array, Array]:
        mid = self._model.predict(x[:, PSI_COLUMNS])
        return _bounded(mid, mid + self._low, mid + self._high)


def clip_to_range(x: Array, seen: Array) -> Array:
    """`x` with every feature held inside the range `seen` had (its columns' min and
    max): a linear model extrapolating on a workload type whose profile lies outside
    the training range answered slowdowns of 20 (the cap) where 2 was measured."""
    return np.clip(x, seen.min(axis=0), seen.max(axis=0))


class RidgeModel:
    """Linear on all features (standardized, clipped to the training range),
    L2-regularized."""

    name = "ridge"

    def fit(self, x: Array, y: Array, classes: list[str]) -> None:
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        def fit_predict(xt: Array, yt: Array, xp: Array) -> Array:
            model = make_pipeline(StandardScaler(), Ridge(alpha=3.0)).fit(xt, yt)
            return model.predict(clip_to_range(xp, xt))

        logy = np.log(y)
        self._range = np.vstack([x.min(axis=0), x.max(axis=0)])
        self._model = make_pipeline(StandardScaler(), Ridge(alpha=3.0)).fit(x, logy)
        held_out = held_out_class_residuals(fit_predict, x, logy, classes)
        in_sample = logy - self._model.predict(x)
        self._low, self._high = _residual_bounds(held_out if held_out is not None else in_sample)

    def predict(self, x: Array, classes: list[str]) -> tuple[Array, Array, Array]:
        mid = self._model.predict(clip_to_range(x, self._range))
        return _bounded(mid, mid + self._low, mid + self._high)


class OnlineSGD:
    """An online learner: one pass of SGD over the records in time order, as the
    daemon would see them (partial_fit per record), on standardized features."""

    name = "online-sgd"

    def fit(self, x: Array, y: Array, classes: list[str]) -> None:
        logy = np.log(y)
        self._range = np.vstack([x.min(axis=0), x.max(axis=0)])
        self._scaler, self._model, residuals = self._one_pass(x, logy)

        def fit_predict(xt: Array, yt: Array, xp: Array) -> Array:
            scaler, model, _ = self._one_pass(xt, yt)
            return model.predict(scaler.transform(clip_to_range(xp, xt)))

        held_out = held_out_class_residuals(fit_predict, x, logy, classes)
        self._low, self._high = _residual_bounds(held_out if held_out is not None else residuals)

    @staticmethod
    def _one_pass(x: Array, logy: Array) -> tuple[Any, Any, Array]:
        from sklearn.linear_model import SGDRegressor
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler()
        model = SGDRegressor(
            loss="huber", epsilon=0.2, alpha=1e-3, learning_rate="invscaling", eta0=0.02
        )
        residuals = []
        for i in range(len(x)):
            row = x[i : i + 1]
            scaler.partial_fit(row)
            scaled = scaler.transform(row)
            if i > 0:  # prequential: the residual before learning from the row
                residuals.append(logy[i] - float(model.predict(scaled)[0]))
            model.partial_fit(scaled, logy[i : i + 1])
        return scaler, model, np.array(residuals)

    def predict(self, x: Array, classes: list[str]) -> tuple[Array, Array, Array]:
        mid = self._model.predict(self._scaler.transform(clip_to_range(x, self._range)))
        return _bounded(mid, mid + self._low, mid + self._high)


class CpuShare:
    """First principles, three coefficients: log slowdown = b * log(the CFS share
    estimate) + c * (I/O share x I/O pressure) + e * (I/O share x disk busy), b, c, e
    >= 0 and no intercept (no pressure, no slowdown), fitted by least absolute
    deviations. The estimate
    (features.cpu_share_slowdown) needs only the candidate's solo CPU demand and
    agentd's tool calls' CPU use on the CPUs it would share, so it knows nothing of
    command classes and transfers to a workload type never seen as well as its
    physics holds. The interval: quantiles of held-out-class residuals."""

    name = "cpu-share"

    def fit(self, x: Array, y: Array, classes: list[str]) -> None:
        logy = np.log(y)
        self._coef = self._nnls(self._design(x), logy)
        held_out = held_out_class_residuals(
            lambda xt, yt, xp: self._design(xp) @ self._nnls(self._design(xt), yt),
            x,
            logy,
            classes,
        )
        in_sample = logy - self._design(x) @ self._coef
        self._low, self._high = _residual_bounds(held_out if held_out is not None else in_sample)

    @staticmethod
    def _design(x: Array) -> Array:
        d = x[:, SHARE_COLUMNS].copy()
        d[:, 0] = np.log(np.maximum(d[:, 0], 1.0))
        return d

    @staticmethod
    def _nnls(a: Array, b: Array) -> Array:
        """Least absolute deviations with non-negative coefficients (the figure of
        merit is an absolute error: the median, not the mean, of the noisy runs), as a
        linear program: min sum(u + v) s.t. a c + u - v = b, c, u, v >= 0."""
        from scipy.optimize import linprog

        n, k = a.shape
        cost = np.concatenate([np.zeros(k), np.ones(2 * n)])
        eq = np.hstack([a, np.eye(n), -np.eye(n)])
        result = linprog(cost, A_eq=eq, b_eq=b, bounds=(0, None), method="highs")
        if not result.success:  # pragma: no cover - a feasible LP always solves
            raise ValueError(f"cpu-share fit failed: {result.message}")
        return np.asarray(result.x[:k])

    def predict(self, x: Array, classes: list[str]) -> tuple[Array, Array, Array]:
        mid = self._design(x) @ self._coef
        return _bounded(mid, mid + self._low, mid + self._high)


class GradientBoosting:
    """Gradient-boosted trees (quantile loss) for the median and the two quantiles.

    scikit-learn's classic GradientBoostingRegressor, not HistGradientBoosting: on a
    few hundred rows both fit in well under a second, but predicting 10 rows costs
    ~0.1 ms per model here against several ms for the histogram variant (per-call
    thread-pool and binning overhead), and serving has a 5 ms budget.
    """

    name = "gbt"

    def __init__(self, n_estimators: int = 80) -> None:
        self._n_estimators = n_estimators

    def fit(self, x: Array, y: Array, classes: list[str]) -> None:
        logy = np.log(y)
        self._mid = CompiledTrees(self._quantile(0.5, x, logy))
        self._low = CompiledTrees(self._quantile(QUANTILES[0], x, logy))
        self._high = CompiledTrees(self._quantile(QUANTILES[1], x, logy))
        # Conformalized quantile regression: how far outside [low, high] the rows of
        # a class fall when that class was not in training; widen (or narrow) both
        # bounds by the conformal quantile of that distance.
        self._widen = 0.0
        masks = class_folds(classes)
        if masks is not None:
            scores = np.empty(len(logy))
            for held in masks:
                xt, yt = x[~held], logy[~held]
                low = self._quantile(QUANTILES[0], xt, yt).predict(x[held])
                high = self._quantile(QUANTILES[1], xt, yt).predict(x[held])
                scores[held] = np.maximum(low - logy[held], logy[held] - high)
            self._widen = _conformal_quantile(scores, QUANTILES[1] - QUANTILES[0])

    def _quantile(self, q: float, x: Array, logy: Array) -> Any:
        from sklearn.ensemble import GradientBoostingRegressor

        return GradientBoostingRegressor(
            loss="quantile",
            alpha=q,
            n_estimators=self._n_estimators,
            learning_rate=0.06,
            max_depth=3,
            min_samples_leaf=5,
            subsample=0.8,
            random_state=0,
        ).fit(x, logy)

    def predict(self, x: Array, classes: list[str]) -> tuple[Array, Array, Array]:
        joint = self.__dict__.get("_joint")
        if joint is None:  # built on first use, not pickled (see CompiledTrees.joint)
            joint = self.__dict__["_joint"] = JointTrees([self._mid, self._low, self._high])
        mid, low, high = joint.predict(x)
        return _bounded(mid, low - self._widen, high + self._widen)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_joint"}


class CompiledTrees:
    """A fitted GradientBoostingRegressor as flat arrays, evaluated for all trees at
    once with numpy: scikit-learn's predict() spends ~1 ms per call in input checks
    and per-tree dispatch, which ScorePlacement (one call per candidate) would pay
    ten times; this walks every tree one level per step (depth 3: three steps).
    Same numbers as the estimator's predict() (tests/unit/test_predictor.py)."""

    def __init__(self, model: Any) -> None:
        trees = [est[0].tree_ for est in model.estimators_]
        width = max(t.node_count for t in trees)

        def stack(attr: str, fill: float) -> Array:
            out = np.full((len(trees), width), fill)
            for i, t in enumerate(trees):
                values = getattr(t, attr)
                out[i, : t.node_count] = values.reshape(t.node_count)
            return out

        self._left = stack("children_left", -1).astype(np.intp)
        self._right = stack("children_right", -1).astype(np.intp)
        self._feature = np.maximum(stack("feature", 0), 0).astype(np.intp)
        self._threshold = stack("threshold", 0.0)
        self._value = stack("value", 0.0)
        self._depth = max(t.max_depth for t in trees)
        self._rows = np.arange(len(trees))[:, None]
        self._init = float(model.init_.constant_.reshape(-1)[0])
        self._rate = float(model.learning_rate)

    def predict(self, x: Array) -> Array:
        return self.joint().predict(x)[0]

    def joint(self) -> JointTrees:
        """Built on first use, not pickled: model files of version 2 keep loading."""
        joint = self.__dict__.get("_joint")
        if joint is None:
            joint = self.__dict__["_joint"] = JointTrees([self])
        return joint

    def flat(self) -> tuple[Array, ...]:
        """The per-tree arrays as one flat array each, children as flat indices, and
        leaves pointing to themselves (a walk that reached one stays there)."""
        trees, width = self._left.shape
        base = (np.arange(trees) * width)[:, None]
        own = base + np.arange(width)[None, :]
        leaf = self._left < 0
        return (
            np.where(leaf, own, self._left + base).ravel(),
            np.where(leaf, own, self._right + base).ravel(),
            self._feature.ravel(),
            self._threshold.ravel(),
            self._value.ravel(),
            base.ravel(),
        )

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_joint"}


class JointTrees:
    """Several CompiledTrees (a model's median and quantile ensembles) walked in one
    pass over flat arrays: one `take` per array and level for all of them. 2-D fancy
    indexing with a leaf mask, once per ensemble, cost ~3x more; at 10 candidates the
    numpy calls' fixed cost, not the arithmetic, is what a predict pays."""

    def __init__(self, parts: list[CompiledTrees]) -> None:
        arrays: list[list[Array]] = [[], [], [], [], [], []]
        offset = 0
        for part in parts:
            left, right, feature, threshold, value, roots = part.flat()
            for i, a in enumerate(
                (left + offset, right + offset, feature, threshold, value, roots + offset)
            ):
                arrays[i].append(a)
            offset += len(left)
        self._left, self._right, self._feature, self._threshold, self._value, self._roots = (
            np.concatenate(a) for a in arrays
        )
        counts = [len(r) for r in arrays[5]]
        self._bounds = np.cumsum([0, *counts[:-1]])
        self._depth = max(part._depth for part in parts)
        self._init = np.array([part._init for part in parts])[:, None]
        self._rate = np.array([part._rate for part in parts])[:, None]
        self._walks: dict[int, tuple[Array, Array]] = {}

    def predict(self, x: Array) -> Array:
        """One row per ensemble, one column per row of x."""
        n = x.shape[0]
        walk = self._walks.get(n)
        if walk is None:  # per batch size: the columns and the roots of every walk
            walk = (np.tile(np.arange(n), len(self._roots)), np.repeat(self._roots, n))
            if len(self._walks) < 64:
                self._walks[n] = walk
        cols, node = walk
        xt = x.astype(np.float32).T.ravel()  # as the trees were split: float32 features
        for _ in range(self._depth):
            go_left = xt.take(self._feature.take(node) * n + cols) <= self._threshold.take(node)
            node = np.where(go_left, self._left.take(node), self._right.take(node))
        leaves = self._value.take(node).reshape(len(self._roots), n)
        return self._init + self._rate * np.add.reduceat(leaves, self._bounds, axis=0)


#: The largest slowdown a model may answer: a linear model extrapolating on features
#: far outside its training range answered 10^16 on a held-out antagonist.
MAX_SLOWDOWN = 20.0


def _bounded(mid: Array, low: Array, high: Array) -> tuple[Array, Array, Array]:
    """From log space to slowdowns, low <= mid <= high, all at most MAX_SLOWDOWN.

    The expected slowdown is at least 1 (never faster than alone, by definition of
    the baseline). The low bound is not: measured against solo runs on a busy node,
    a run is faster than its baseline about half the time, and an interval clipped
    at 1 covered 52% of held-out runs instead of 80%."""
    top = np.log(MAX_SLOWDOWN)
    mid_s = np.maximum(np.exp(np.minimum(mid, top)), 1.0)
    low_s = np.minimum(np.exp(np.clip(low, -top, top)), mid_s)
    high_s = np.maximum(np.exp(np.minimum(high, top)), mid_s)
    return mid_s, low_s, high_s


LEARNED: dict[str, type] = {
    "gbt": GradientBoosting,
    "ridge": RidgeModel,
    "online-sgd": OnlineSGD,
    "cpu-share": CpuShare,
}
BASELINES: dict[str, type] = {
    "no-slowdown": NoSlowdown,
    "psi-linear": PsiLinear,
    "class-mean": ClassMean,
}


def psi_rule(psi_cpu: float, psi_mem_some: float, psi_io_some: float) -> tuple[float, float, float]:
    """The fallback when no model is trained: a transparent rule, not fitted.

    A task that wants the CPU waits about as often as others already do (PSI cpu
    some is the share of time someone runnable waited); memory and I/O stalls add
    their share. The interval widens with the pressure the rule cannot explain.
    """
    extra = psi_cpu + psi_mem_some + 0.5 * psi_io_some
    mid = 1.0 + extra
    return mid, 1.0, 1.0 + 2.0 * extra + 0.1
