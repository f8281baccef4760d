"""Training classifiers: fine-tuning an encoder (``finetune``, which records training dynamics), cross-fitting
(out-of-fold probabilities, ``cross_fit``) and retraining on cleaned data (``retrain``)."""

from influence_core.training.crossfit import CrossFit, cross_fit, stratified_folds
from influence_core.training.finetune import (
    FinetuneCancelled,
    FinetuneResult,
    TrainingDynamics,
    finetune,
    load_dynamics,
)
from influence_core.training.retrain import Recipe, RetrainResult, counterfactual_check, recipe_of, retrain

__all__ = ["CrossFit", "FinetuneCancelled", "FinetuneResult", "Recipe", "RetrainResult", "TrainingDynamics",
           "counterfactual_check", "cross_fit", "finetune", "load_dynamics", "recipe_of", "retrain",
           "stratified_folds"]
