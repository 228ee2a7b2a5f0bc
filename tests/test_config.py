"""Configuration layering that decides how jobs behave when run on their own."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from simpersona.config import ConfigError, load

SIM_SECTIONS = ("sim", "serve", "store", "browser")


@pytest.mark.parametrize("named", [[], ["config=demo"], ["config=smoke"]])
@pytest.mark.parametrize("job", ["evaluate", "whatif"])
def test_simulating_jobs_alone_simulate_as_inside_the_pipeline(job, named):
    """Run alone, evaluate.py and whatif.py read simulate.yaml too: the same Chromium flags (its
    --disable-features list), Serve and storefront settings as the pipeline, so a stage job re-run after
    a pipeline run finds the simulation folders' fingerprints unchanged instead of starting them afresh."""
    alone = OmegaConf.to_container(load(job, [*named, "run_dir=/r"]), resolve=True)
    piped = OmegaConf.to_container(load("pipeline", [*named, "run_dir=/r"]), resolve=True)
    for section in SIM_SECTIONS:
        assert alone[section] == piped[section], section
    assert any(a.startswith("--disable-features=") and "WebUIOmniboxPopup" in a for a in alone["browser"]["args"])
    assert alone["serve"]["http"] is False


def test_a_percent_value_on_the_command_line_gets_a_one_line_hint_to_quote_it():
    """`data.ts_format=%m%d` is a YAML directive to OmegaConf: a scanner error, unless quoted."""
    with pytest.raises(ConfigError) as err:
        load("preprocess", ["data.ts_format=%m%d"])
    assert str(err.value) == ("data.ts_format=%m%d: a value starting with '%' must be quoted for YAML, "
                              "e.g. data.ts_format='\"%m%d\"' (the outer quotes are for the shell)")
    assert load("preprocess", ['data.ts_format="%m%d"']).data.ts_format == "%m%d"


def _leaves(node, path=()):
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, (*path, key))
        else:
            yield (*path, key), value


def _at(node, path):
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return KeyError
        node = node[key]
    return node


def test_no_yaml_repeats_a_schema_default():
    """A default lives in the schema only. A YAML may restate one only to undo another YAML's value
    (config=planted sets sessions.day_resolution back to false over preprocess.yaml's true)."""
    from simpersona.config import CONFIG_DIR, Config

    schema = OmegaConf.to_container(OmegaConf.structured(Config), resolve=False)
    files = {p.name: OmegaConf.to_container(OmegaConf.load(p), resolve=False) or {}
             for p in sorted(CONFIG_DIR.glob("*.yaml"))}
    repeated = []
    for name, tree in files.items():
        for path, value in _leaves(tree):
            default = _at(schema, path)
            undoes = any(_at(other, path) not in (KeyError, value) for o, other in files.items() if o != name)
            if default is not KeyError and default == value and not undoes:
                repeated.append(f"{name}: {'.'.join(path)}")
    assert repeated == []


def test_stage_config_modules_stand_alone():
    """Each stage's config section lives with the stage and is composed by simpersona.config, never the
    other way round: a stage config module imports no part of simpersona but the shop knobs and the S3 section."""
    import ast
    from pathlib import Path

    import simpersona

    root = Path(simpersona.__file__).parent
    modules = sorted(root.glob("*/config.py"))
    bad = {}
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            bad.update({f"{path.parent.name}/config.py": n for n in names
                        if n.startswith("simpersona") and n not in ("simpersona.pages.config", "simpersona.storage_config")})
    assert len(modules) >= 8 and bad == {}
