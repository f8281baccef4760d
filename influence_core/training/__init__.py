"""Training classifiers: fine-tuning an encoder (``finetune``) and retraining on cleaned data (``retrain``)."""

from influence_core.training.finetune import FinetuneCancelled, FinetuneResult, finetune
from influence_core.training.retrain import Recipe, RetrainResult, counterfactual_check, recipe_of, retrain

__all__ = ["FinetuneCancelled", "FinetuneResult", "Recipe", "RetrainResult", "counterfactual_check", "finetune",
           "recipe_of", "retrain"]
