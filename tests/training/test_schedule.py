"""The weights' learning-rate schedule: values at the start, middle and end of a run."""

import math

import pytest

from naslora_deploy.training.schedule import learning_rate, total_steps


def test_constant_is_the_base_rate_throughout():
    assert [learning_rate(s, 10, 1e-3) for s in (0, 5, 9, 50)] == [1e-3] * 4


def test_cosine_start_middle_end():
    assert learning_rate(0, 100, 1e-3, "cosine") == pytest.approx(1e-3)
    assert learning_rate(50, 100, 1e-3, "cosine") == pytest.approx(0.5e-3)
    last = 1e-3 * 0.5 * (1 + math.cos(math.pi * 99 / 100))
    assert learning_rate(99, 100, 1e-3, "cosine") == pytest.approx(last)
    assert 0 < last < 1e-6  # the last step still learns, a little
    assert learning_rate(250, 100, 1e-3, "cosine") == pytest.approx(last)  # past the end: held


def test_poly_start_middle_end():
    assert learning_rate(0, 100, 1e-3, "poly") == pytest.approx(1e-3)
    assert learning_rate(50, 100, 1e-3, "poly") == pytest.approx(1e-3 * 0.5**0.9)
    assert learning_rate(99, 100, 1e-3, "poly") == pytest.approx(1e-3 * 0.01**0.9)


def test_linear_warmup_then_the_schedule_over_the_remaining_steps():
    rates = [learning_rate(s, 14, 1e-3, "cosine", warmup_steps=4) for s in range(14)]
    assert rates[:4] == pytest.approx([0.25e-3, 0.5e-3, 0.75e-3, 1e-3])
    assert rates[4] == pytest.approx(1e-3)  # progress 0 after the warm-up
    assert rates[9] == pytest.approx(0.5e-3)  # (9 - 4) / (14 - 4) = one half
    assert learning_rate(2, 10, 1e-3, "constant", warmup_steps=4) == pytest.approx(0.75e-3)


def test_total_steps_is_the_smaller_of_epochs_and_max_steps():
    assert total_steps(40, 25) == 1000
    assert total_steps(40, 25, max_steps=300) == 300
    assert total_steps(2, 3, max_steps=100) == 6


def test_bad_schedule_input_is_refused():
    with pytest.raises(ValueError, match="unknown lr schedule 'step'"):
        learning_rate(0, 10, 1e-3, "step")
    with pytest.raises(ValueError, match="bad schedule position"):
        learning_rate(-1, 10, 1e-3)
    with pytest.raises(ValueError, match="steps per epoch >= 1"):
        total_steps(3, 0)
