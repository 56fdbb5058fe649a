"""The judge's measures: KID (unbiased, with a jackknife standard error) and feature diversity."""
import numpy as np
import pytest

from jaxface.evaluate import generation as metrics
from jaxface.generate import command
from jaxface.generate.settings import GenerateError


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 16)), rng.normal(size=(200, 16))
    same, same_se = metrics.kid(a, b)
    shifted, shifted_se = metrics.kid(a, b + 0.5)
    assert abs(same) < 3 * same_se  # unbiased: zero within its error for one distribution
    assert shifted > same + 5 * shifted_se > 0
    assert metrics.kid(a, b + 1.0)[0] > shifted  # further apart, larger


def test_kid_matches_its_definition_and_refuses_too_few_images():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(7, 3))
    k = lambda u, v: (u @ v.T / 3 + 1) ** 3  # noqa: E731
    kxx, kyy = k(x, x), k(y, y)
    expected = ((kxx.sum() - np.trace(kxx)) / 20 + (kyy.sum() - np.trace(kyy)) / 42 - 2 * k(x, y).mean())
    assert metrics.kid(x, y)[0] == pytest.approx(expected)
    assert np.isnan(metrics.kid(x[:1], y)[0])
    assert not np.isnan(metrics.kid(x[:2], y)[0]) and np.isnan(metrics.kid(x[:2], y)[1])


def test_feature_diversity_is_the_mean_pairwise_distance():
    f = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 8.0]])
    assert metrics.feature_diversity(f) == pytest.approx((5.0 + 8.0 + 5.0) / 3)
    assert np.isnan(metrics.feature_diversity(f[:1]))


def test_a_judge_applies_to_an_attribute_set_only(tmp_path):
    with pytest.raises(GenerateError, match="--judge_workdir applies to --attributes"):
        command.generate_command(tmp_path, reconstruct="face.png", judge_workdir=str(tmp_path))
