"""fastnn.sklearn estimators: scikit-learn's API contract, pipelines, grid search and solvers."""
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_digits, make_classification, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import check_estimator  # noqa: E402

from fastnn.sklearn import MLPClassifier, MLPRegressor  # noqa: E402


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def digits():
    x, y = load_digits(return_X_y=True)
    return x / 16.0, y


def test_defaults_match_scikit_learn():
    from sklearn.neural_network import MLPClassifier as SkMLP

    ours, theirs = MLPClassifier().get_params(), SkMLP().get_params()
    for k, v in theirs.items():
        assert ours[k] == v, k
    assert ours["dropout"] == 0.0 and ours["batch_norm"] is False and ours["device"] == "cpu"


@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
def test_classifier_learns_digits(solver):
    x, y = digits()
    clf = MLPClassifier(hidden_layer_sizes=(64,), solver=solver, max_iter=60, random_state=0,
                        learning_rate_init=0.01 if solver == "sgd" else 0.001)
    clf.fit(x[:1500], y[:1500])
    assert clf.score(x[1500:], y[1500:]) > 0.85  # the last 297 digits are the hard ones
    if solver == "adam":  # same data, same init scheme: scikit-learn's own MLP scores alike
        from sklearn.neural_network import MLPClassifier as SkMLP

        theirs = SkMLP(hidden_layer_sizes=(64,), max_iter=60, random_state=0).fit(x[:1500], y[:1500])
        assert abs(clf.score(x[1500:], y[1500:]) - theirs.score(x[1500:], y[1500:])) < 0.03
    assert list(clf.classes_) == list(range(10))
    proba = clf.predict_proba(x[1500:])
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    assert clf.coefs_[0].shape == (64, 64) and clf.intercepts_[1].shape == (10,)
    assert len(clf.loss_curve_) >= 1 and clf.n_iter_ >= 1


def test_lecture_lbfgs_tanh_configuration():
    x, y = digits()
    clf = MLPClassifier(solver="lbfgs", random_state=0, hidden_layer_sizes=(100, 100, 100), activation="tanh",
                        max_iter=50)
    clf.fit(x[:1000], y[:1000])
    assert clf.score(x[1000:], y[1000:]) > 0.9


def test_lbfgs_runs_numpy_blas_on_one_thread(monkeypatch):
    # numpy's BLAS threads, left spinning by L-BFGS-B's vector updates, took a core from fastnn's
    # GEMMs (a fit 1.6x slower on 2 cores); the solver runs with BLAS limited to one thread, and
    # the caller's limit is back afterwards
    import scipy.optimize
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    seen = []
    minimize = scipy.optimize.minimize

    def spy(*args, **kwargs):
        seen.append(blas_threads())
        return minimize(*args, **kwargs)

    before = blas_threads()
    monkeypatch.setattr(scipy.optimize, "minimize", spy)
    x, y = digits()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        MLPClassifier(solver="lbfgs", hidden_layer_sizes=(16,), max_iter=3, random_state=0).fit(x[:200], y[:200])
    assert seen and seen[0] and all(n == 1 for n in seen[0])  # numpy and scipy link a BLAS
    assert blas_threads() == before


def test_dropout_batch_norm_and_early_stopping():
    x, y = digits()
    clf = MLPClassifier(hidden_layer_sizes=(64, 64), dropout=0.2, batch_norm=True, early_stopping=True,
                        random_state=0, max_iter=40)
    clf.fit(x, y)
    assert clf.validation_scores_ and max(clf.validation_scores_) > 0.9
    assert clf.score(x, y) > 0.9


def test_binary_and_string_labels_and_multilabel():
    x, y = make_classification(n_samples=300, n_features=8, random_state=0)
    labels = np.array(["no", "yes"])[y]
    clf = MLPClassifier(hidden_layer_sizes=(16,), random_state=0, max_iter=100).fit(x, labels)
    assert set(clf.predict(x)) <= {"no", "yes"} and clf.predict_proba(x).shape == (300, 2)
    assert clf.score(x, labels) > 0.85
    multi = np.stack([y, 1 - y, (x[:, 0] > 0).astype(int)], axis=1)
    clf = MLPClassifier(hidden_layer_sizes=(16,), random_state=0, max_iter=100).fit(x, multi)
    assert clf.predict(x).shape == (300, 3)


@pytest.mark.parametrize("learning_rate", ["constant", "invscaling", "adaptive"])
def test_sgd_learning_rate_schedules(learning_rate):
    x, y = digits()
    clf = MLPClassifier(hidden_layer_sizes=(32,), solver="sgd", learning_rate=learning_rate, learning_rate_init=0.1,
                        max_iter=30, random_state=0)
    clf.fit(x, y)
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]


def test_partial_fit_and_warm_start():
    x, y = digits()
    clf = MLPClassifier(hidden_layer_sizes=(32,), random_state=0)
    with pytest.raises(ValueError, match="classes"):
        clf.partial_fit(x[:100], y[:100])
    for _ in range(20):
        clf.partial_fit(x, y, classes=np.arange(10))
    assert clf.score(x, y) > 0.9
    warm = MLPClassifier(hidden_layer_sizes=(32,), random_state=0, max_iter=5, warm_start=True).fit(x, y)
    first = warm.coefs_[0].copy()
    warm.fit(x, y)
    assert len(warm.loss_curve_) > 5 and not np.array_equal(first, warm.coefs_[0])


def test_regressor():
    x, y = make_regression(n_samples=400, n_features=10, noise=0.1, random_state=0)
    y = y / y.std()
    reg = MLPRegressor(hidden_layer_sizes=(64,), max_iter=200, random_state=0, learning_rate_init=0.01).fit(x, y)
    assert reg.score(x, y) > 0.95
    assert reg.predict(x).shape == (400,)
    reg = MLPRegressor(solver="lbfgs", hidden_layer_sizes=(32,), max_iter=200, random_state=0).fit(x, np.stack([y, -y], 1))
    assert reg.predict(x).shape == (400, 2) and reg.score(x, np.stack([y, -y], 1)) > 0.95


def test_random_state_makes_fits_reproducible():
    x, y = digits()
    a = MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, random_state=3, dropout=0.1).fit(x, y)
    b = MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, random_state=3, dropout=0.1).fit(x, y)
    np.testing.assert_array_equal(a.coefs_[0], b.coefs_[0])


def test_pipeline_and_grid_search_like_the_lecture():
    x, y = digits()
    pipe = make_pipeline(StandardScaler(), MLPClassifier(random_state=0, max_iter=200))
    grid = GridSearchCV(pipe, {"mlpclassifier__hidden_layer_sizes": [(32,), (32, 32)]}, cv=3, return_train_score=True)
    grid.fit(x[:600], y[:600])
    assert grid.best_score_ > 0.85
    assert set(grid.cv_results_["param_mlpclassifier__hidden_layer_sizes"]) == {(32,), (32, 32)}
    assert "mean_train_score" in grid.cv_results_


def test_bad_parameters_raise_value_errors():
    x, y = digits()
    for kwargs in ({"hidden_layer_sizes": (0,)}, {"activation": "gelu"}, {"solver": "lion"}, {"alpha": -1},
                   {"dropout": 1.0}, {"batch_size": 0}, {"learning_rate": "fast"}):
        with pytest.raises(ValueError):
            MLPClassifier(**kwargs).fit(x[:50], y[:50])
    with pytest.raises(ValueError):
        MLPClassifier().fit(np.full((10, 3), np.nan), np.arange(10) % 2)


# check_estimator runs scikit-learn's whole API contract on the default estimators. Skipped
# checks: none — every check must pass.
@pytest.mark.parametrize("estimator", [MLPClassifier(random_state=0), MLPRegressor(random_state=0)],
                         ids=["MLPClassifier", "MLPRegressor"])
def test_check_estimator(estimator):
    check_estimator(estimator)
