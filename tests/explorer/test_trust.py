"""explorer.trust: the "predicted change in loss if removed" unit against real leave-one-out retrains."""

from __future__ import annotations

import numpy as np

from explorer.trust import predicted_loss_change
from influence_core.engine.config import EngineConfig
from influence_core.engine.influence import InfluenceEngine
from influence_core.lds import HeadRecipe, HeadTrainer, outcome
from tests.conftest import tiny_bert
from tests.test_lds import reviews


def test_predicted_loss_change_matches_leave_one_out_retrains(tokenizer):
    train, train_y = reviews(40, 0)
    train_y = np.array(train_y)
    train_y[:3] = 1 - train_y[:3]  # a few wrong labels: examples with large harmful influence
    test, test_y = reviews(4, 1)
    config = EngineConfig(max_length=16, dtype="float64", damping=1e-2)
    trainer = HeadTrainer(tiny_bert(), tokenizer, train, test, recipe=HeadRecipe(steps=500, l2=1e-2), config=config)
    full = trainer.train(None, train_y, 0)
    before = outcome(trainer.test_logprobs(full), np.array(test_y), "loss")
    engine = InfluenceEngine(trainer.model_with(full), tokenizer, config.replace(layers="head"))
    engine.fit(train, train_y)
    scores = engine.influences(test, test_y, train, train_y)  # [n_test, n_train]
    predicted, actual = [], []
    for m in range(8):
        keep = np.ones(len(train), dtype=bool)
        keep[m] = False
        after = outcome(trainer.test_logprobs(trainer.train(keep, train_y, 0)), np.array(test_y), "loss")
        actual.append(after - before)
        predicted.append(predicted_loss_change(scores[:, m], len(train)))
    predicted, actual = np.ravel(predicted), np.ravel(actual)
    assert np.corrcoef(predicted, actual)[0, 1] > 0.95
    ratio = np.median(actual / predicted)
    assert 0.25 < ratio < 4, ratio  # measured 0.54: the true Fisher is a Gauss-Newton curvature of the tanh pooler
    assert predicted_loss_change(2.0, 4) == 0.5
