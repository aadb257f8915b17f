"""Issue 17, item 12: bad seeds and bad state-dict values are refused naming the argument."""
import numpy as np
import pytest

import rnncore
from rnncore import nn

MAKERS = [lambda seed: rnncore.LSTM(3, 4, seed=seed), lambda seed: rnncore.GRUCell(3, 4, seed=seed),
          lambda seed: nn.Linear(3, 4, seed=seed), lambda seed: nn.Embedding(5, 4, seed=seed),
          lambda seed: nn.Dropout(0.5, seed=seed)]


@pytest.mark.parametrize("make", MAKERS)
@pytest.mark.parametrize("seed, err", [(-1, ValueError), (1.5, TypeError), ("0", TypeError),
                                       (True, TypeError)])
def test_bad_seed_names_the_argument(make, seed, err):
    with pytest.raises(err, match="^seed"):
        make(seed)


@pytest.mark.parametrize("make", MAKERS)
@pytest.mark.parametrize("seed", [None, 0, np.int64(3), np.random.default_rng(1),
                                  np.random.SeedSequence(2)])
def test_good_seeds_are_accepted(make, seed):
    make(seed)


def test_same_integer_seed_same_weights_whatever_its_type():
    a, b = rnncore.GRU(3, 4, seed=7), rnncore.GRU(3, 4, seed=np.int64(7))
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k])


def test_ragged_state_dict_value_names_the_key():
    m = rnncore.RNN(2, 2)
    sd = {k: v.tolist() for k, v in m.state_dict().items()}
    sd["weight_hh_l0"] = [[1.0, 2.0], [3.0]]
    with pytest.raises(ValueError, match=r"state_dict\['weight_hh_l0'\] is not a rectangular"):
        m.load_state_dict(sd)


def test_float64_values_overflowing_float32_are_refused_and_nothing_loaded():
    m = rnncore.LSTM(2, 3)
    before = {k: v.copy() for k, v in m.state_dict().items()}
    sd = {k: v.astype(np.float64) for k, v in before.items()}
    sd["bias_hh_l0"][1] = 1e300
    with pytest.raises(ValueError, match=r"state_dict\['bias_hh_l0'\] holds values outside"):
        m.load_state_dict(sd)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    sd["bias_hh_l0"][1] = np.inf  # an infinity stays an infinity: loaded as is
    m.load_state_dict(sd)
    assert m.state_dict()["bias_hh_l0"][1] == np.inf
