"""`kneuron.engine.eval.config`: the TOML config of a suppression evaluation, its one-line errors, its defaults and the
identity that enters the eval id."""
from __future__ import annotations

from pathlib import Path

import pytest

from kneuron.engine.errors import KneuronError
from kneuron.engine.eval.config import EvalConfig, config_from_dict, load_config

FULL_TOML = """
run = "tiny-run"
concepts = ["circle", "star"]
methods = ["two_stage", "random", "dai"]
budget = 5
n_other = "match"
max_images = 3
seed = 7
batch_size = 2
max_new_tokens = 6

[budget_per_concept]
star = 2

[metrics]
names = ["bleu4", "rougeL"]
bertscore_model = "roberta-large"

[selection]
stage1 = "q:0.9"
stage2 = "top:4"
aggregate = "mean"

[baselines.dai]
steps = 4
threshold_ratio = 0.3
"""


def test_toml_config_is_parsed(tmp_path):
    path = tmp_path / "eval.toml"
    path.write_text(FULL_TOML)
    config = load_config(path)
    assert (config.run_id, config.concepts, config.methods) == ("tiny-run", ("circle", "star"),
                                                                ("two_stage", "random", "dai"))
    assert (config.budget, config.budget_per_concept, config.max_images, config.seed) == (5, {"star": 2}, 3, 7)
    assert (config.batch_size, config.max_new_tokens, config.metrics) == (2, 6, ("bleu4", "rougeL"))
    assert config.metric_config.bertscore_model == "roberta-large"
    assert config.selection == {"stage1": "q:0.9", "stage2": "top:4", "aggregate": "mean"}
    assert config.baseline_options == {"dai": {"steps": 4, "threshold_ratio": 0.3}}


@pytest.mark.parametrize("text, message", [
    ("methods = [\"two_stage\"\n", "bad TOML in .*eval.toml: "),
    ("colour = 1\n", "eval.toml: unknown key 'colour'"),
    ("budget = \"lots\"\n", "eval.toml: budget must be 'same_as:two_stage' or a whole number"),
    ("budget = 2.5\n", "eval.toml: budget must be a whole number, got 2.5"),
    ("methods = [\"two_stage\", \"gradcam\"]\n", "eval.toml: unknown method 'gradcam'"),
    ("concepts = \"circle\"\n", "eval.toml: concepts must be a list of strings"),
    ("[metrics]\nnames = [\"meteor\"]\n", "eval.toml: unknown metric 'meteor'"),
    ("[metrics]\nmodel = \"x\"\n", "eval.toml: unknown key 'model' in \\[metrics\\]"),
    ("[baselines.gradcam]\nsteps = 3\n", "eval.toml: options for unknown baseline 'gradcam'"),
    ("[selection]\nstage3 = \"auto\"\n", "eval.toml: unknown key 'stage3' in \\[selection\\]"),
    ("sets = [\"a\"]\n[selection]\nstage1 = \"auto\"\n", "eval.toml: give either sets or selection, not both"),
    ("budgets = [1, \"2\"]\n", "eval.toml: budgets must be a list of whole numbers"),
    ("budgets = [0, 2]\n", "eval.toml: budgets must be whole numbers >= 1, got 0"),
    ("budgets = [2, 2]\n", "eval.toml: budget 2 listed twice"),
    ("budgets = [2]\n[budget_per_concept]\nstar = 1\n", "eval.toml: give budgets or budget / budget_per_concept"),
    ("budgets = [2]\nbudget = 3\n", "eval.toml: give budgets or budget / budget_per_concept, not both"),
    ("fragility_images = -1\n", "eval.toml: fragility_images must be a whole number >= 0"),
])
def test_toml_errors_are_one_line(tmp_path, text, message):
    path = tmp_path / "eval.toml"
    path.write_text(text)
    with pytest.raises(KneuronError, match=message) as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_config_from_dict_defaults():
    config = config_from_dict({})
    assert config == EvalConfig()
    assert config.methods == ("two_stage", "stage1_only", "stage2_only", "random", "random_layer_matched", "pan",
                              "dai")
    assert config_from_dict({"sets": ["ts-circle", "ts-star"]}).sets == ("ts-circle", "ts-star")


def test_identity_keys_are_those_hashed_into_eval_ids():
    """The eval id hashes `EvalConfig.identity`: a new or renamed key would change every eval id (no resume)."""
    assert EvalConfig().identity() == {
        "baseline_options": {}, "budget": "same_as:two_stage", "budget_per_concept": {}, "dataset_root": None,
        "dataset_split": None, "dtype": None, "max_images": None, "max_new_tokens": None,
        "methods": ["two_stage", "stage1_only", "stage2_only", "random", "random_layer_matched", "pan", "dai"],
        "metric_config": {"bertscore_layers": None, "bertscore_model": None},
        "metrics": ["bleu4", "rougeL", "bertscore"], "model": None, "n_other": "match", "seed": 0,
        "selection": None, "sets": []}
    # run, concepts, batch size, device and eval id are left out (resolved elsewhere, or no effect on results)
    assert EvalConfig(batch_size=3, device="cpu", eval_id="x", run_id="r", concepts=("a",)).identity() \
        == EvalConfig().identity()


def test_budgets_and_new_selection_keys_are_read_and_hashed_only_when_set(tmp_path):
    path = tmp_path / "eval.toml"
    path.write_text('methods = ["two_stage", "two_stage_specific", "random_nonmassive"]\nbudgets = [8, 1, 2]\n'
                    '[selection]\nspecific = "stage1"\nexclude_massive = 10.0\n'
                    '[baselines.two_stage_specific]\nspecific = "ratio1:1"\n')
    config = load_config(path)
    assert config.budgets == (8, 1, 2)
    assert config.selection == {"specific": "stage1", "exclude_massive": 10.0}
    assert config.identity()["budgets"] == [8, 1, 2]
    assert "budgets" not in EvalConfig().identity() and "budgets" not in EvalConfig(budgets=()).identity()
    assert EvalConfig(fragility_images=8).identity() == EvalConfig().identity()  # checks, does not change results


SHIPPED_CONFIGS = sorted((Path(__file__).resolve().parents[3] / "benchmarks" / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_builds_its_baselines(path):
    """The configs README's numbers came from stay valid: they parse, and every baseline they name builds with its
    options (an unknown option is an error)."""
    import kneuron.engine.baselines  # noqa: F401  (registers the baselines)
    from kneuron.engine.baselines.registry import BASELINES

    config = load_config(path)
    assert config.methods
    for method, options in config.baseline_options.items():
        assert method in config.methods
        BASELINES[method](**options)
