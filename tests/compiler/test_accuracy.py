"""compiler.accuracy: top-1 on a hand-made case, batching, and the npz loader's errors."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.accuracy import evaluate_classification, load_npz_feeds, split_batches
from compiler.errors import OptionError

# Six samples whose input is the one-hot vector of the class a perfect model would predict; the
# "model" below echoes its input as scores, so its prediction for sample i is PREDICTED[i].
PREDICTED = np.array([0, 1, 2, 2, 1, 0])
LABELS = np.array([0, 1, 2, 0, 0, 0])  # samples 0, 1, 2 and 5 right: top-1 = 4/6
ONE_HOT = np.eye(3, dtype=np.float32)[PREDICTED]


def _echo_model(calls: list[int]):
    def run(feeds):
        calls.append(feeds["x"].shape[0])
        return [feeds["x"], np.zeros(1)]  # only the first output counts

    return run


@pytest.mark.parametrize("batch_size", [1, 2, 4, 6])
def test_top1_known_answer_at_any_batch_size(batch_size):
    calls: list[int] = []
    result = evaluate_classification(_echo_model(calls), {"x": ONE_HOT}, LABELS, batch_size, ["x"])
    assert result == {"top1": 4 / 6, "samples": 6}
    # Every call gets a full batch (the last one padded), e.g. 4 -> [4, 4] for 6 samples.
    assert calls == [batch_size] * -(-6 // batch_size)


def test_padding_samples_are_not_counted():
    # 5 samples at batch 4: the pad repeats sample 4 (predicted 1, label 0, wrong) three times;
    # counting any pad would lower the score below 3/5.
    calls: list[int] = []
    result = evaluate_classification(_echo_model(calls), {"x": ONE_HOT[:5]}, LABELS[:5], 4, ["x"])
    assert result == {"top1": 3 / 5, "samples": 5}


def test_input_names_select_arrays_and_extra_keys_are_ignored():
    data = {"x": ONE_HOT, "labels": LABELS, "other": np.zeros(6)}
    result = evaluate_classification(_echo_model([]), data, LABELS, input_names=["x"])
    assert result["top1"] == pytest.approx(4 / 6)


def test_evaluate_rejects_mismatched_or_bad_inputs():
    run = _echo_model([])
    with pytest.raises(OptionError, match="5 labels for 6 samples"):
        evaluate_classification(run, {"x": ONE_HOT}, LABELS[:5], 1, ["x"])
    with pytest.raises(OptionError, match="integer class indices"):
        evaluate_classification(run, {"x": ONE_HOT}, LABELS.astype(np.float32), 1, ["x"])
    with pytest.raises(OptionError, match=r"input\(s\) \['y'\]"):
        evaluate_classification(run, {"x": ONE_HOT}, LABELS, 1, ["y"])
    with pytest.raises(OptionError, match="no samples"):
        evaluate_classification(run, {"x": ONE_HOT[:0]}, LABELS[:0], 1, ["x"])
    with pytest.raises(OptionError, match="first output has shape"):
        evaluate_classification(lambda feeds: [np.zeros((2, 3))], {"x": ONE_HOT}, LABELS, 1, ["x"])


def test_split_batches_slices_along_dim_0():
    arrays = {"a": np.arange(10).reshape(5, 2), "b": np.arange(5)}
    batches = split_batches(arrays, 2)
    assert [b["a"].shape for b in batches] == [(2, 2), (2, 2), (1, 2)]
    np.testing.assert_array_equal(np.concatenate([b["b"] for b in batches]), arrays["b"])
    np.testing.assert_array_equal(batches[2]["a"], [[8, 9]])
    with pytest.raises(OptionError, match="different numbers of samples"):
        split_batches({"a": np.zeros(3), "b": np.zeros(4)}, 1)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(OptionError, match="positive integer"):
            split_batches(arrays, bad)


def test_load_npz_feeds_round_trip(tmp_path):
    path = tmp_path / "eval.npz"
    np.savez(path, x=ONE_HOT, labels=LABELS, unused=np.zeros(2))
    feeds, labels = load_npz_feeds(path, ["x"])
    assert list(feeds) == ["x"]
    np.testing.assert_array_equal(feeds["x"], ONE_HOT)
    np.testing.assert_array_equal(labels, LABELS)

    np.savez(tmp_path / "calib.npz", x=ONE_HOT)
    assert load_npz_feeds(tmp_path / "calib.npz", ["x"])[1] is None


def test_load_npz_feeds_missing_key_names_file_and_key(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, image=ONE_HOT)
    with pytest.raises(OptionError) as info:
        load_npz_feeds(path, ["x"])
    message = str(info.value)
    assert str(path) in message and "'x'" in message and "['image']" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("name", "write", "expected"),
    [
        ("text.npz", lambda p: p.write_text("not numpy"), "not a valid .npz file"),
        ("array.npy", lambda p: np.save(p, ONE_HOT), "single .npy array"),
        ("truncated.npz", None, "not a valid .npz file"),
        ("objects.npz", lambda p: np.savez(p, x=np.array([{}], dtype=object)), "not a valid .npz file"),
        ("absent.npz", lambda p: None, "no such data file"),
    ],
)
def test_load_npz_feeds_invalid_files(tmp_path, name, write, expected):
    path = tmp_path / name
    if write is None:  # a real archive cut in half
        np.savez(tmp_path / "whole.npz", x=ONE_HOT)
        data = (tmp_path / "whole.npz").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        write(path)
    with pytest.raises(OptionError, match=expected) as info:
        load_npz_feeds(path, ["x"])
    assert str(path) in str(info.value)
