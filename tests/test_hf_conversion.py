"""fairseq <-> Hugging Face layout (eat_plugin.hf, scripts/convert_hf.py) and the safetensors reader/writer
(eat_plugin.safetensors_io)."""

import json
import struct

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from eat_plugin.checkpoint import load_checkpoint
from eat_plugin.hf import (
    eat_config,
    fairseq_to_hf,
    hf_shapes,
    hf_to_fairseq,
    key_map,
    load_hf,
    save_hf,
)
from eat_plugin.models.mae_image_classification import MaeImageClassificationModel
from eat_plugin.safetensors_io import read_safetensors, save_safetensors
from helpers import (finetune_config, load_script, load_with_fairseq, official_checkpoint, reference_features,
                     save_pretrained)
from helpers.official import write_class_table

convert_hf = load_script("convert_hf")

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}
HF_TO_FAIRSEQ = {  # written out from reference §9.3, independently of eat_plugin.hf
    "model.local_encoder.": "modality_encoders.IMAGE.local_encoder.",
    "model.extra_tokens": "modality_encoders.IMAGE.extra_tokens",
    "model.fixed_positional_encoder.": "modality_encoders.IMAGE.fixed_positional_encoder.",
    "model.pre_norm.": "modality_encoders.IMAGE.context_encoder.norm.",
    "model.blocks.": "blocks.",
}


def as_fairseq_names(hf_state):
    out = {}
    for key, value in hf_state.items():
        prefix = next(p for p in HF_TO_FAIRSEQ if key.startswith(p) or key.startswith(p.rstrip(".")))
        out[HF_TO_FAIRSEQ[prefix] + key[len(prefix):]] = value
    return out


@pytest.fixture
def pretrained(tmp_path):
    save_pretrained(tmp_path / "pretrain.pt", seed=3)
    return load_checkpoint(tmp_path / "pretrain.pt")


@pytest.fixture
def finetuned(tmp_path, pretrained):
    """A fine-tuned tiny model (5 classes, non-trivial head) as a fairseq checkpoint dict, and the model."""
    cfg = finetune_config(tmp_path / "pretrain.pt")
    model = MaeImageClassificationModel(cfg).eval()
    with torch.no_grad():
        for param in (model.fc_norm.weight, model.fc_norm.bias, model.head.bias):
            param.normal_()
    model_cfg = {**OmegaConf.to_container(cfg, enum_to_str=True), "_name": "mae_image_classification"}
    task = {"_name": "mae_image_classification", "data": "unused", "target_length": 128,
            "audio_mae": True}
    return {"cfg": {"model": model_cfg, "task": task}, "model": model.state_dict()}, model


def clips(seed=0):
    return torch.randn(2, 1, 128, 128, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ safetensors


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_safetensors_round_trip(tmp_path, dtype):
    torch_dtype = DTYPES[dtype]
    base = torch.arange(-12, 12).reshape(4, 6)
    tensors = {"matrix": (base * 0.37 if torch_dtype.is_floating_point else base * 10**12).to(torch_dtype),
               "transposed": base.t().to(torch_dtype),  # not contiguous
               "scalar": torch.tensor(3).to(torch_dtype), "empty": torch.zeros(0, 5, dtype=torch_dtype)}
    save_safetensors(tensors, tmp_path / "t.safetensors", {"format": "pt", "note": "x"})
    loaded, metadata = read_safetensors(tmp_path / "t.safetensors")
    assert metadata == {"format": "pt", "note": "x"}
    assert set(loaded) == set(tensors)
    for name, value in tensors.items():
        assert loaded[name].dtype == torch_dtype and loaded[name].shape == value.shape, name
        assert torch.equal(loaded[name], value), name


def test_safetensors_byte_layout_by_hand(tmp_path):
    tensors = {"b": torch.tensor([1.0, -2.0], dtype=torch.float16), "a": torch.tensor([[1, 2], [3, -4]]),
               "c": torch.tensor([0.5], dtype=torch.bfloat16)}
    save_safetensors(tensors, tmp_path / "t.safetensors", {"format": "pt"})
    raw = (tmp_path / "t.safetensors").read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + size])
    data = raw[8 + size:]
    assert size % 8 == 0 and header.pop("__metadata__") == {"format": "pt"}
    assert header == {"a": {"dtype": "I64", "shape": [2, 2], "data_offsets": [0, 32]},
                      "b": {"dtype": "F16", "shape": [2], "data_offsets": [32, 36]},
                      "c": {"dtype": "BF16", "shape": [1], "data_offsets": [36, 38]}}
    assert len(data) == 38
    assert data[0:32] == struct.pack("<4q", 1, 2, 3, -4)
    assert data[32:36] == np.array([1.0, -2.0], dtype="<f2").tobytes()
    assert data[36:38] == struct.pack("<f", 0.5)[2:]  # bf16 = the high half of the f32


def test_safetensors_reads_a_file_written_by_hand(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [3], "data_offsets": [8, 20]},
                         "i": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}).encode()  # unpadded
    body = struct.pack("<q", 7) + struct.pack("<3f", 1.5, -2.0, 3.25)
    (tmp_path / "h.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + body)
    tensors, metadata = read_safetensors(tmp_path / "h.safetensors")
    assert metadata == {} and tensors["i"].tolist() == [7] and tensors["w"].tolist() == [1.5, -2.0, 3.25]


def test_safetensors_refusals(tmp_path):
    path = tmp_path / "bad.safetensors"

    def write(header, body=b""):
        encoded = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + body)

    write({"x": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}}, bytes(8))
    with pytest.raises(ValueError, match="'x' has dtype 'F64'; supported: F32, F16, BF16, I64"):
        read_safetensors(path)
    write({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8))
    with pytest.raises(ValueError, match=r"'x' \(F32 \[4\]\) needs 16 bytes"):
        read_safetensors(path)
    write({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8))
    with pytest.raises(ValueError, match="not contiguous"):
        read_safetensors(path)
    path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(ValueError, match="exceeds the file size"):
        read_safetensors(path)
    with pytest.raises(ValueError, match="cannot store 'x'"):
        save_safetensors({"x": torch.zeros(2, dtype=torch.float64)}, path)


# -------------------------------------------------------------------------------------------- layout


def test_base_structure_hf_keys_and_shapes_are_the_spec_list():
    """§9.3 keys for EAT-base (12 blocks, 768 wide, 6144 position rows), fine-tuned on AudioSet."""
    blocks = [f"model.blocks.{i}.{name}.{w}" for i in range(12)
              for name in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2") for w in ("weight", "bias")]
    expected = ["model.extra_tokens", "model.local_encoder.proj.weight", "model.local_encoder.proj.bias",
                "model.fixed_positional_encoder.positions", "model.pre_norm.weight", "model.pre_norm.bias", *blocks]
    assert list(key_map(12, finetuned=False).values()) == expected
    head = ["model.fc_norm.weight", "model.fc_norm.bias", "model.head.weight", "model.head.bias"]
    assert list(key_map(12, finetuned=True).values()) == expected + head
    shapes = hf_shapes(eat_config({"model_variant": "finetune"}))  # EATConfig defaults = EAT-base, 527 classes
    assert list(shapes) == expected + head
    assert (shapes["model.fixed_positional_encoder.positions"], shapes["model.local_encoder.proj.weight"],
            shapes["model.blocks.11.attn.qkv.weight"], shapes["model.blocks.0.mlp.fc1.weight"],
            shapes["model.head.weight"]) == ((1, 6144, 768), (768, 1, 16, 16), (2304, 768), (3072, 768), (527, 768))


def test_official_format_base_checkpoint_converts_to_the_spec_keys():
    state = official_checkpoint("base")  # 12 blocks, 6-layer decoder, width 64 (test_checkpoint_interchange)
    hf, config = fairseq_to_hf(state)
    assert list(hf) == list(key_map(12, finetuned=False).values())
    assert (config["depth"], config["embed_dim"], config["max_length"], config["img_size"]) == (12, 64, 64, [128, 128])
    x = clips()
    torch.testing.assert_close(reference_features(as_fairseq_names(hf), x), reference_features(state["model"], x))


# ---------------------------------------------------------------------------------------- round trips


def test_pretrained_round_trip(tmp_path, pretrained):
    hf, config = fairseq_to_hf(pretrained)
    assert config["model_variant"] == "pretrain" and config["model_type"] == "eat"
    save_hf(tmp_path / "hf", hf, config)
    hf2, config2 = load_hf(tmp_path / "hf")
    assert config2 == config and list(hf2) == sorted(hf)
    assert all(torch.equal(hf2[k], v) for k, v in hf.items())

    back = hf_to_fairseq(hf2, config2, template_cfg=pretrained["cfg"])
    original = pretrained["model"]
    assert set(back["model"]) == set(original)
    for key, value in original.items():
        if key != "_ema" and ".decoder." not in key:
            assert torch.equal(back["model"][key], value), key  # the student, bit for bit
    assert set(back["model"]["_ema"]) == set(original["_ema"])
    assert all(torch.equal(t, original[k]) for k, t in back["model"]["_ema"].items())  # teacher = student
    image = back["cfg"]["model"]["modalities"]["image"]
    assert image["decoder"] == pretrained["cfg"]["model"]["modalities"]["image"]["decoder"]  # from the template

    for name, state in (("templated", back), ("default", hf_to_fairseq(hf2, config2))):
        torch.save(state, tmp_path / f"{name}.pt")
        loaded, cfg, _ = load_with_fairseq(tmp_path / f"{name}.pt", data=str(tmp_path))
        reference, _, _ = load_with_fairseq(tmp_path / "pretrain.pt", data=str(tmp_path))
        with torch.no_grad():
            expected = reference.extract_features(clips(), remove_extra_tokens=False)["x"]
            assert torch.equal(loaded.extract_features(clips(), remove_extra_tokens=False)["x"], expected), name
        assert fairseq_to_hf(state)[1] == config  # and back again
    assert cfg.model.ema_anneal_end_step == 100000 and cfg.model.modalities.image.decoder.decoder_layers == 6  # §6.1


def test_finetuned_round_trip(tmp_path, finetuned):
    state, model = finetuned
    hf, config = fairseq_to_hf(state)
    assert (config["model_variant"], config["num_classes"]) == ("finetune", 5)
    assert list(hf)[-4:] == ["model.fc_norm.weight", "model.fc_norm.bias", "model.head.weight", "model.head.bias"]
    data = write_class_table(tmp_path / "data", num_classes=5)
    x = clips(1)
    with torch.no_grad():
        expected = model(x)
    for name, template in (("templated", state["cfg"]), ("default", None)):
        back = hf_to_fairseq(hf, config, template_cfg=template)
        assert set(back["model"]) == set(state["model"])
        assert all(torch.equal(back["model"][k], v) for k, v in state["model"].items())
        assert back["cfg"]["model"]["pretrained_model_args"]["model"]["_name"] == "data2vec_multi"
        torch.save(back, tmp_path / f"{name}.pt")
        loaded, _, task = load_with_fairseq(tmp_path / f"{name}.pt", data=str(data))
        with torch.no_grad():
            assert torch.equal(loaded(x), expected), name
        hf2, config2 = fairseq_to_hf(back)
        assert config2 == config and all(torch.equal(hf2[k], v) for k, v in hf.items())


def test_top_level_head_keys_are_accepted(finetuned):
    hf, config = fairseq_to_hf(finetuned[0])
    moved = {k.replace("model.fc_norm.", "fc_norm.").replace("model.head.", "head."): v for k, v in hf.items()}
    back = hf_to_fairseq(moved, config)
    assert torch.equal(back["model"]["head.weight"], hf["model.head.weight"])


def test_pytorch_model_bin_is_read(tmp_path, pretrained):
    hf, config = fairseq_to_hf(pretrained)
    (tmp_path / "hf").mkdir()
    torch.save(hf, tmp_path / "hf" / "pytorch_model.bin")
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    hf2, config2 = load_hf(tmp_path / "hf")
    assert config2 == config and all(torch.equal(hf2[k], v) for k, v in hf.items())


# ------------------------------------------------------------------------------------------ refusals


def test_missing_unexpected_and_misshapen_keys_are_listed(pretrained, finetuned):
    hf, config = fairseq_to_hf(pretrained)
    broken = dict(hf)
    del broken["model.blocks.1.attn.qkv.weight"]
    broken["model.decoder.proj.weight"] = torch.zeros(1)
    broken["model.pre_norm.bias"] = torch.zeros(7)
    with pytest.raises(ValueError) as err:
        hf_to_fairseq(broken, config)
    message = str(err.value)
    assert "missing keys (1): model.blocks.1.attn.qkv.weight" in message
    assert "unexpected keys (1): model.decoder.proj.weight" in message
    assert "wrong shapes (1): model.pre_norm.bias: (7,), expected (32,)" in message

    state = {**pretrained, "model": {**pretrained["model"], "blocks.0.extra.weight": torch.zeros(1)}}
    del state["model"]["blocks.1.mlp.fc2.bias"]
    listed = r"(?s)missing keys \(1\): blocks.1.mlp.fc2.bias.*unexpected keys \(1\): blocks.0.extra.weight"
    with pytest.raises(ValueError, match=listed):
        fairseq_to_hf(state)
    with pytest.raises(ValueError, match="labels apply to fine-tuned models only"):
        hf_to_fairseq(hf, config, label_ids=["a"])
    ft_hf, ft_config = fairseq_to_hf(finetuned[0])
    with pytest.raises(ValueError, match="2 labels given but the model has 5 classes"):
        hf_to_fairseq(ft_hf, ft_config, label_ids=["a", "b"])


def test_unsupported_configs_are_refused(pretrained, finetuned):
    listed = r"(?s)model_type=.ast.*patch_size=10.*img_size\[0\]=1000 is not a positive multiple of 16"
    with pytest.raises(ValueError, match=listed):
        eat_config({"model_type": "ast", "patch_size": 10, "img_size": [1000, 128]})
    state, _ = finetuned
    model_cfg = {**state["cfg"]["model"], "prediction_mode": "MEAN_POOLING"}
    mean_pooled = {**state, "cfg": {**state["cfg"], "model": model_cfg}}
    with pytest.raises(ValueError, match="prediction_mode=MEAN_POOLING .the HF model pools the CLS token"):
        fairseq_to_hf(mean_pooled)
    with pytest.raises(ValueError, match="no 'cfg'"):
        fairseq_to_hf({"model": pretrained["model"]})


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_round_trip_with_labels(tmp_path, finetuned, capsys):
    state, model = finetuned
    torch.save(state, tmp_path / "ft.pt")
    labels = tmp_path / "class_labels_indices.csv"
    labels.write_text("index,mid,display_name\n" + "".join(f'{i},/m/x{i},"Sound {i}"\n' for i in range(5)))
    assert convert_hf.main(["to-hf", str(tmp_path / "ft.pt"), str(tmp_path / "hf")]) == 0
    assert "fine-tuned EAT (2 blocks, width 32, 5 classes), 34 tensors" in capsys.readouterr().out
    out = tmp_path / "converted" / "eat.pt"
    assert convert_hf.main(["from-hf", str(tmp_path / "hf"), str(out), "--labels", str(labels)]) == 0
    summary = capsys.readouterr().out
    assert summary.startswith(f"wrote {out}: fine-tuned EAT") and "label_descriptors.csv" in summary
    loaded, _, task = load_with_fairseq(out)  # task.data is the output folder: no override needed
    assert task.label_descriptors.names == [f"Sound {i}" for i in range(5)]
    with torch.no_grad():
        assert torch.equal(loaded(clips(2)), model(clips(2)))


def test_cli_errors_and_help(tmp_path, capsys):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    assert convert_hf.main(["from-hf", str(tmp_path / "hf"), str(tmp_path / "x.pt")]) == 1
    assert "error:" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()
    assert convert_hf.main(["to-hf", str(tmp_path / "missing.pt"), str(tmp_path / "out")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        convert_hf.main(["--help"])
    assert exit_info.value.code == 0 and "from-hf" in capsys.readouterr().out


def test_official_golden_checkpoints(tmp_path, golden_dir):
    """The real official checkpoints: the pre-trained one converts both ways; the fine-tuned one pools by
    MEAN_POOLING, which the HF model cannot express, and is refused with that reason."""
    state = load_checkpoint(golden_dir / "pretrain" / "checkpoint_last.pt")
    hf, config = fairseq_to_hf(state)
    assert (config["depth"], config["embed_dim"], config["num_heads"], config["img_size"]) == (3, 48, 4, [128, 128])
    torch.save(hf_to_fairseq(hf, config, template_cfg=state["cfg"]), tmp_path / "back.pt")
    loaded, _, _ = load_with_fairseq(tmp_path / "back.pt", data=str(tmp_path))
    original, _, _ = load_with_fairseq(golden_dir / "pretrain" / "checkpoint_last.pt", data=str(tmp_path))
    with torch.no_grad():
        assert torch.equal(loaded.extract_features(clips(), remove_extra_tokens=False)["x"],
                           original.extract_features(clips(), remove_extra_tokens=False)["x"])
    with pytest.raises(ValueError, match="prediction_mode=MEAN_POOLING"):
        fairseq_to_hf(load_checkpoint(golden_dir / "finetune" / "checkpoint_last.pt"))
