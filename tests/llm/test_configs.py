"""Every registered language-model unlearning method has a config in ``configs/unlearn_lm/`` that ``unlearn-lm
--config`` reads (registry-parametrized: a new method without a config fails here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import medforget.methods.lm  # noqa: F401  (registers the methods)
from medforget.methods.lm.base import LMUnlearningMethod

CONFIG_DIR = Path(__file__).parents[2] / "configs" / "unlearn_lm"


def configs_by_method() -> dict[str, Path]:
    out = {}
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        out.setdefault(yaml.safe_load(path.read_text())["model"]["class_path"].rsplit(".", 1)[-1], path)
    return out


@pytest.mark.parametrize("name", sorted(LMUnlearningMethod.registry))
def test_every_lm_method_has_a_config_that_parses(name, capsys):
    from medforget.commands import unlearn_lm

    config = configs_by_method().get(name)
    assert config is not None, f"no configs/unlearn_lm/*.yaml for {name}"
    with pytest.raises(SystemExit) as exc:
        unlearn_lm([f"--config={config}", "--ckpt=runs/lm/model.ckpt", "--print_config"])
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == f"medforget.methods.lm.{name}"
    given = yaml.safe_load(config.read_text())["model"]["init_args"]
    assert {k: printed["model"]["init_args"][k] for k in given} == given
    assert printed["model"]["init_args"]["lora"] is None  # full weights unless asked


def test_a_config_with_lora_and_flags_on_top(capsys):
    from medforget.commands import unlearn_lm

    with pytest.raises(SystemExit):
        unlearn_lm([f"--config={CONFIG_DIR / 'rmu.yaml'}", "--ckpt=x.ckpt", "--forget=forget.txt",
                    "--model.lora.rank=4", "--model.init_args.lr=0.01", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["lora"]["rank"] == 4 and printed["model"]["init_args"]["lr"] == 0.01
    assert printed["forget"] == "forget.txt" and printed["trainer"]["max_epochs"] == 10
