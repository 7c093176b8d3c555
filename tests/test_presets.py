"""`--set KEY=VALUE` overrides of the experiment presets (spectrafm_hf.training.presets)."""

import contextlib
import io
import json

import pytest
from conftest import REPO
from test_real_experiments import _script

from spectrafm_hf.training.presets import apply_overrides, load_preset


def test_dotted_keys_set_nested_values_read_as_yaml():
    cfg = {"xp_fewshot": {"pretrain": {"labels": ["TEFF"], "steps": 15000}, "ablations": {"a": {}}}, "seed": 0}
    apply_overrides(cfg, ["xp_fewshot.pretrain.steps=30000", "xp_fewshot.ablations={}", "seed=null",
                          "xp_fewshot.new_ablation={freeze: [encoder], learning_rate: 0.003}"])
    assert cfg == {"xp_fewshot": {"pretrain": {"labels": ["TEFF"], "steps": 30000}, "ablations": {},
                                  "new_ablation": {"freeze": ["encoder"], "learning_rate": 0.003}}, "seed": None}


def test_numbers_with_an_exponent_are_floats_in_presets_overrides_and_training_yaml(tmp_path):
    """YAML 1.1 reads 5e-4 as a string, which reached the optimizer as text; every preset, --set value and training
    YAML is read with such numbers as floats, and everything else as before."""
    from spectrafm_hf.training.run import parse_args

    cfg = {"training_defaults": {}}
    apply_overrides(cfg, ["training_defaults.learning_rate=5e-4", "training_defaults.steps=1e3",
                          "training_defaults.name=v6", "training_defaults.quoted='5e-4'"])
    assert cfg["training_defaults"] == {"learning_rate": 5e-4, "steps": 1000.0, "name": "v6", "quoted": "5e-4"}
    preset = tmp_path / "preset.yaml"
    preset.write_text("a: 2.5E+3\nb: -3e-2\nc: 30000\nd: 1_000\ne: 1e\nf: 0.002\n")
    assert load_preset(preset) == {"a": 2500.0, "b": -0.03, "c": 30000, "d": 1000, "e": "1e", "f": 0.002}
    train = tmp_path / "train.yaml"
    train.write_text("learning_rate: 5e-4\nweight_decay: 1e-2\noutput_dir: out\n")
    _, _, training_args = parse_args([str(train)])
    assert training_args.learning_rate == 5e-4 and training_args.weight_decay == 0.01


@pytest.mark.parametrize("assignment, error, words", [
    ("xp_fewshott.pretrain.steps=3", KeyError, "no section 'xp_fewshott'"),    # a misspelt section is not created
    ("seed.value=3", KeyError, "it is int, not a mapping"),
    ("xp_fewshot.pretrain.steps", ValueError, "expected KEY=VALUE"),
    ("xp_fewshot..steps=3", ValueError, "dotted path"),
    ("seed=[1, 2", ValueError, "not valid YAML"),
])
def test_bad_assignments_name_the_problem_and_change_nothing(assignment, error, words):
    cfg = {"xp_fewshot": {"pretrain": {"steps": 15000}}, "seed": 0}
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        apply_overrides(cfg, [assignment])
    assert cfg == {"xp_fewshot": {"pretrain": {"steps": 15000}}, "seed": 0}


def test_load_preset_reads_the_file_and_refuses_a_non_mapping(tmp_path):
    cfg = load_preset(REPO / "scripts" / "configs" / "real_xp_tiny.yaml", ["xp_multimodal.steps=7"])
    assert cfg["xp_multimodal"]["steps"] == 7 and cfg["labels"] == ["TEFF", "LOGG", "FE_H", "ALPHA_M"]
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="must be a YAML mapping"):
        load_preset(tmp_path / "list.yaml")


def test_set_reaches_the_runs_of_real_data_py(tmp_path):
    with contextlib.redirect_stdout(io.StringIO()):
        assert _script().main([str(REPO / "scripts" / "configs" / "real_xp_tiny.yaml"), "--output_dir",
                               str(tmp_path), "--experiments", "xp_multimodal", "--set", "xp_multimodal.steps=4"]) == 0
    for model in ("spectrafm", "spectrafm_photometry"):
        run = tmp_path / "xp_multimodal" / f"{model}_from_xp_full"  # both continue xp_full's every-star model
        info = json.loads((run / "final" / "training_info.json").read_text())
        assert info["config"]["training"]["max_steps"] == 4


def test_training_help_prints(capsys):
    """`python scripts/pretrain.py --help` (and finetune, evaluate) formats every field's help text with argparse."""
    from spectrafm_hf.training.run import parse_args

    with pytest.raises(SystemExit) as stop:
        parse_args(["--help"])
    assert stop.value.code == 0
    assert "68 % of validation stars" in " ".join(capsys.readouterr().out.split())  # help is wrapped
