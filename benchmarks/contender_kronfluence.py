"""kronfluence (EK-FAC) on the benchmark workload; runs in ``benchmarks/.venvs/kronfluence``.

Settings that make it the same computation as the engine's ``ekfac-empirical`` variant:
``FactorArguments(strategy="ekfac", use_empirical_fisher=True)``, per-token attention masks
(``get_attention_mask``), the same tracked modules, summed per-example cross-entropy as both the training
loss and the measurement, ``ScoreArguments(damping_factor=<absolute damping>)``. Query gradients are
accumulated over all test batches (``query_gradient_accumulation_steps``) so the training set is read
once, as the engine does. Variant ``sampled`` uses kronfluence's default Fisher (labels drawn from the model).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from benchmarks.common import (
    BatchDataset,
    Report,
    load_model,
    load_workload,
    model_inputs,
    package_version,
    timed,
    worker_args,
    write_result,
)


def make_task(layers: list[str]):
    from kronfluence.task import Task

    class ClassificationTask(Task):
        def compute_train_loss(self, batch, model, sample=False):
            logits = model(**model_inputs(batch)).logits
            if sample:
                with torch.no_grad():
                    labels = torch.multinomial(torch.softmax(logits.detach(), -1), num_samples=1).flatten()
            else:
                labels = batch["labels"]
            return F.cross_entropy(logits, labels, reduction="sum")

        def compute_measurement(self, batch, model):
            logits = model(**model_inputs(batch)).logits
            return F.cross_entropy(logits, batch["labels"], reduction="sum")

        def get_influence_tracked_modules(self):
            return list(layers)

        def get_attention_mask(self, batch):
            return batch["attention_mask"]

    return ClassificationTask()


def main(argv: list[str] | None = None) -> None:
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.utils.dataset import DataLoaderKwargs

    args = worker_args("kronfluence", argv)
    logging.getLogger("kronfluence").setLevel(logging.WARNING)
    workload = load_workload(args.workload)
    variant = args.variant or "empirical"
    task = make_task(workload.layers)
    train, test = BatchDataset(workload.train), BatchDataset(workload.test)
    bs = workload.batch_size
    report = Report("kronfluence", args.stage, notes={"variant": variant, "version": package_version("kronfluence")})
    factors_name = f"ekfac_{variant}"
    query_steps = math.ceil(len(test) / bs)

    def score_args(damping: float) -> ScoreArguments:
        return ScoreArguments(damping_factor=damping, query_gradient_accumulation_steps=query_steps)

    def analyzer() -> Analyzer:
        model = prepare_model(load_model(workload), task)
        found = Analyzer(analysis_name="bench", model=model, task=task, cpu=True, disable_tqdm=True,
                         output_dir=args.state)
        return found

    def loader_kwargs(dataset: BatchDataset) -> DataLoaderKwargs:
        return DataLoaderKwargs(collate_fn=BatchDataset.collate)  # items name their dataset: one collate for both

    def pairwise(found: Analyzer, name: str, damping: float) -> torch.Tensor:
        found.compute_pairwise_scores(
            scores_name=name, factors_name=factors_name, query_dataset=test, train_dataset=train,
            per_device_query_batch_size=bs, per_device_train_batch_size=bs,
            dataloader_kwargs=loader_kwargs(train),
            score_args=score_args(damping), overwrite_output_dir=True,
        )
        return found.load_pairwise_scores(name)["all_modules"]  # [n_test, n_train]

    found = analyzer()
    scores = None
    if args.stage == "fit":
        factor_args = FactorArguments(strategy="ekfac", use_empirical_fisher=variant == "empirical")
        with timed(report):
            found.fit_all_factors(factors_name=factors_name, dataset=train, per_device_batch_size=bs,
                                  dataloader_kwargs=loader_kwargs(train), factor_args=factor_args,
                                  overwrite_output_dir=True)
    elif args.stage == "pairwise":
        with timed(report):
            scores = pairwise(found, "pairwise", workload.damping).double().numpy()
    elif args.stage == "self":
        with timed(report):
            found.compute_self_scores(scores_name="self", factors_name=factors_name, train_dataset=train,
                                      per_device_train_batch_size=bs, dataloader_kwargs=loader_kwargs(train),
                                      score_args=score_args(workload.damping), overwrite_output_dir=True)
            scores = found.load_self_scores("self")["all_modules"].double().numpy()  # [n_train]
    elif args.stage == "sweep":
        with timed(report):
            # kronfluence has no multi-damping scoring: one full pairwise run per damping value.
            scores = torch.stack([pairwise(found, f"sweep_{k}", d) for k, d in enumerate(workload.dampings)])
            scores = scores.double().numpy()  # [K, n_test, n_train]
        report.notes["dampings"] = workload.dampings
    else:
        raise SystemExit(f"kronfluence has no stage {args.stage}")
    write_result(args.out, report, scores)


if __name__ == "__main__":
    main()
