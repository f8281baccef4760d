"""What names an analysis: the spec (model, data, slices, engine settings, dampings), its keys and its files."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from influence_core.cache import cache_dir, stable_hash
from influence_core.engine.config import EngineConfig
from influence_core.sources.data import DataSource
from influence_core.sources.models import ModelSource
from influence_core.sources.slices import SliceSpec

Progress = Callable[[int, int, str], None]

ENV_MODEL = "INFLUENCE_EXPLORER_MODEL"  # test hook: a local model folder used as the default model
FORMAT_VERSION = 1  # bump when the files of an analysis change meaning
DAMPING_STEPS = (0.01, 0.1, 1.0, 10.0, 100.0)  # the sweep: these multiples of the chosen damping
KEPT_COLUMNS = ("row_id", "text", "label", "label_name", "label_raw")

# ------------------------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class AnalysisSpec:
    """Everything that determines an analysis's numbers (hashable: a cache key; printable: shown in the UI).

    Attributes:
        model: which classifier.
        train_data, test_data: where training and test reviews come from.
        train_slice, test_slice: which rows of each.
        config: layers, method, Fisher, damping (the chosen value), max_length, ...
        dampings: every damping value scored, ascending; the chosen one is among them.
    """

    model: ModelSource
    train_data: DataSource
    test_data: DataSource
    train_slice: SliceSpec
    test_slice: SliceSpec
    config: EngineConfig
    dampings: tuple[float, ...]

    def key(self) -> str:
        """The analysis folder's name: a hash of every field and of the model's weights' identity."""
        return stable_hash(
            {"v": FORMAT_VERSION, "model": model_identity(self.model), "spec": self, "config": _scoring_config(self.config)}
        )

    def factors_key(self) -> str:
        """Factors depend on the model, the fitting data and the curvature settings, not on damping."""
        fit = {name: getattr(self.config, name) for name in ("layers", "method", "fisher", "max_length", "seed", "dtype")}
        return stable_hash(
            {"v": FORMAT_VERSION, "model": model_identity(self.model), "data": self.train_data, "slice": self.train_slice, "fit": fit}
        )

    @property
    def chosen_damping(self) -> float:
        config = self.config
        return float(config.relative_damping if config.relative_damping is not None else config.damping)

    @property
    def damping_mode(self) -> str:
        return "relative" if self.config.relative_damping is not None else "absolute"

    def summary(self) -> dict[str, str]:
        """Key facts for the sidebar and the report."""
        config = self.config
        return {
            "model": self.model.describe(),
            "training reviews": f"{self.train_data.describe()}; {self.train_slice.describe()}",
            "test reviews": f"{self.test_data.describe()}; {self.test_slice.describe()}",
            "layers": config.layers,
            "method": f"{config.method}, {config.fisher} Fisher",
            "damping": f"{self.damping_mode}; chosen {self.chosen_damping:g}; scored "
            + ", ".join(f"{d:g}" for d in self.dampings),
        }


def damping_grid(chosen: float, steps: Sequence[float] = DAMPING_STEPS) -> tuple[float, ...]:
    """The damping values to score: ``chosen`` times each step (rounded to 3 significant digits), ascending."""
    values = {float(f"{chosen * step:.3g}") for step in steps} | {float(f"{chosen:.3g}")}
    return tuple(sorted(v for v in values if v > 0)) or (float(chosen),)


def model_identity(source: ModelSource) -> object:
    """What names a model's weights without loading them: demo recipe key, folder files, or Hub id."""
    if source.kind == "demo":
        from influence_core.demo import demo_model_key

        return {"demo": demo_model_key()}
    if source.kind == "local":
        folder = Path(source.name).expanduser()
        files = []
        if folder.is_dir():
            for item in sorted(folder.glob("*.safetensors")) + [folder / "config.json"]:
                if item.is_file():
                    stat = item.stat()
                    files.append([item.name, stat.st_size, stat.st_mtime_ns])
        return {"local": str(folder.resolve()) if folder.exists() else source.name, "files": files}
    return {"hub": source.name}


def _scoring_config(config: EngineConfig) -> dict:
    # batch_size and device do not change the numbers: a different machine reuses the same analysis
    return {k: v for k, v in config.__dict__.items() if k not in ("batch_size", "device")}


def default_model_source() -> ModelSource:
    """The built-in demo, or the folder named by ``$INFLUENCE_EXPLORER_MODEL`` (tests use a tiny model)."""
    folder = os.environ.get(ENV_MODEL)
    return ModelSource("local", folder) if folder else ModelSource("demo")


def analysis_dir(spec: AnalysisSpec) -> Path:
    return cache_dir("analyses", spec.key())


def factors_path(spec: AnalysisSpec) -> Path:
    return cache_dir("factors", spec.factors_key()) / "factors.safetensors"


def index_dir(spec: AnalysisSpec) -> Path:
    """The training-gradient index of the analysis's training slice, next to its factors (same key)."""
    return cache_dir("factors", spec.factors_key()) / "index"


def index_ready(spec: AnalysisSpec) -> bool:
    return (index_dir(spec) / "index.json").is_file()


def analysis_ready(spec: AnalysisSpec) -> bool:
    return (analysis_dir(spec) / "meta.json").is_file()


def factors_ready(spec: AnalysisSpec) -> bool:
    return spec.config.method == "identity" or factors_path(spec).is_file()



def demo_model_ready() -> bool:
    """Whether the demo model is already fine-tuned and cached (so a fit will not train it first)."""
    from influence_core.demo import demo_model_key

    folder = cache_dir("models") / f"demo-{demo_model_key()}"
    return (folder / "finetune.json").is_file() and (folder / "config.json").is_file()


# ------------------------------------------------------------------------------------------- fix and retrain
def study_model(spec: AnalysisSpec) -> str:
    """The model under study as :mod:`influence_core.training.retrain` takes it: a folder (the demo's too) or a Hub id."""
    from influence_core.demo import resolve_model

    return resolve_model("demo") if spec.model.kind == "demo" else spec.model.name


def scoring_config(spec: AnalysisSpec, damping: float | None = None) -> EngineConfig:
    """The analysis's engine settings with one damping value (default: the chosen one), absolute or relative."""
    value = spec.chosen_damping if damping is None else float(damping)
    if spec.damping_mode == "relative":
        return spec.config.replace(relative_damping=value)
    return spec.config.replace(damping=value)
