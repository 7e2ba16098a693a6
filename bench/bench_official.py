"""eat_plugin vs the official EAT code (github.com/cwx-worst-one/EAT at 06c1c34), measured side by side.

    .venv/bin/python bench/bench_official.py --official /path/to/EAT --preset base

Both implementations are built from the SAME official config, the model sections of the recipes
``config/pretraining/base.yaml`` (EAT-base pre-training) and ``config/finetuning/as20k.yaml`` (fine-tuning,
10 classes), completed with the registered dataclasses' defaults as ``fairseq-hydra-train`` does, and
built through fairseq's registries (``MODEL_DATACLASS_REGISTRY`` / ``MODEL_REGISTRY``) after importing
each implementation as a user dir (``fairseq.utils.import_user_module``). Both register
``data2vec_multi`` and ``mae_image_classification``, so every measurement runs in a fresh worker process
of this script (``--worker plugin|official --workload X``), which prints one JSON line.

Steps:
  1. official copy: the checkout given with ``--official`` is copied to a temporary directory and its
     nested dataclass defaults (``x: SomeConfig = SomeConfig()``, rejected by Python 3.11) are rewritten
     to ``field(default_factory=SomeConfig)`` (printed); the checkout itself is never touched.
  2. fixture (a plugin worker): the completed configs, the plugin's initial weights (the official
     parameter names; the EMA teacher under ``_ema``), the inputs, the masks (``eat_plugin.masking.
     compute_block_mask_2d``, given to both forwards as ``precomputed_mask``) and 16 kHz wav files.
     The official worker strips the fields only the plugin knows (``PLUGIN_FIELDS`` of
     ``tests/helpers/official.py``) and stops if any other field is unknown to the official dataclasses.
  3. check (one worker per implementation): the loaded weights equal the fixture's, and on the same
     input / weights / masks the pre-training losses (mask-noise std 0, eager attention in the plugin),
     the encoder features, the classifier logits and the fbank agree; the max differences are printed.
  4. measurements: per workload, alternating plugin, official, plugin, official ... (``--pairs`` pairs),
     each a fresh worker process.

Workloads (``--workloads``):
  pretrain    pre-training step: forward + backward + optimizer + EMA teacher update (``set_num_updates``),
              ``--batch`` clips x clone_batch clones; median over ``--steps`` after ``--warmup`` steps
  encoder     encoder forward, no grad, 2 clips, features only (teacher and decoder removed)
  finetune    fine-tuning step (``mae_image_classification``, 1 clip, 10 classes): forward + backward + optimizer
  inference   classifier forward, no grad, batch 1 and batch 8
  frontend    clips/s per core (1 thread) of the front end, 16 kHz wav file -> normalised fbank: the plugin's
              ``FbankFrontEnd.from_file`` vs the official dataset's (``FileAudioDataset.__getitem__``),
              compared with the clips/s the pre-training step consumes

Figures:
  time ratio     plugin / official seconds per step (< 1: the plugin is faster); median and range over pairs
  peak memory    CPU: the process's peak RSS increase (VmHWM, reset once the model is built, minus VmRSS
                 after the imports, before the model is built; a throw-away 1-parameter optimizer step first
                 loads what torch imports lazily on a first optimizer, ~140 MiB, into that baseline);
                 CUDA: torch.cuda.max_memory_allocated
  FLOP util.     analytic matmul FLOPs of the workload (linear layers, attention q.k and attn.v, patch
                 embedding, the decoder's grouped convs, the teacher; backward = 2 x forward for trained
                 parts) / step time / the GEMM peak measured in the same worker, before and after the steps
                 (the better: best of 6 rounds of a large matmul in the run's compute dtype, fp32 unless
                 ``--dtype``); on a shared machine either can be slowed, so it can exceed 100%

Shims (the official code is driven as published, only the dataclass defaults patched):
  * the official ``MaeImageClassificationModel.build_model`` asserts that the task has ``labels``; a
    stand-in task object with 10 labels is passed (the plugin ignores it);
  * the official ``Mixup`` asserts an even batch; fine-tuning at batch 1 therefore runs with mixup off
    (``model.mixup: 0``) in both implementations.

Needs ``timm`` for the official code (``pip install timm``; a benchmark-only requirement).

    .venv/bin/python bench/bench_official.py --preset tiny --pairs 1 --steps 2     # plugin only, under a minute
    .venv/bin/python bench/bench_official.py --official /path/to/EAT --preset small --workloads pretrain,encoder

On a CPU shared with other jobs, multi-threaded steps of small models stall on descheduled OpenMP threads
(100 ms and more per step); ``--threads 1`` gives steadier ratios there. The raw step times are in ``--json``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import importlib
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = ROOT / "eat_plugin"
PLUGIN_FIELDS_TABLE = ROOT / "tests" / "helpers" / "official.py"  # PLUGIN_FIELDS: our additions to the dataclasses
OFFICIAL_COMMIT = "06c1c34"
OFFICIAL_PACKAGE = "eat_official"  # the patched copy's directory name = its module name as a user dir
OFFICIAL_REQUIREMENTS = {"timm": "timm", "sklearn": "scikit-learn", "h5py": "h5py"}  # its third-party imports
RESULT_TAG = "BENCH_RESULT "

PRETRAINING, CLASSIFIER = "data2vec_multi", "mae_image_classification"
PRETRAINING_TASK = "mae_image_pretraining"
NUM_CLASSES = 10
ENCODER_BATCH, FINETUNE_BATCH, INFERENCE_BATCHES = 2, 1, (1, 8)
FRONTEND_CLIPS = 8
PATCH, FREQ_PATCHES, MEL_BINS, SAMPLE_RATE = 16, 8, 128, 16000

# Overrides of the recipe's model section (dotted paths); the task's target_length follows the model's.
PRESETS: Dict[str, Dict[str, Any]] = {
    "base": {},  # the recipe as is (EAT-base): D 768, 12 blocks, 12 heads, 16 clones, 1024 frames, decoder 6 x 768
    "small": {"embed_dim": 384, "depth": 6, "num_heads": 6, "average_top_k_layers": 6,
              "modalities.image.embed_dim": 384, "modalities.image.decoder.decoder_dim": 384},
    "tiny": {"embed_dim": 64, "depth": 2, "num_heads": 4, "average_top_k_layers": 2, "clone_batch": 2,
             "modalities.image.embed_dim": 64, "modalities.image.target_length": 128,
             "modalities.image.max_length": 64, "modalities.image.decoder.decoder_dim": 64,
             "modalities.image.decoder.decoder_groups": 8, "modalities.image.decoder.decoder_layers": 2},
}
WORKLOADS = ("pretrain", "encoder", "finetune", "inference", "frontend")
MEASUREMENTS = {"pretrain": ["pretrain"], "encoder": ["encoder"], "finetune": ["finetune"],
                "inference": [f"inference_b{b}" for b in INFERENCE_BATCHES], "frontend": ["frontend"]}
DTYPES = ("fp32", "bf16", "fp16")


# =================================================================================== official checkout
NESTED_DEFAULT = re.compile(r"^(?P<head>[ \t]+\w+[ \t]*:[ \t]*[^=\n]+?)[ \t]*=[ \t]*(?P<cls>[A-Z]\w*Config)\(\)[ \t]*$",
                            re.MULTILINE)
DATACLASS_IMPORT = re.compile(r"^from dataclasses import (?P<names>[^\n(]+)$", re.MULTILINE)


def patch_dataclass_defaults(source: str) -> Tuple[str, List[str]]:
    """``x: SomeConfig = SomeConfig()`` -> ``x: SomeConfig = field(default_factory=SomeConfig)`` (Python 3.11
    rejects mutable defaults), importing ``field`` where needed. Returns the text and what changed."""
    changes: List[str] = []

    def rewrite(match: re.Match) -> str:
        changes.append(f"{match.group(0).strip()}  ->  field(default_factory={match.group('cls')})")
        return f"{match.group('head')} = field(default_factory={match.group('cls')})"

    patched = NESTED_DEFAULT.sub(rewrite, source)
    if changes:
        imported = DATACLASS_IMPORT.search(patched)
        names = [n.strip() for n in imported.group("names").split(",")] if imported else []
        if imported and "field" not in names:
            patched = patched[:imported.start()] + f"from dataclasses import {', '.join(names + ['field'])}" \
                + patched[imported.end():]
            changes.append(f"{imported.group(0)}  ->  + field")
        elif not imported:
            patched = "from dataclasses import field\n" + patched
            changes.append("+ from dataclasses import field")
    return patched, changes


def patched_official_copy(checkout: Path, into: Path) -> Path:
    """A copy of the official checkout under ``into`` with the dataclass defaults fixed (printed)."""
    if not (checkout / "models" / "EAT_pretraining.py").is_file():
        sys.exit(f"--official {checkout}: not a checkout of github.com/cwx-worst-one/EAT "
                 f"(no models/EAT_pretraining.py)")
    commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    if (checkout / "COMMIT").is_file():  # a copy of the checkout's files (bench/gpu_kit.sh) names its commit
        commit = subprocess.CompletedProcess([], 0, (checkout / "COMMIT").read_text(), "")
    if commit.returncode == 0 and not commit.stdout.startswith(OFFICIAL_COMMIT):
        print(f"warning: {checkout} is at {commit.stdout.strip()[:7]}; this benchmark was written for "
              f"{OFFICIAL_COMMIT}")
    copy_dir = into / OFFICIAL_PACKAGE
    shutil.copytree(checkout, copy_dir, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.pyc"))
    print(f"official code: {checkout} copied to {copy_dir}, dataclass defaults patched:")
    total = 0
    for path in sorted(copy_dir.rglob("*.py")):
        text, changes = patch_dataclass_defaults(path.read_text())
        if changes:
            path.write_text(text)
            for change in changes:
                print(f"  {path.relative_to(copy_dir)}: {change}")
            total += len(changes)
    if not total:
        print("  nothing to patch (already fixed?)")
    return copy_dir


def missing_official_requirements() -> List[str]:
    return [package for module, package in OFFICIAL_REQUIREMENTS.items() if importlib.util.find_spec(module) is None]


# =================================================================================== analytic FLOPs
def block_flops(tokens: int, dim: int, mlp_ratio: float) -> float:
    """One transformer block on one sequence of ``tokens``: qkv, proj, fc1, fc2 + q.k and attn.v (2 FLOPs / MAC)."""
    hidden = int(dim * mlp_ratio)
    linear = 2 * tokens * (4 * dim * dim + 2 * dim * hidden)
    attention = 2 * 2 * tokens * tokens * dim
    return linear + attention


class ModelShape:
    """The sizes the FLOP count needs, from a completed ``data2vec_multi`` model section."""

    def __init__(self, model: Dict[str, Any]):
        image = model["modalities"]["image"]
        decoder = image["decoder"]
        self.dim, self.depth, self.mlp_ratio = model["embed_dim"], model["depth"], model["mlp_ratio"]
        self.clones, self.frames, self.extra = model["clone_batch"], image["target_length"], image["num_extra_tokens"]
        self.patches = self.frames // PATCH * FREQ_PATCHES  # N: (T / 16) x 8
        masked = image["mask_prob"]  # with inverse_mask the kept blocks are drawn: int(N * (1 - p)) visible
        self.visible = (int(self.patches * (1 - masked)) if image["inverse_mask"]
                        else self.patches - int(self.patches * masked))
        self.decoder = tuple(decoder[k] for k in ("decoder_dim", "decoder_groups", "decoder_kernel", "decoder_layers"))

    def embed(self) -> float:  # patch conv 16 x 16 x 1 -> D, per clip
        return 2 * self.patches * PATCH * PATCH * self.dim

    def encoder(self, tokens: int) -> float:  # the blocks over one sequence
        return self.depth * block_flops(tokens, self.dim, self.mlp_ratio)

    def cnn_decoder(self) -> float:  # per row: grouped k x k convs on the N-patch grid + the output projection
        width, groups, kernel, layers = self.decoder
        convs = sum(2 * self.patches * width * ((self.dim if i == 0 else width) // groups) * kernel * kernel
                    for i in range(layers))
        return convs + 2 * self.patches * width * self.dim


def workload_flops(workload: str, shape: ModelShape, batch: int) -> float:
    rows, full = batch * shape.clones, shape.extra + shape.patches
    features = batch * (shape.embed() + shape.encoder(full))  # one forward on whole clips
    if workload == "pretrain":
        student = batch * shape.embed() + rows * shape.encoder(shape.extra + shape.visible)
        decoder = rows * shape.cnn_decoder()
        return 3 * (student + decoder) + features  # trained: forward + 2 x backward; teacher: forward
    if workload == "encoder":
        return features
    head = batch * 2 * shape.dim * NUM_CLASSES
    if workload == "finetune":
        return 3 * (features + head)
    if workload.startswith("inference"):
        return features + head
    return float("nan")  # frontend: no matmul count


def workload_batch(workload: str, pretrain_batch: int) -> int:
    if workload == "pretrain":
        return pretrain_batch
    if workload.startswith("inference_b"):
        return int(workload[len("inference_b"):])
    return {"encoder": ENCODER_BATCH, "finetune": FINETUNE_BATCH, "frontend": FRONTEND_CLIPS}[workload]


# =================================================================================== worker: machinery
def proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def release_free_memory() -> None:
    """Collect garbage and hand freed heap memory back to the OS (glibc keeps freed blocks of up to 32 MiB
    in the process, where they would still count in VmRSS)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class MemoryProbe:
    """Peak memory of the measured phase (see the module docstring for the definition)."""

    def __init__(self, device):
        import torch

        self.torch, self.cuda = torch, device.type == "cuda"
        release_free_memory()
        self.baseline = 0 if self.cuda else proc_status_kib("VmRSS") * 1024  # after the imports
        self.hwm_reset = False

    @property
    def definition(self) -> str:
        if self.cuda:
            return "torch.cuda.max_memory_allocated (reset once the model is built)"
        how = "reset once the model is built" if self.hwm_reset else "not resettable here: includes the build"
        return f"peak RSS increase: VmHWM ({how}) - VmRSS after the imports, before the model is built"

    def start(self) -> None:
        release_free_memory()
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False

    def peak_bytes(self) -> int:
        if self.cuda:
            return int(self.torch.cuda.max_memory_allocated())
        return proc_status_kib("VmHWM") * 1024 - self.baseline


def gemm_peak(device, dtype, rounds: int = 6) -> Tuple[float, str]:
    """FLOP/s of a large square matmul in ``dtype`` on ``device``: the best of ``rounds`` (other processes on
    the machine only ever slow a round down)."""
    import torch

    n, repeat = (8192, 5) if device.type == "cuda" else (2048, 1)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = 0.0
    for _ in range(rounds + 1):  # the first one warms up
        sync(device)
        start = time.perf_counter()
        for _ in range(repeat):
            a @ b
        sync(device)
        best = max(best, repeat * 2 * n**3 / (time.perf_counter() - start))
    return best, f"{n}x{n} {str(dtype).replace('torch.', '')} matmul"


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def time_calls(call: Callable[[int], None], warmup: int, steps: int, device) -> List[float]:
    """Seconds of each of ``steps`` calls after ``warmup`` calls; ``call(i)`` gets the running index."""
    times = []
    for i in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        call(i)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def machine_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


class StandInTask:
    """What the official ``mae_image_classification.build_model`` reads from its task: ``labels``."""

    def __init__(self, num_classes: int):
        self.labels = [str(i) for i in range(num_classes)]


# =================================================================================== worker: the two sides
class Fixture:
    """The files every worker reads: configs, initial weights, inputs, masks, wavs (written by ``prepare``)."""

    def __init__(self, root: Path):
        self.root = root

    @property
    def cfg(self) -> Dict[str, Any]:
        return json.loads((self.root / "cfg.json").read_text())

    def tensors(self, name: str) -> Any:
        """A saved dict of tensors, read into memory (not mmap: a model may keep the tensors it is given,
        and pages of a mapped file would be counted when the steps first touch them)."""
        import torch

        return torch.load(self.root / f"{name}.pt", map_location="cpu", weights_only=True)

    def save(self, name: str, value: Any) -> None:
        import torch

        torch.save(value, self.root / f"{name}.pt")

    @property
    def manifest(self) -> Path:
        return self.root / "wavs.tsv"

    def wav_paths(self) -> List[Path]:
        lines = self.manifest.read_text().splitlines()
        return [Path(lines[0]) / line.split("\t")[0] for line in lines[1:]]


class Side:
    """One implementation as a worker sees it: a fairseq user dir plus what differs between the two."""

    name = ""

    def __init__(self, user_dir: Path):
        self.user_dir = user_dir

    def import_user_dir(self) -> None:
        from fairseq.utils import import_user_module

        import_user_module(argparse.Namespace(user_dir=str(self.user_dir)))

    def model_section(self, section: Dict[str, Any], name: str) -> Dict[str, Any]:
        """The completed model section this implementation's dataclass receives."""
        return section

    def eager_attention(self) -> contextlib.AbstractContextManager:
        """softmax(q.k) @ v computed eagerly (the official ``AltAttention`` always is)."""
        return contextlib.nullcontext()

    def frontend(self, fixture: Fixture, target_length: int) -> Optional[Callable[[int], Any]]:
        """``fbank(i)`` of the fixture's wav ``i``: ``(1, T, 128)``."""
        return None

    def build(self, name: str, section: Dict[str, Any]):
        """Registry lookup, typed config from the section, ``build_model``."""
        from fairseq.models import MODEL_DATACLASS_REGISTRY, MODEL_REGISTRY
        from omegaconf import OmegaConf

        cfg = OmegaConf.merge(OmegaConf.structured(MODEL_DATACLASS_REGISTRY[name]), self.model_section(section, name))
        return MODEL_REGISTRY[name].build_model(cfg, StandInTask(NUM_CLASSES) if name == CLASSIFIER else None)


class PluginSide(Side):
    """eat_plugin: this checkout's ``eat_plugin`` directory as the user dir."""

    name = "plugin"

    def __init__(self, user_dir: Path, checkpoint_activations: bool = False, torch_compile: bool = False):
        super().__init__(user_dir)
        self.options = {name: True for name, on in (("checkpoint_activations", checkpoint_activations),
                                                    ("torch_compile", torch_compile)) if on}

    def model_section(self, section, name):
        """``--checkpoint-activations`` (the plugin's memory-saving option) and ``--compile`` (its
        ``torch_compile``); the official code has neither."""
        if not self.options:
            return section
        section = copy.deepcopy(section)
        section.update(self.options)
        args = section.get("pretrained_model_args")
        if args is not None:
            args["model"].update(self.options)
        return section

    def eager_attention(self):
        from eat_plugin.modules.attention import fused_attention

        return fused_attention(False)

    def frontend(self, fixture, target_length):
        from eat_plugin.data.fbank import FbankFrontEnd

        front_end, paths = FbankFrontEnd(target_length), fixture.wav_paths()
        return lambda i: front_end.from_file(paths[i])


class OfficialSide(Side):
    """The patched official copy as the user dir; it gets the official fields only."""

    name = "official"

    def __init__(self, user_dir: Path):
        super().__init__(user_dir)
        table = importlib.util.spec_from_file_location("eat_bench_plugin_fields", PLUGIN_FIELDS_TABLE)
        module = importlib.util.module_from_spec(table)
        table.loader.exec_module(module)  # torch + omegaconf only: no plugin import in this process
        self.plugin_fields = module.PLUGIN_FIELDS

    def model_section(self, section, name):
        """``section`` without the plugin-only fields; any other field unknown to the official dataclass stops."""
        from fairseq.models import MODEL_DATACLASS_REGISTRY
        from fairseq.tasks import TASK_DATACLASS_REGISTRY
        from omegaconf import OmegaConf

        section = self.strip(section, f"model:{name}")
        unknown = self.unknown(section, OmegaConf.structured(MODEL_DATACLASS_REGISTRY[name]), "model")
        args = section.get("pretrained_model_args")
        if args is not None:  # the classifier's stored pre-training cfg: its model and task sections too
            args["model"] = self.strip(args["model"], f"model:{PRETRAINING}")
            args["task"] = self.strip(args["task"], f"task:{PRETRAINING_TASK}")
            unknown += self.unknown(args["model"], OmegaConf.structured(MODEL_DATACLASS_REGISTRY[PRETRAINING]),
                                    "model.pretrained_model_args.model")
            unknown += self.unknown(args["task"], OmegaConf.structured(TASK_DATACLASS_REGISTRY[PRETRAINING_TASK]),
                                    "model.pretrained_model_args.task")
        if unknown:
            raise SystemExit(f"fields unknown to the official dataclasses (add them to PLUGIN_FIELDS in "
                             f"{PLUGIN_FIELDS_TABLE.relative_to(ROOT)} if they are ours): {', '.join(unknown)}")
        return section

    def strip(self, values: Dict[str, Any], section: str) -> Dict[str, Any]:
        """A copy of ``values`` without the ``PLUGIN_FIELDS`` of ``section`` (``"model:data2vec_multi"``)."""
        values = copy.deepcopy(values)
        for key in self.plugin_fields:
            if key.startswith(section + "."):
                *parents, leaf = key[len(section) + 1:].split(".")
                node = values
                for parent in parents:
                    node = node.get(parent) if isinstance(node, dict) else None
                if isinstance(node, dict):
                    node.pop(leaf, None)
        return values

    def unknown(self, values: Dict[str, Any], schema, path: str) -> List[str]:
        """Keys of ``values`` (nested) that the official dataclass ``schema`` does not declare."""
        from omegaconf import DictConfig

        found, known = [], set(schema.keys())  # (`key in schema` is False for a MISSING value)
        for key, value in values.items():
            if key not in known:
                found.append(f"{path}.{key}")
            elif isinstance(value, dict) and isinstance(schema[key], DictConfig) and key != "pretrained_model_args":
                found += self.unknown(value, schema[key], f"{path}.{key}")
        return found

    def frontend(self, fixture, target_length):
        datasets = importlib.import_module(f"{OFFICIAL_PACKAGE}.data.raw_audio_dataset")
        dataset = datasets.FileAudioDataset(manifest_path=str(fixture.manifest), sample_rate=SAMPLE_RATE,
                                            downsr_16hz=True, wav2fbank=True, target_length=target_length,
                                            train_mode="valid")
        return lambda i: dataset[i]["source"]


# =================================================================================== worker: workloads
class Worker:
    """One process, one implementation, one workload (or ``prepare`` / ``check``)."""

    def __init__(self, side: Side, fixture: Fixture, args: argparse.Namespace):
        import torch

        self.torch, self.side, self.fixture, self.args = torch, side, fixture, args
        self.device = torch.device(args.device)
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]

    # ------------------------------------------------------------------ building
    def pretraining_section(self, mask_noise_std: Optional[float] = None) -> Dict[str, Any]:
        model = self.fixture.cfg["pretraining"]["model"]
        if mask_noise_std is not None:
            model["modalities"]["image"]["mask_noise_std"] = mask_noise_std
        return model

    def pretraining_model(self, mask_noise_std: Optional[float] = None):
        """``data2vec_multi`` from the recipe, the fixture's initial weights (student + ``_ema`` teacher)."""
        model = self.side.build(PRETRAINING, self.pretraining_section(mask_noise_std))
        model.load_state_dict(self.fixture.tensors("pretrain_weights"), strict=True)
        return model

    def classifier(self):
        model = self.side.build(CLASSIFIER, self.fixture.cfg["classifier"])
        model.load_state_dict(self.fixture.tensors("classifier_weights"), strict=True)
        return model

    def optimizer(self, model, lr: float):
        """Recipe betas / weight decay: torch AdamW or fairseq's Adam for both, or (``own``) each one's fastest
        optimizer with fairseq Adam's update: fairseq's ``adam`` (official), ``adam_fused`` (plugin)."""
        params = [p for p in model.parameters() if p.requires_grad] if hasattr(model, "parameters") else model
        if self.args.optimizer == "own" and self.side.name == "plugin":
            from eat_plugin.optim import AdamFused

            return AdamFused(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.05, fp16_stats=self.args.fp16_adam_stats)
        if self.args.optimizer in ("fairseq", "own"):
            from fairseq.optim.adam import Adam

            return Adam(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.05)
        return self.torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.05)

    def autocast(self):
        enabled = self.autocast_dtype is not None
        return self.torch.autocast(self.device.type, dtype=self.autocast_dtype or self.torch.float32, enabled=enabled)

    def train_step(self, model, optimizer, scaler, forward: Callable[[], Dict], after: Callable[[int], None]):
        """``call(i)``: forward -> loss (sum / sample_size, as fairseq's criterion + trainer) -> backward -> step."""
        def call(i: int) -> None:
            with self.autocast():
                out = forward()
                loss = sum(l.float().sum() for l in out["losses"].values()) / out["sample_size"]
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            after(i)
        return call

    # ------------------------------------------------------------------ measured workloads
    def load_libraries(self) -> None:
        """One throw-away training step on a 1-parameter model: torch imports its optimizer machinery
        (torch._dynamo, ~140 MiB) on the first optimizer, which is not the implementation's memory."""
        torch = self.torch
        weight = torch.nn.Parameter(torch.zeros(8, 8, device=self.device))
        optimizer = self.optimizer([weight], lr=1e-3)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.args.dtype == "fp16")
        with self.autocast():
            loss = (torch.ones(2, 8, device=self.device) @ weight).float().sum()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    # ------------------------------------------------------------------ workloads: (model, call(i))
    def pretrain_workload(self, inputs, scaler) -> Tuple[Any, Callable[[int], None]]:
        model = self.pretraining_model().to(self.device).train()
        optimizer = self.optimizer(model, lr=5e-4)
        source = inputs["pretrain_source"].to(self.device)  # (B, 1, T, 128)
        mask = inputs["pretrain_mask"].to(self.device)  # (B * clones, N), 1 = masked
        return model, self.train_step(model, optimizer, scaler,
                                      lambda: model(source=source, precomputed_mask=mask),
                                      lambda i: model.set_num_updates(i + 1))  # the EMA teacher step, as fairseq

    def encoder_workload(self, inputs) -> Tuple[Any, Callable[[int], None]]:
        model = self.pretraining_model()
        model.remove_pretraining_modules()  # teacher and decoder out
        model = model.to(self.device).eval()
        clips = inputs["clips"][:ENCODER_BATCH].to(self.device)  # (2, 1, T, 128)

        def call(i: int) -> None:
            with self.torch.no_grad(), self.autocast():
                model.extract_features(clips, mask=False)  # x: (2, N, D)
        return model, call

    def finetune_workload(self, inputs, scaler) -> Tuple[Any, Callable[[int], None]]:
        model = self.classifier().to(self.device).train()
        optimizer = self.optimizer(model, lr=5e-5)
        clips = inputs["clips"][:FINETUNE_BATCH].to(self.device)  # (1, 1, T, 128)
        labels = inputs["labels"][:FINETUNE_BATCH].to(self.device)  # (1, 10) multi-hot
        return model, self.train_step(model, optimizer, scaler, lambda: model(clips, labels), lambda i: None)

    def inference_workload(self, inputs, batch: int) -> Tuple[Any, Callable[[int], None]]:
        model = self.classifier().to(self.device).eval()
        clips = inputs["clips"][:batch].to(self.device)  # (b, 1, T, 128)

        def call(i: int) -> None:
            with self.torch.no_grad(), self.autocast():
                model(clips)  # (b, 10) logits
        return model, call

    def frontend_workload(self) -> Tuple[Any, Optional[Callable[[int], None]]]:
        fbank = self.side.frontend(self.fixture, self.fixture.cfg["target_length"])
        if fbank is None:
            return None, None

        def call(i: int) -> None:
            for clip in range(FRONTEND_CLIPS):
                fbank(clip)  # (1, T, 128)
        return None, call

    def measure(self, workload: str) -> Dict[str, Any]:
        """GEMM peak, build, reset the peak memory, time the calls, GEMM peak again (the better one counts)."""
        torch = self.torch
        threads = 1 if workload == "frontend" else self.args.threads  # the front end: per core
        torch.set_num_threads(threads)
        compute_dtype = self.autocast_dtype or torch.float32
        gemm_before, gemm_what = gemm_peak(self.device, compute_dtype)
        self.load_libraries()
        probe = MemoryProbe(self.device)  # baseline: after the imports
        inputs = self.fixture.tensors("inputs")
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.args.dtype == "fp16")
        if workload == "pretrain":
            model, call = self.pretrain_workload(inputs, scaler)
        elif workload == "encoder":
            model, call = self.encoder_workload(inputs)
        elif workload == "finetune":
            model, call = self.finetune_workload(inputs, scaler)
        elif workload.startswith("inference_b"):
            model, call = self.inference_workload(inputs, workload_batch(workload, 0))
        elif workload == "frontend":
            model, call = self.frontend_workload()
        else:
            raise ValueError(f"unknown workload {workload!r}")
        if call is None:
            return {"skipped": "no front end callable in this implementation"}
        inputs = None
        probe.start()
        times = time_calls(call, self.args.warmup, self.args.steps, self.device)
        peak = probe.peak_bytes()
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) if model is not None else 0
        model = call = None
        gc.collect()
        gemm_after, _ = gemm_peak(self.device, compute_dtype)
        return {"times": times, "seconds": statistics.median(times), "peak_bytes": peak,
                "peak_definition": probe.definition, "gemm_flops_per_s": max(gemm_before, gemm_after),
                "gemm_before_after": [gemm_before, gemm_after], "gemm": gemm_what,
                "threads": threads, "trainable_params": trainable}

    # ------------------------------------------------------------------ parity check
    def check(self, workloads: Sequence[str]) -> Dict[str, Any]:
        """Weights as loaded vs the fixture; losses / features / logits / fbank saved for the runner to compare."""
        torch = self.torch
        inputs, out, report = self.fixture.tensors("inputs"), {}, {}
        with torch.no_grad(), self.side.eager_attention():
            if {"pretrain", "encoder"} & set(workloads):
                model = self.pretraining_model(mask_noise_std=0.0).to(self.device).train()
                report["pretrain_weights"] = state_difference(model.state_dict(),
                                                              self.fixture.tensors("pretrain_weights"))
                result = model(source=inputs["pretrain_source"].to(self.device),
                               precomputed_mask=inputs["pretrain_mask"].to(self.device))
                out["pretrain_losses"] = {k: v.float().cpu() for k, v in result["losses"].items()}
                out["pretrain_sample_size"] = float(result["sample_size"])
                model.remove_pretraining_modules()
                model.eval()
                out["encoder_features"] = model.extract_features(inputs["clips"][:ENCODER_BATCH].to(self.device),
                                                                 mask=False)["x"].float().cpu()  # (2, N, D)
                del model
            if {"finetune", "inference"} & set(workloads):
                model = self.classifier().to(self.device).eval()
                report["classifier_weights"] = state_difference(model.state_dict(),
                                                                self.fixture.tensors("classifier_weights"))
                out["logits"] = model(inputs["clips"][:2].to(self.device)).float().cpu()  # (2, 10)
                del model
        if "frontend" in workloads:
            fbank = self.side.frontend(self.fixture, self.fixture.cfg["target_length"])
            if fbank is not None:
                out["fbank"] = fbank(0).float()  # (1, T, 128)
        path = self.fixture.root / f"check_{self.side.name}.pt"
        torch.save(out, path)
        return {"saved": str(path), "weights": report}

    # ------------------------------------------------------------------ fixture (plugin side)
    def prepare(self, preset: str, batch: int, workloads: Sequence[str]) -> Dict[str, Any]:
        """Completed configs, the plugin's initial weights, inputs, masks and wavs into the fixture directory."""
        import numpy as np
        import soundfile as sf
        from eat_plugin.masking import compute_block_mask_2d
        from eat_plugin.official_configs import complete_cfg, recipe_sections

        torch = self.torch
        pretraining = recipe_sections("pretraining", "base")
        for path, value in PRESETS[preset].items():
            set_path(pretraining["model"], path, value)
        frames = pretraining["model"].get("modalities", {}).get("image", {}).get("target_length", 1024)
        pretraining["task"].update(data="unused", target_length=frames)
        pretraining = complete_cfg(pretraining)

        finetuning = recipe_sections("finetuning", "as20k")
        finetuning["task"].update(data="unused", target_length=frames)
        finetuning["model"].update(num_classes=NUM_CLASSES, target_length=frames, model_path="unused",
                                   pretrained_model_args={**copy.deepcopy(pretraining), "criterion": None,
                                                          "lr_scheduler": None})
        if FINETUNE_BATCH % 2:
            finetuning["model"]["mixup"] = 0.0  # the official Mixup asserts an even batch
        classifier = complete_cfg(finetuning)["model"]
        cfg = {"preset": preset, "target_length": frames, "pretraining": pretraining, "classifier": classifier}
        (self.fixture.root / "cfg.json").write_text(json.dumps(cfg, indent=1))

        shape = ModelShape(pretraining["model"])
        if {"pretrain", "encoder"} & set(workloads):
            torch.manual_seed(0)
            model = self.side.build(PRETRAINING, pretraining["model"])
            self.fixture.save("pretrain_weights", model.state_dict())  # official names; teacher under `_ema`
            del model
        if {"finetune", "inference"} & set(workloads):
            torch.manual_seed(0)
            model = self.side.build(CLASSIFIER, classifier)
            self.fixture.save("classifier_weights", model.state_dict())
            del model
        generator = torch.Generator().manual_seed(0)
        rows, grid = batch * shape.clones, (frames // PATCH, FREQ_PATCHES)
        image = pretraining["model"]["modalities"]["image"]
        clips = max(INFERENCE_BATCHES)
        labels = (torch.rand(clips, NUM_CLASSES, generator=generator) < 0.2).float()  # (8, 10) multi-hot
        labels[torch.arange(clips), torch.randint(0, NUM_CLASSES, (clips,), generator=generator)] = 1.0
        self.fixture.save("inputs", {
            "pretrain_source": torch.randn(batch, 1, frames, MEL_BINS, generator=generator),  # (B, 1, T, 128)
            "pretrain_mask": compute_block_mask_2d((rows, shape.patches), image["mask_prob"], image["mask_length"],
                                                   image["mask_prob_adjust"], image["inverse_mask"], True, grid,
                                                   generator=generator),  # (B * clones, N), 1 = masked
            "clips": torch.randn(clips, 1, frames, MEL_BINS, generator=generator),  # (8, 1, T, 128)
            "labels": labels,
        })
        wavs = self.fixture.root / "wavs"
        wavs.mkdir()
        samples = SAMPLE_RATE * 10 * frames // 1024  # 10-s clips at 1024 frames
        rng, rows_tsv = np.random.default_rng(0), [str(wavs)]
        for i in range(FRONTEND_CLIPS):
            sf.write(wavs / f"clip_{i}.wav", (0.1 * rng.standard_normal(samples)).astype(np.float32), SAMPLE_RATE,
                     subtype="PCM_16")
            rows_tsv.append(f"clip_{i}.wav\t{samples}")
        self.fixture.manifest.write_text("\n".join(rows_tsv) + "\n")
        return {"target_length": frames, "clip_seconds": samples / SAMPLE_RATE}


def set_path(tree: Dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for parent in parents:
        tree = tree.setdefault(parent, {})
    tree[leaf] = value


def flatten(state: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat = {}
    for key, value in state.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def state_difference(got: Dict[str, Any], expected: Dict[str, Any]) -> Dict[str, Any]:
    """Keys missing / unexpected and the max |difference| of a model's state against the fixture's weights."""
    got, expected = flatten(got), flatten(expected)
    common = sorted(set(got) & set(expected))
    diff = max((float((got[k].detach().float().cpu() - expected[k].float()).abs().max()) for k in common
                if got[k].numel()), default=0.0)
    return {"tensors": len(common), "missing": sorted(set(expected) - set(got)),
            "unexpected": sorted(set(got) - set(expected)), "max_abs_diff": diff}


def worker_main(args: argparse.Namespace) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    side: Side = (PluginSide(PLUGIN_DIR, args.checkpoint_activations, args.compile) if args.worker == "plugin"
                  else OfficialSide(Path(args.official_copy)))
    side.import_user_dir()
    import fairseq

    worker = Worker(side, Fixture(Path(args.fixture)), args)
    if args.workload == "prepare":
        result = worker.prepare(args.preset, args.batch, args.workloads.split(","))
    elif args.workload == "check":
        result = worker.check(args.workloads.split(","))
    else:
        result = worker.measure(args.workload)
    result.update(impl=side.name, workload=args.workload, machine=machine_name(worker.device),
                  torch=torch.__version__, fairseq=fairseq.__version__, device=args.device, dtype=args.dtype)
    print(RESULT_TAG + json.dumps(result), flush=True)


# =================================================================================== runner
class Runner:
    def __init__(self, args: argparse.Namespace, fixture: Path, official_copy: Optional[Path]):
        self.args, self.fixture, self.official_copy = args, fixture, official_copy
        self.sides = ["plugin", "official"] if official_copy is not None else ["plugin"]

    def worker(self, side: str, workload: str) -> Dict[str, Any]:
        a = self.args
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--workload", workload,
                   "--fixture", str(self.fixture), "--device", a.device,
                   "--dtype", a.official_dtype if side == "official" and a.official_dtype else a.dtype,
                   "--threads", str(a.threads), "--steps", str(a.steps), "--warmup", str(a.warmup),
                   "--optimizer", a.optimizer, "--preset", a.preset, "--batch", str(a.batch),
                   "--workloads", ",".join(a.workloads)] + (["--checkpoint-activations"] if a.checkpoint_activations else [])
        command += ["--compile"] if a.compile else []
        command += ["--fp16-adam-stats"] if a.fp16_adam_stats else []
        if side == "official":
            command += ["--official-copy", str(self.official_copy)]
        env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads),
               "PYTHONWARNINGS": "ignore"}
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
        lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_TAG)]
        if done.returncode != 0 or not lines:
            tail = "\n".join((done.stderr + done.stdout).splitlines()[-40:])
            raise SystemExit(f"worker {side} / {workload} failed (exit {done.returncode}):\n{tail}")
        result = json.loads(lines[-1][len(RESULT_TAG):])
        result["process_seconds"] = time.perf_counter() - start
        return result

    def check(self) -> Dict[str, Any]:
        """Parity of the two implementations on the fixture; prints the max differences."""
        import torch

        reports = {side: self.worker(side, "check") for side in self.sides}
        for side, report in reports.items():
            for what, diff in report["weights"].items():
                print(f"  {side:8s} {what}: {diff['tensors']} tensors loaded, max |diff| vs the fixture "
                      f"{diff['max_abs_diff']:.1e}, missing {diff['missing'] or 'none'}, "
                      f"unexpected {diff['unexpected'] or 'none'}")
        ours, theirs = (torch.load(self.fixture / f"check_{side}.pt", weights_only=True) for side in self.sides)
        diffs: Dict[str, Tuple[float, float]] = {}  # what -> (max |plugin - official|, max |official|)
        for key in ours.get("pretrain_losses", {}):
            diffs[f"pretrain loss '{key}'"] = max_diff(ours["pretrain_losses"][key], theirs["pretrain_losses"].get(key))
        if "pretrain_losses" in ours:
            only_one = set(theirs["pretrain_losses"]) ^ set(ours["pretrain_losses"])
            if only_one:
                print(f"  loss terms only one side has: {sorted(only_one)}")
            diffs["pretrain sample_size"] = (abs(ours["pretrain_sample_size"] - theirs["pretrain_sample_size"]),
                                             theirs["pretrain_sample_size"])
        for key, label in (("encoder_features", "encoder features"), ("logits", "classifier logits"),
                           ("fbank", "front end fbank")):
            if key in ours and key in theirs:
                diffs[label] = max_diff(ours[key], theirs[key])
        for label, (diff, scale) in diffs.items():
            flag = "" if diff <= 1e-4 * max(scale, 1.0) else "   <-- MISMATCH"
            print(f"  {label:32s} max |plugin - official| {diff:.2e}  (max |official| {scale:.2e}){flag}")
        return {"weights": {side: r["weights"] for side, r in reports.items()}, "max_abs_diff": diffs}

    def measure(self) -> Dict[str, List[Dict[str, Any]]]:
        """A B A B ...: per measurement, ``pairs`` rounds of plugin then official, each a fresh process."""
        results: Dict[str, List[Dict[str, Any]]] = {}
        for workload in [m for w in self.args.workloads for m in MEASUREMENTS[w]]:
            results[workload] = []
            for pair in range(self.args.pairs):
                row = {side: self.worker(side, workload) for side in self.sides}
                results[workload].append(row)
                print(f"  {workload:13s} pair {pair + 1}/{self.args.pairs}: " + ", ".join(
                    f"{side} {fmt_seconds(r.get('seconds'))}" for side, r in row.items()), flush=True)
        return results


def max_diff(a, b) -> Tuple[float, float]:
    """``(max |a - b|, max |b|)``; infinite when the shapes differ."""
    if b is None or a.shape != b.shape:
        return float("inf"), float("nan")
    return float((a - b).abs().max()), float(b.abs().max())


def fmt_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_bytes(n: Optional[float]) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def fmt_ratio(values: Sequence[float]) -> str:
    if not values:
        return "-"
    median = statistics.median(values)
    return f"{median:.3f} ({min(values):.3f}-{max(values):.3f})" if len(values) > 1 else f"{median:.3f}"


def pair_ratios(pairs: List[Dict[str, Any]], key: str) -> List[float]:
    """plugin / official ``key`` of each pair where both measured it."""
    both = [p for p in pairs if "seconds" in p["plugin"] and "seconds" in p.get("official", {})]
    return [p["plugin"][key] / p["official"][key] for p in both if p["official"][key] > 0]


def side_summary(runs: List[Dict[str, Any]], flops: float, batch: int) -> Dict[str, float]:
    """Medians over one implementation's measurements of a workload."""
    seconds = statistics.median(r["seconds"] for r in runs)
    return {"seconds": seconds, "peak_bytes": statistics.median(r["peak_bytes"] for r in runs),
            "util": statistics.median(flops / r["seconds"] / r["gemm_flops_per_s"] for r in runs),
            "clips_per_s": batch / seconds}


def summarise(results: Dict[str, List[Dict[str, Any]]], cfg: Dict[str, Any], args) -> Tuple[List[List[str]], Dict]:
    """Table rows and the derived figures (ratios, utilisation, clips/s)."""
    shape = ModelShape(cfg["pretraining"]["model"])
    rows, derived = [], {}
    for workload, pairs in results.items():
        batch = workload_batch(workload, args.batch)
        flops = workload_flops(workload, shape, batch)
        sides = {}
        for side in pairs[0]:
            runs = [p[side] for p in pairs if "seconds" in p[side]]
            if runs:
                sides[side] = side_summary(runs, flops, batch)
        time_ratios, mem_ratios = pair_ratios(pairs, "seconds"), pair_ratios(pairs, "peak_bytes")
        derived[workload] = {"flops": flops, "batch": batch, "time_ratios": time_ratios, "mem_ratios": mem_ratios,
                             **sides}
        ours, theirs = sides.get("plugin"), sides.get("official")
        if workload == "frontend":
            rate = lambda s: f"{s['clips_per_s']:.1f} clips/s" if s else "-"  # noqa: E731
            rows.append([f"frontend (1 core, {FRONTEND_CLIPS} wavs)", rate(ours), rate(theirs), fmt_ratio(time_ratios),
                         "-", "-", "-", "-"])
            continue
        label = {"pretrain": f"pretrain (B {batch} x {shape.clones} clones)", "encoder": f"encoder (B {batch})",
                 "finetune": f"finetune (B {batch})"}.get(workload, f"inference (B {batch})")
        get = lambda s, key: s[key] if s else None  # noqa: E731
        util = lambda s: f"{100 * s['util']:.1f}%" if s else "-"  # noqa: E731
        memory = f"{fmt_bytes(get(ours, 'peak_bytes'))} / {fmt_bytes(get(theirs, 'peak_bytes'))}"
        rows.append([label, fmt_seconds(get(ours, "seconds")), fmt_seconds(get(theirs, "seconds")),
                     fmt_ratio(time_ratios), memory,
                     fmt_ratio(mem_ratios), f"{flops / 1e9:.1f}", f"{util(ours)} / {util(theirs)}"])
    return rows, derived


def print_table(rows: List[List[str]], official: bool) -> None:
    header = ["workload", "plugin", "official" if official else "(official)", "time plugin/official",
              "peak mem plugin / official", "mem ratio", "GFLOP", "FLOP util plugin / official"]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths]] + rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def print_frontend_demand(derived: Dict[str, Any]) -> None:
    """The front end's clips/s per core against the clips/s the pre-training step consumes."""
    if "frontend" not in derived or "pretrain" not in derived:
        return
    for side in ("plugin", "official"):
        supply, demand = derived["frontend"].get(side), derived["pretrain"].get(side)
        if not demand:
            continue
        if not supply:
            supply = derived["frontend"].get("plugin")
        print(f"  {side}: the pre-training step consumes {demand['clips_per_s']:.2f} clips/s; the front end gives "
              f"{supply['clips_per_s']:.1f} clips/s per core -> {demand['clips_per_s'] / supply['clips_per_s']:.3f} "
              f"cores of data loading per training process")


def print_environment(sample: Dict[str, Any], args: argparse.Namespace, load_before: float) -> None:
    print(f"{sample.get('machine', '?')} ({args.device}), {args.threads} threads, torch {sample.get('torch')}, "
          f"fairseq {sample.get('fairseq')}, {args.dtype}"
          f"{f' (official {args.official_dtype})' if args.official_dtype else ''}, optimizer {args.optimizer}, checkpoint_activations (plugin) {args.checkpoint_activations}, torch_compile (plugin) {args.compile}, fp16_adam_stats (plugin) {args.fp16_adam_stats}, {args.steps} steps after "
          f"{args.warmup} warm-up(s); GEMM peak ({sample.get('gemm')}): "
          f"{sample.get('gemm_flops_per_s', float('nan')) / 1e9:.1f} GFLOP/s")
    print(f"peak memory: {sample.get('peak_definition')}")
    print(f"load average (1 min) at the start / the end: {load_before:.2f} / {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} CPUs (other processes skew the times)")


def runner_main(args: argparse.Namespace) -> None:
    official: Optional[Path] = Path(args.official).resolve() if args.official else None
    if official is not None and missing_official_requirements():
        missing = missing_official_requirements()
        sys.exit(f"the official EAT code needs {', '.join(missing)}, not installed for {sys.executable}; "
                 f"install (a benchmark-only requirement, not one of eat-fairseq's) with:\n"
                 f"    {sys.executable} -m pip install {' '.join(missing)}")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_official_") as tmp:
        # 1. the patched official copy, 2. the fixture
        official_copy = patched_official_copy(official, Path(tmp)) if official is not None else None
        fixture = Path(tmp) / "fixture"
        fixture.mkdir()
        runner = Runner(args, fixture, official_copy)
        prepared = runner.worker("plugin", "prepare")
        cfg = json.loads((fixture / "cfg.json").read_text())
        shape = ModelShape(cfg["pretraining"]["model"])
        print(f"preset {args.preset}: D {shape.dim}, {shape.depth} blocks, {shape.clones} clones, "
              f"{shape.frames} frames ({shape.patches} patches, {shape.visible} visible), decoder "
              f"{shape.decoder[3]} x {shape.decoder[0]} (groups {shape.decoder[1]}, kernel {shape.decoder[2]}); "
              f"{prepared['clip_seconds']:g}-s clips")
        # 3. parity
        checked = None
        if official_copy is not None:
            print("check (fp32, mask-noise std 0, eager attention; same input / weights / masks):")
            checked = runner.check()
        else:
            print("no --official: the plugin's figures only")
        # 4. A B A B
        print(f"measurements ({args.pairs} pair(s), each a fresh worker process):")
        results = runner.measure()
    rows, derived = summarise(results, cfg, args)
    print()
    print_environment(next(iter(results.values()))[0]["plugin"], args, load_before)
    print_table(rows, official is not None)
    print_frontend_demand(derived)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "cfg": cfg, "check": checked,
                                               "measurements": results, "derived": derived}, indent=1))
        print(f"raw measurements: {args.json}")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", help="a checkout of github.com/cwx-worst-one/EAT at 06c1c34 (never modified)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="base")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma list of {', '.join(WORKLOADS)}")
    parser.add_argument("--pairs", type=int, default=3, help="plugin / official measurement pairs per workload")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement (the median is used)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch", type=int, help="pre-training clips per step (default: 12 on cuda, the official "
                                                  "per-GPU batch; 1 on cpu)")
    parser.add_argument("--device", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help="autocast dtype (the official recipes: fp16)")
    parser.add_argument("--official-dtype", choices=DTYPES,
                        help="the official code's autocast dtype when it differs from --dtype (e.g. --dtype bf16 "
                             "--official-dtype fp16: each as it runs best / as its recipes run it)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each worker")
    parser.add_argument("--optimizer", choices=["adamw", "fairseq", "own"], default="adamw",
                        help="torch.optim.AdamW, or fairseq.optim.adam.Adam, for both; own: fairseq's adam for the "
                             "official code, the plugin's adam_fused (the same update, fused kernel) for the plugin")
    parser.add_argument("--checkpoint-activations", action="store_true",
                        help="the plugin with model.checkpoint_activations=true (its memory-saving option)")
    parser.add_argument("--fp16-adam-stats", action="store_true",
                        help="with --optimizer own: the plugin's adam_fused keeps its moments in fp16 "
                             "(optimizer.fp16_adam_stats, its memory-saving option)")
    parser.add_argument("--compile", action="store_true",
                        help="the plugin with model.torch_compile=true (compiled in the warm-up steps; use --warmup 3)")
    parser.add_argument("--json", help="write all raw measurements here")
    parser.add_argument("--worker", choices=["plugin", "official"], help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--fixture", help=argparse.SUPPRESS)
    parser.add_argument("--official-copy", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is None:
        args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
        unknown = sorted(set(args.workloads) - set(WORKLOADS))
        if unknown or not args.workloads:
            parser.error(f"unknown workloads {unknown}; choose from {', '.join(WORKLOADS)}")
        if args.device is None:
            import torch

            args.device = "cuda" if torch.cuda.is_available() else "cpu"
        if args.batch is None:
            args.batch = 12 if args.device == "cuda" else 1
    return args


def main() -> None:
    args = parse_args()
    if args.worker is not None:
        worker_main(args)
    else:
        runner_main(args)


if __name__ == "__main__":
    main()
