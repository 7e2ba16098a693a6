"""The front end and datasets reproduce the official implementation's outputs (tests/golden)."""

import torch

from eat_plugin.data.datasets import FbankDataset, LabelledFbankDataset
from eat_plugin.data.fbank import FbankFrontEnd
from eat_plugin.data.manifest import read_label_descriptors


def assert_fbank_close(actual, expected, tolerance):
    """The golden README's bound: element-wise atol plus a tight bound on the mean difference."""
    torch.testing.assert_close(actual, expected, atol=tolerance["atol"], rtol=tolerance["rtol"])
    assert (actual - expected).abs().mean() <= tolerance["mean_atol"]


def test_front_end_reproduces_official_fbank(golden_dir):
    ref = torch.load(golden_dir / "fbank_ref.pt", map_location="cpu", weights_only=False)
    assert ref["config"]["norm_mean_std"] == (-4.268, 4.569) and ref["config"]["target_length"] == 128
    front_end = FbankFrontEnd(target_length=128, norm="audioset")
    assert len(ref["fbank"]) == 13  # 12 clips at 16 kHz + one at 44.1 kHz (resampled)
    for relpath, expected in ref["fbank"].items():
        actual = front_end.from_file(golden_dir / "data" / "wavs" / relpath)
        assert actual.shape == expected.shape == (1, 128, 128)
        assert_fbank_close(actual, expected, ref["tolerance"])


def test_pretraining_dataset_reproduces_official_items(golden_data, golden_dir):
    ref = torch.load(golden_dir / "fbank_ref.pt", map_location="cpu", weights_only=False)
    dataset = FbankDataset(golden_data / "all.tsv", target_length=128, norm="audioset")
    batch = dataset.collater([dataset[i] for i in range(len(dataset))])
    assert set(batch["net_input"]) == {"source", "id"}
    assert batch["net_input"]["source"].shape == (13, 1, 128, 128)
    for i in range(len(dataset)):
        relpath = dataset.manifest.rows[i].relpath
        assert_fbank_close(batch["net_input"]["source"][i], ref["fbank"][relpath], ref["tolerance"])


def test_classification_batch_reproduces_official_batch(golden_data, golden_dir):
    ref = torch.load(golden_dir / "model_ref.pt", map_location="cpu", weights_only=False)["finetune"]["input"]
    descriptors = read_label_descriptors(golden_data / "label_descriptors.csv")
    dataset = LabelledFbankDataset(
        golden_data / "eval.tsv", golden_data / "eval.lbl", descriptors, multi_label=False,
        target_length=128, norm="esc50",  # the golden fine-tuning run sets esc50_eval: true
    )
    batch = dataset.collater([dataset[i] for i in range(4)])
    assert set(batch["net_input"]) == {"imgs", "id", "label"}
    assert torch.equal(batch["id"], ref["ids"])
    assert torch.equal(batch["net_input"]["label"], ref["label"])
    torch.testing.assert_close(batch["net_input"]["imgs"], ref["imgs"], atol=7e-3, rtol=0)
    assert (batch["net_input"]["imgs"] - ref["imgs"]).abs().mean() <= 2e-4
