"""blockdrop.recipes.config: every preset survives YAML and JSON round trips, a partial file
updates a base preset field by field, overrides parse as YAML, and bad settings are errors
naming the setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blockdrop.recipes.config import (
    apply_overrides,
    dump_config,
    load_config,
    preset_from_dict,
    preset_to_dict,
)
from blockdrop.recipes.demo import DEMO, DEMO_SMOKE
from blockdrop.recipes.presets import PRESETS, get_preset


@pytest.mark.parametrize("name", [*PRESETS, "demo", "demo-smoke"])
def test_every_preset_round_trips_through_yaml_and_json(name: str, tmp_path: Path) -> None:
    p = {"demo": DEMO, "demo-smoke": DEMO_SMOKE}.get(name) or get_preset(name)
    f = tmp_path / "run.yaml"
    f.write_text(dump_config(p))
    assert load_config(f) == p
    # a report.json holds the resolved preset under "config"
    r = tmp_path / "report.json"
    r.write_text(json.dumps({"accuracy": 0.5, "config": preset_to_dict(p)}))
    assert load_config(r) == p
    assert preset_from_dict(json.loads(json.dumps(preset_to_dict(p)))) == p


def test_a_partial_file_updates_its_base_preset(tmp_path: Path) -> None:
    f = tmp_path / "variant.yaml"
    f.write_text("preset: quick\nname: quick-kd\nadapt:\n  distill: 0.2\ngammas: [1, 3]\nfinetune: null\n")
    p, q = load_config(f), get_preset("quick")
    assert p.name == "quick-kd" and p.gammas == (1.0, 3.0) and p.finetune is None
    assert p.adapt is not None and q.adapt is not None
    assert p.adapt.distill == 0.2 and p.adapt.steps == q.adapt.steps and p.adapt.soup == q.adapt.soup
    assert p.curriculum == q.curriculum and p.selection == q.selection


def test_overrides_parse_as_yaml_and_name_what_is_wrong() -> None:
    q = get_preset("cpu")
    p = apply_overrides(
        q,
        [
            "adapt.steps=20",
            "selection.thresholds=[0.4, 0.6]",
            "selection.max_blocks=null",
            "curriculum.cl_step=null",
            "n_val=100",
            "finetune.lr=1e-3",
        ],
    )
    assert p.adapt is not None and p.adapt.steps == 20 and p.selection.thresholds == (0.4, 0.6)
    assert p.curriculum.cl_step is None and p.n_val == 100 and p.finetune.lr == 1e-3
    assert isinstance(p.finetune.lr, float)
    assert apply_overrides(q, []) is q
    for bad, msg in [
        ("adapt.stps=2", "adapt: unknown setting 'stps'"),
        ("adaptt.steps=2", "unknown section 'adaptt'"),
        ("adapt.keep=1.5", "keep"),
        ("selection.rule=most", "rule"),
        ("nonsense", "SECTION.FIELD=VALUE"),
        ("curriculum.stage=finetune", "stage"),
    ]:
        with pytest.raises(ValueError, match=msg):
            apply_overrides(q, [bad])
    with pytest.raises(ValueError, match="adapt does not run"):
        apply_overrides(get_preset("official"), ["adapt.steps=3"])


def test_a_config_file_must_exist_and_parse(tmp_path: Path) -> None:
    from blockdrop.errors import FileFormatError

    with pytest.raises(FileNotFoundError, match="config"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(FileFormatError, match="bad.json"):
        load_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        load_config(wrong)


def test_print_config_is_what_config_reads(tmp_path: Path) -> None:
    """The CLI's --print-config output, read back with --config, is the same preset."""
    import subprocess
    import sys

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "blockdrop",
            "reproduce",
            "--preset",
            "cpu",
            "--set",
            "adapt.steps=7",
            "--print-config",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    f = tmp_path / "p.yaml"
    f.write_text(r.stdout)
    assert load_config(f) == apply_overrides(get_preset("cpu"), ["adapt.steps=7"])
