"""Fix and retrain, and the counterfactual check, as the app runs them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from explorer.analysis import Analysis
from explorer.jobs import cancel_check
from explorer.spec import AnalysisSpec, Progress, scoring_config, study_model
from influence_core.errors import DataError
from influence_core.sources.models import ModelSource


@dataclass
class RetrainOutcome:
    """A retrain on the cleaned reviews, and the influences of the retrained model.

    Attributes:
        result: Test accuracy and loss before and after (:class:`influence_core.training.retrain.RetrainResult`).
        kept: Positions (in the analysed training slice) of the training reviews that remain, [n_kept].
        influence_after: Test x kept-training influence of the retrained model at the given damping, over every
            analysed layer, [n_test, n_kept]; positive = helpful.
    """

    result: Any
    kept: np.ndarray
    influence_after: np.ndarray


def retrain_cleaned(spec: AnalysisSpec, analysis: Analysis, cleaned: pd.DataFrame, damping: float,
                    progress: Progress) -> RetrainOutcome:
    """Fine-tune the model's recipe on ``cleaned`` (from :func:`cleaned_dataset`) and compare test accuracy and loss
    with the same recipe fine-tuned on the analysed training slice as it is (``analysis.train``, uncleaned): the
    model under study was trained on all of its data, not on this slice, so comparing with it would mix the
    effect of the marks with that of the missing rows. Then fit and score the retrained model on the same layers
    at ``damping`` (the value the "before" influences are shown at)."""
    from influence_core.engine.influence import InfluenceEngine
    from influence_core.sources.models import load_classifier
    from influence_core.training.retrain import retrain

    if cleaned.empty:
        raise DataError("every training review is marked mislabeled: nothing is left to train on")
    test = analysis.test[["text", "label"]]
    result = retrain(study_model(spec), cleaned[["text", "label"]], test, label_names=analysis.label_names,
                     original_train_df=analysis.train[["text", "label"]], before="retrain",
                     progress=progress.span(0.0, 0.7), cancel=cancel_check(progress))
    loaded = load_classifier(ModelSource("local", str(result.model_dir)))
    engine = InfluenceEngine(loaded.model, loaded.tokenizer, scoring_config(spec, damping))
    texts, labels = cleaned["text"].tolist(), cleaned["label"].to_numpy()
    engine.fit(texts, labels, progress=progress.span(0.7, 0.85))
    table = engine.score(test["text"].tolist(), test["label"].to_numpy(), texts, labels, self_influence=False,
                         progress=progress.span(0.85, 1.0))
    position = {int(r): i for i, r in enumerate(analysis.train["row_id"])}
    kept = np.array([position[int(r)] for r in cleaned["row_id"]], dtype=int)
    return RetrainOutcome(result=result, kept=kept, influence_after=table.total(0))


def counterfactual(spec: AnalysisSpec, analysis: Analysis, test_index: int, influence: np.ndarray, k: int,
                   draws: int, progress: Progress, seeds: int = 2):
    """Retrain without the ``k`` training reviews most harmful to test review ``test_index`` and without ``k``
    random ones (``draws`` times), each with ``seeds`` training seeds; see
    :func:`influence_core.training.retrain.counterfactual_check`.

    Every retrain, the "full" reference included, is on the analysed training slice (``analysis.train``), so
    the removals are compared with the same slice, never with the model under study."""
    from influence_core.training.retrain import counterfactual_check

    train = analysis.train[["text", "label", "row_id"]]
    return counterfactual_check(
        study_model(spec), train, analysis.test["text"].iloc[test_index], int(analysis.test["label"].iloc[test_index]),
        influence, k=k, n_random=draws, seeds=seeds, label_names=analysis.label_names, progress=progress,
        cancel=cancel_check(progress),
    )
