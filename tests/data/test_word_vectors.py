import numpy as np
import pytest
import torch

from fusedembed.data import DataError, Vocab, embedding_matrix, read_word_vectors


def _binary(path, words):
    with open(path, "wb") as f:
        f.write(f"{len(words)} 3\n".encode())
        for w, v in words.items():
            f.write(w.encode() + b" " + np.asarray(v, dtype="<f4").tobytes() + b"\n")


def test_text_binary_and_headerless_files_read_alike(tmp_path):
    words = {"red": [1.0, 2.0, 3.0], "Circle": [4.0, 5.0, 6.5]}
    (tmp_path / "h.txt").write_text("2 3\n" + "".join(f"{w} {' '.join(map(str, v))}\n" for w, v in words.items()))
    (tmp_path / "n.txt").write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in words.items()))
    _binary(tmp_path / "b.bin", words)
    for name in ("h.txt", "n.txt", "b.bin"):
        got = read_word_vectors(tmp_path / name)
        assert sorted(got) == ["Circle", "red"], name
        np.testing.assert_array_equal(got["Circle"], np.float32([4.0, 5.0, 6.5]))
    assert list(read_word_vectors(tmp_path / "b.bin", wanted={"red"})) == ["red"]
    assert sorted(read_word_vectors(tmp_path / "b.bin", wanted={"circle"}, lower=True)) == ["circle"]


def test_embedding_matrix_rows_and_errors(tmp_path):
    (tmp_path / "v.txt").write_text("circle 1 1 1\nCircle 2 2 2\nred 3 3 3\n")
    vocab = Vocab(["<pad>", "<unk>", "circle", "red", "square"])
    weight, found = embedding_matrix(vocab, tmp_path / "v.txt", 3)
    assert found == 2 and weight.shape == (5, 3)
    torch.testing.assert_close(weight[2], torch.ones(3))        # its own vector beats "Circle"
    assert (weight[0] == 0).all() and weight[4].abs().max() < 0.1
    with pytest.raises(ValueError, match="dim is 4 but .* has 3-d vectors"):
        embedding_matrix(vocab, tmp_path / "v.txt", 4)
    with pytest.raises(FileNotFoundError, match="is not a file"):
        read_word_vectors(tmp_path / "missing.txt")
    (tmp_path / "bad.txt").write_text("red 1 x 3\n")
    with pytest.raises(DataError, match="line 1: expected a word and numbers"):
        read_word_vectors(tmp_path / "bad.txt")
