import json

import numpy as np
import pytest
import torch

from fusedembed.embedfile import EmbeddingFile, EmbeddingFileError, EmbeddingWriter

META = {"model": "/m/best.pt", "model_stamp": "1-2", "modality": "image", "source": {"kind": "folder", "root": "/x"}}
IDS = ["a.png", "sub/ü b.jpg", "tab\there", "new\nline", ""]


def rows(n, d=6, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["e.safetensors", "e.npy"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_rows_stream_through_chunks_and_read_back(tmp_path, name, dtype):
    x = rows(5)
    writer = EmbeddingWriter(tmp_path / name, META, dtype=dtype, chunk_rows=2)
    writer.add(IDS[:3], x[:3], "image_embedding")
    assert len(writer.chunks) == 1                       # two rows went to disk, one is buffered
    writer.add(IDS[3:], x[3:], "image_embedding")
    assert writer.close() == 5 and not writer.parts.exists()
    f = EmbeddingFile(tmp_path / name)
    assert f.ids == IDS and f.shape == (5, 6) and f.meta["output"] == "image_embedding" and f.dtype == dtype
    assert f.meta["source"] == META["source"] and f[1:3].dtype == getattr(torch, dtype)
    torch.testing.assert_close(f[:].float(), x.to(getattr(torch, dtype)).float())


def test_the_safetensors_file_is_what_the_library_reads(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    writer = EmbeddingWriter(tmp_path / "e.safetensors", META, chunk_rows=3)
    writer.add(IDS, rows(5), "embedding")
    writer.close()
    tensors = load_file(str(tmp_path / "e.safetensors"))
    assert torch.equal(tensors["embeddings"], rows(5))
    offsets, data = tensors["id_offsets"].tolist(), bytes(tensors["ids"].tolist())
    assert [data[a:b].decode() for a, b in zip(offsets, offsets[1:])] == IDS
    with safe_open(str(tmp_path / "e.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["fusedembed"])["format"] == "fusedembed-embeddings"


def test_an_interrupted_run_resumes_and_a_later_one_appends(tmp_path):
    out = tmp_path / "e.safetensors"
    first = EmbeddingWriter(out, META, chunk_rows=2)
    first.add(IDS[:2], rows(2), "image_embedding")       # one chunk on disk, then the run dies
    assert not out.exists() and len(first.chunks) == 1
    second = EmbeddingWriter(out, META, chunk_rows=2)
    assert second.done == set(IDS[:2]) and second.resumed == 2
    second.add(IDS[2:4], rows(2, seed=1), "image_embedding")
    assert second.close() == 4
    third = EmbeddingWriter(out, META)
    assert third.done == set(IDS[:4]) and third.resumed == 0
    third.add(IDS[4:], rows(1, seed=2), "image_embedding")
    assert third.close() == 5
    f = EmbeddingFile(out)
    assert f.ids == IDS
    torch.testing.assert_close(f[:], torch.cat([rows(2), rows(2, seed=1), rows(1, seed=2)]))


def test_rows_of_another_model_or_source_are_refused(tmp_path):
    out = tmp_path / "e.npy"
    w = EmbeddingWriter(out, META)
    w.add(IDS[:1], rows(1), "image_embedding")
    w.close()
    for key, value in (("model_stamp", "9-9"), ("source", {"kind": "folder", "root": "/y"}), ("modality", "text")):
        with pytest.raises(EmbeddingFileError, match=f"holds embeddings with {key} = .*choose another --out"):
            EmbeddingWriter(out, {**META, key: value})
    with pytest.raises(EmbeddingFileError, match="holds embeddings with dtype = 'float32'"):
        EmbeddingWriter(out, META, dtype="float16")
    w = EmbeddingWriter(out, META)
    with pytest.raises(ValueError, match="embeddings of dim 3, the file's are 6"):
        w.add(["z"], rows(1, d=3), "image_embedding")
    with pytest.raises(ValueError, match="NaN/inf embeddings"):
        w.add(["z"], torch.full((1, 6), float("nan")), "image_embedding")


def test_bad_files_are_named(tmp_path):
    with pytest.raises(EmbeddingFileError, match="must end in .safetensors or .npy"):
        EmbeddingWriter(tmp_path / "e.pt", META)
    with pytest.raises(EmbeddingFileError, match="does not exist"):
        EmbeddingFile(tmp_path / "none.npy")
    np.save(tmp_path / "plain.npy", np.zeros((2, 3)))
    with pytest.raises(EmbeddingFileError, match="not a fusedembed embedding file"):
        EmbeddingFile(tmp_path / "plain.npy")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(EmbeddingFileError, match="junk.safetensors is not a fusedembed embedding file"):
        EmbeddingFile(tmp_path / "junk.safetensors")
