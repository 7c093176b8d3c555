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
    assert cfg["xp_multimodal"] == {"steps": 7} and cfg["labels"] == ["TEFF", "LOGG", "FE_H", "ALPHA_M"]
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="must be a YAML mapping"):
        load_preset(tmp_path / "list.yaml")


def test_set_reaches_the_runs_of_real_data_py(tmp_path):
    with contextlib.redirect_stdout(io.StringIO()):
        assert _script().main([str(REPO / "scripts" / "configs" / "real_xp_tiny.yaml"), "--output_dir",
                               str(tmp_path), "--experiments", "xp_multimodal", "--set", "xp_multimodal.steps=4"]) == 0
    for model in ("spectrafm", "spectrafm_photometry"):
        info = json.loads((tmp_path / "xp_multimodal" / model / "final" / "training_info.json").read_text())
        assert info["config"]["training"]["max_steps"] == 4
