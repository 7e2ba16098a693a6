"""The recipes under config/ against independent sources, not against values typed into a test.

* The official recipes (pretraining ``base`` / ``large``, fine-tuning ``as2m`` / ``as20k`` / ``esc50`` /
  ``spcv2``) are the official config file plus the official script's overrides, value for value, as
  ``tests/data/official_recipes.yaml`` transcribes them from the reference (§6, §7).
* The derived recipes (``tiny``, ``custom``, ``custom_tiny``) say in their header that every value that
  differs from their parent recipe is marked (``# tiny:`` / ``# custom:``), and the marks name the parent's
  value (``# tiny: official 200``): both claims are checked on the composed configs, so a derived recipe
  cannot drift from the official structure unnoticed.
"""

import re

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from helpers import REPO, compose_recipe, official_recipes

CONFIG = REPO / "config"
# our recipe -> the official sources it reproduces, later ones overriding earlier ones (each file's header)
OFFICIAL_SOURCES = {
    "pretraining/base": ["pretraining_AS2M.yaml"],
    "pretraining/large": ["pretraining_AS2M.yaml", "pretraining_AS2M_large.yaml"],
    "finetuning/as2m": ["finetuning.yaml", "finetuning_AS2M.sh"],
    "finetuning/as20k": ["finetuning.yaml", "finetuning_AS20K.sh"],
    "finetuning/esc50": ["finetuning.yaml", "finetuning_ESC50.sh"],
    "finetuning/spcv2": ["finetuning.yaml", "finetuning_SPCv2.sh"],
}
PATH_KEYS = {"checkpoint.save_dir"}  # given to every official script on its command line (§7)
# derived recipe, its parent, the mark of a difference (each file's header)
DERIVED = [("pretraining/tiny", "pretraining/base", "tiny:"), ("finetuning/tiny", "finetuning/esc50", "tiny:"),
           ("finetuning/custom", "finetuning/esc50", "custom:"),
           ("finetuning/custom_tiny", "finetuning/custom", "tiny:"),
           ("finetuning/machine_sounds", "finetuning/custom", "machine sounds:"),
           ("finetuning/machine_sounds_tiny", "finetuning/custom_tiny", "machine sounds:")]
# what a recipe leaves to the command line, for composing it
REQUIRED = {"pretraining": ["task.data=data", "checkpoint.save_dir=out", "common.user_dir=plugin"]}
REQUIRED["finetuning"] = [*REQUIRED["pretraining"], "model.model_path=m.pt"]


def leaves(node, prefix=""):
    """``(dotted path, value)`` of every leaf of a nested dict (a list is a leaf)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


def raw(recipe: str) -> dict:
    """The recipe file's own values, uninterpolated."""
    return dict(leaves(OmegaConf.to_container(OmegaConf.load(CONFIG / f"{recipe}.yaml"), resolve=False)))


def composed(recipe: str, *overrides: str) -> dict:
    """Every value ``fairseq-hydra-train`` runs the recipe with (fairseq's and the dataclasses' defaults
    included), uninterpolated."""
    directory, name = recipe.split("/")
    cfg = compose_recipe(directory, name, [*REQUIRED[directory], *overrides])
    return dict(leaves(OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)))


def marks(recipe: str) -> dict:
    """``{dotted key: comment}`` of every ``key: value  # comment`` line of a block-style recipe file."""
    comments, stack = {}, []
    for line in (CONFIG / f"{recipe}.yaml").read_text().splitlines():
        match = re.match(r"^( *)([A-Za-z_]\w*):(.*)$", line)
        if not match:
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        comments[".".join(k for _, k in stack)] = rest.split("#", 1)[1].strip() if "#" in rest else ""
    return comments


def same(a, b) -> bool:
    """Equal values of equal kind (``True`` is not ``1``)."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


@pytest.mark.parametrize("recipe", list(OFFICIAL_SOURCES))
def test_official_recipe_is_the_official_config_and_script_value_for_value(recipe):
    official = {}
    for source in OFFICIAL_SOURCES[recipe]:
        official.update(leaves(official_recipes()[source]))
    ours = raw(recipe)
    wrong = []
    for key, value in official.items():
        if value == "<path>":  # the authors' own paths: left to the command line (or unused, empty)
            if ours.get(key) not in ("???", ""):
                wrong.append(f"{key}: {ours.get(key, '<absent>')!r}, expected ??? (given on the command line)")
        elif key not in ours or not same(ours[key], value):
            wrong.append(f"{key}: {ours.get(key, '<absent>')!r}, official {value!r}")
    wrong += [f"{key}: {value!r} is not an official value" for key, value in ours.items()
              if key not in official and key not in PATH_KEYS]
    assert wrong == []


def claimed_parent_value(comment: str, marker: str):
    """The parent's value a mark names (``tiny: official 200``, ``tiny: 100``, ``tiny: dataclass default 768``),
    or ``None`` when it names none (``tiny: CPU run``, ``tiny: must equal ...``)."""
    text = comment[len(marker):].strip()
    match = re.match(r"^(official |dataclass default )?([^\s,;()]+)", text)
    if not match:
        return None
    value = yaml.safe_load(match.group(2))
    if match.group(1) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return (value,)
    return None


@pytest.mark.parametrize("child, parent, marker", DERIVED, ids=[child for child, _, _ in DERIVED])
def test_derived_recipe_marks_every_difference_from_its_parent_and_the_marks_name_the_parent_value(
        child, parent, marker):
    extra = ["model.num_classes=6"] if child == "finetuning/tiny" else []  # tiny leaves the class count open
    ours, theirs = composed(child, *extra), composed(parent)
    comments, parent_file = marks(child), raw(parent)
    marked = {key for key, comment in comments.items() if comment.startswith(marker)}
    renamed = {key.rsplit(".", 1)[0] + "." for key in marked if key.endswith("._name")}  # another class: other fields
    problems = []
    for key in sorted(set(ours) | set(theirs)):
        if any(key.startswith(section) for section in renamed) and not key.endswith("._name"):
            continue
        differs = not same(ours.get(key, "<absent>"), theirs.get(key, "<absent>"))
        if differs and key not in marked:
            problems.append(f"{key}: {ours.get(key, '<absent>')!r} here, {theirs.get(key, '<absent>')!r} in "
                            f"{parent}, not marked '# {marker}'")
    for key in sorted(marked):
        comment = comments[key]
        if not any(key == k or k.startswith(key + ".") for k in ours):
            problems.append(f"{key}: marked, but not in the composed config")
            continue
        if key in ours and key in parent_file and same(ours[key], theirs.get(key, "<absent>")):
            problems.append(f"{key}: marked '{comment}' but {parent} sets the same {theirs[key]!r}")
        if comment[len(marker):].strip().startswith("added") and key in parent_file:
            problems.append(f"{key}: marked as added, but {parent} sets it")
        claimed = claimed_parent_value(comment, marker)
        if claimed is not None:
            value = theirs.get(key, "<absent>")
            value = value[0] if isinstance(value, list) and len(value) == 1 else value
            if not same(value, claimed[0]):
                problems.append(f"{key}: the mark '{comment}' names {claimed[0]!r}, {parent} has {value!r}")
    assert problems == []


def test_custom_tiny_makes_the_changes_tiny_makes():
    """custom_tiny.yaml: 'values marked "# tiny:" differ from custom.yaml, the same ones config/finetuning/tiny.yaml
    changes in esc50.yaml'; a value that differs from tiny.yaml's says so (``tiny.yaml: 300``)."""
    tiny, custom_tiny = raw("finetuning/tiny"), raw("finetuning/custom_tiny")
    tiny_marked = {k for k, c in marks("finetuning/tiny").items() if c.startswith("tiny:")}
    problems = []
    for key, comment in marks("finetuning/custom_tiny").items():
        if not comment.startswith("tiny:"):
            continue
        if key not in tiny_marked:
            problems.append(f"{key}: changed in custom_tiny.yaml, not in tiny.yaml")
            continue
        named = re.search(r"tiny\.yaml: ([^\s;,)]+)", comment)
        expected = yaml.safe_load(named.group(1)) if named else custom_tiny[key]
        if not same(tiny[key], expected):
            problems.append(f"{key}: {custom_tiny[key]!r} here, {tiny[key]!r} in tiny.yaml"
                            + (f" (the mark names {expected!r})" if named else ""))
    assert problems == []


@pytest.mark.parametrize("recipe", [*OFFICIAL_SOURCES, *(child for child, _, _ in DERIVED)])
def test_recipe_is_consistent(recipe):
    """What fairseq does not check: one learning rate written twice, one clip length written twice, a weights
    file wherever balanced sampling is on, the tiny recipes runnable on a CPU."""
    cfg = OmegaConf.load(CONFIG / f"{recipe}.yaml")
    assert cfg.optimization.lr == [cfg.optimizer.groups.default.lr_float]
    if recipe.startswith("pretraining/"):
        image = cfg.model.modalities.image
        assert image.get("target_length", 1024) == cfg.task.target_length
        assert image.get("embed_dim", 768) == cfg.model.get("embed_dim", 768)
    else:
        assert cfg.model.target_length in (cfg.task.target_length, "${task.target_length}")
        if cfg.task.AS2M_finetune:  # balanced sampling reads the weights file: the user must name it
            assert OmegaConf.is_missing(cfg.task, "weights_file")
    if recipe.endswith("tiny"):
        assert (cfg.common.cpu, cfg.common.fp16, cfg.distributed_training.ddp_backend) == (True, False, "legacy_ddp")


@pytest.mark.parametrize("recipe, fields", [
    ("pretraining/base", ["checkpoint_activations", "torch_compile"]),
    ("finetuning/as20k", ["checkpoint_activations", "torch_compile", "focal_gamma=2.0"]),
])
def test_plugin_fields_join_the_official_recipes_with_hydras_force_add(recipe, fields):
    """The README's switches (`++model.checkpoint_activations=true`, ...): the official recipes do not list
    the plugin's fields, so a plain `model.x=` override is refused by hydra and `++` must set them."""
    overrides = [f"++model.{f}" if "=" in f else f"++model.{f}=true" for f in fields]
    values = composed(recipe, *overrides)
    for field in fields:
        name, _, value = field.partition("=")
        assert values[f"model.{name}"] == (float(value) if value else True)
    with pytest.raises(Exception, match="checkpoint_activations"):
        composed(recipe, "model.checkpoint_activations=true")


def test_the_readmes_fp16_adam_stats_switch_composes_and_builds_the_optimizer():
    """README "Fine-tuning": adam_fused with fp16 moments on an official recipe's composite optimizer."""
    from fairseq.optim import build_optimizer

    overrides = ["optimizer.groups.default.optimizer._name=adam_fused",
                 "++optimizer.groups.default.optimizer.fp16_adam_stats=true"]
    values = composed("finetuning/as20k", *overrides)
    assert values["optimizer.groups.default.optimizer._name"] == "adam_fused"
    assert values["optimizer.groups.default.optimizer.fp16_adam_stats"] is True
    cfg = compose_recipe("finetuning", "as20k", [*REQUIRED["finetuning"], *overrides])
    group = cfg.optimizer.groups.default.optimizer  # what the composite optimizer builds for the group
    optimizer = build_optimizer(group, [torch.nn.Parameter(torch.zeros(3))])
    assert type(optimizer).__name__ == "FairseqAdamFused" and optimizer.optimizer.fp16_stats
