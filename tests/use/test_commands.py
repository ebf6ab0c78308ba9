"""fusedembed embed / search / serve with a tiny single-modality model on the embedded scenes."""

import base64
import io
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch

from fusedembed.cli import main
from fusedembed.embedfile import EmbeddingFile

SIZE = 16


def run(*argv):
    out = io.StringIO()
    return main([str(a) for a in argv], out=out), out.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, scenes_root, installed_registries):
    """(run dir, exported dir, test split) of an image_embedding model trained two steps."""
    from fusedembed import build
    from fusedembed.config import validate
    from fusedembed.trainer import export, train

    scenes = {"name": "scenes", "root": scenes_root, "num_images": 32, "image_size": SIZE, "view": "image",
              "progress": False, "workers": 1}
    run_dir = tmp_path_factory.mktemp("image-model")
    with installed_registries.active():
        recipe = validate({
            "model": {"name": "image_embedding", "embed_dim": 8, "num_classes": 32,
                      "backbone": {"name": "tiny_cnn", "width": 4, "depth": 2}},
            "losses": [{"name": "cross_entropy", "inputs": {"label": "instance"}}],
            "data": {"train": scenes, "test": {**scenes, "num_images": 12, "train_images": 32}},
            "trainer": {"max_steps": 2, "batch_size": 8, "lr": 0.1, "log_every": 1},
        }, check=True)
        train(recipe, run_dir, out=lambda _: None)
        export(run_dir / "last.pt", run_dir / "exported")
        test_set = build("dataset", recipe.data.test, split="test")
    return run_dir, run_dir / "exported", test_set


def write_images(folder, test_set, indices):
    from torchvision.io import encode_png

    from fusedembed.inference import torchvision_io

    for i in indices:
        path = folder / ("deep/er" if i % 2 else "") / f"scene{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image = torch.from_numpy(test_set.image_array(i).copy()).permute(2, 0, 1)
        with torchvision_io():
            path.write_bytes(encode_png(image).numpy().tobytes())


def reference_embeddings(run_dir, test_set, indices):
    """What the model gives for the dataset's own images, outside the command."""
    from fusedembed.inference import load_embedder

    embedder = load_embedder(run_dir / "last.pt", device="cpu")
    return embedder.embed_batch({"image": torch.stack([test_set.load_image(i) for i in indices])}, "image")[1]


@pytest.fixture
def folder(tmp_path, trained):
    images = tmp_path / "images"
    write_images(images, trained[2], range(6))
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (images / "notes.txt").write_text("not an image")
    (images / ".hidden").mkdir()
    write_images(images / ".hidden", trained[2], [6])
    return images


def ids_of(i):
    return f"{'deep/er/' if i % 2 else ''}scene{i}.png"


def test_embed_a_folder_lists_and_skips_the_corrupt_image(registries, trained, folder, tmp_path):
    run_dir, _, test_set = trained
    out = tmp_path / "g.safetensors"
    code, text = run("embed", run_dir / "last.pt", folder, "--out", out, "--no-progress", "--workers", 1,
                     "--batch-size", 4)
    assert code == 0, text
    assert "embedded 6 images; skipped 1" in text and f"{out}: 6 embeddings of dim 8 (embedding)" in text
    skipped = (tmp_path / "g.safetensors.skipped.txt").read_text().splitlines()
    assert len(skipped) == 1 and skipped[0].startswith("broken.jpg\tcannot decode image")
    f = EmbeddingFile(out)
    assert sorted(f.ids) == sorted(ids_of(i) for i in range(6))       # recursive, hidden folders and .txt left out
    assert f.meta["source"] == {"kind": "folder", "root": str(folder.resolve())} and f.meta["output"] == "embedding"
    order = [int(re.search(r"scene(\d+)", i).group(1)) for i in f.ids]
    torch.testing.assert_close(f[:], reference_embeddings(run_dir, test_set, order), atol=1e-6, rtol=0)


def test_embed_resumes_appends_and_survives_an_interruption(registries, trained, folder, tmp_path, monkeypatch):
    from fusedembed.embed import embed, make_inputs
    from fusedembed.inference import Embedder, load_embedder

    run_dir, _, test_set = trained
    out = tmp_path / "g.npy"
    real, calls = Embedder.embed_batch, []

    def dies_at_the_second_batch(self, batch, modality):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, batch, modality)

    monkeypatch.setattr(Embedder, "embed_batch", dies_at_the_second_batch)
    embedder = load_embedder(run_dir / "last.pt", device="cpu")
    with pytest.raises(KeyboardInterrupt):      # the first batch is one chunk on disk
        embed(embedder, make_inputs(str(folder), embedder), out, batch_size=2, chunk_rows=2, progress=False)
    assert not out.exists() and len(list((tmp_path / ".g.npy.parts").iterdir())) == 1
    assert len(calls) == 2
    monkeypatch.setattr(Embedder, "embed_batch", real)
    code, text = run("embed", run_dir / "last.pt", folder, "--out", out, "--no-progress", "--workers", 0)
    # The first batch held broken.jpg (skipped) and one image (kept in the chunk).
    assert code == 0 and "embedded 5 images, 1 more from the interrupted run" in text
    assert len(EmbeddingFile(out)) == 6 and not (tmp_path / ".g.npy.parts").exists()
    code, text = run("embed", run_dir / "last.pt", folder, "--out", out, "--no-progress")
    assert code == 0 and "embedded 0 images, 6 already in the file" in text
    write_images(folder, test_set, [7])
    code, text = run("embed", run_dir / "last.pt", folder, "--out", out, "--no-progress")
    assert code == 0 and "embedded 1 images, 6 already in the file" in text
    f = EmbeddingFile(out)
    order = [int(re.search(r"scene(\d+)", i).group(1)) for i in f.ids]
    assert sorted(order) == [0, 1, 2, 3, 4, 5, 7]
    torch.testing.assert_close(f[:], reference_embeddings(run_dir, test_set, order), atol=1e-6, rtol=0)


def test_embed_a_dataset_split_with_an_exported_model(registries, trained, tmp_path):
    run_dir, exported, test_set = trained
    code, text = run("embed", exported, "recipe:test", "--out", tmp_path / "t.npy", "--dtype", "float16",
                     "--no-progress")
    assert code == 0 and "embedded 12 images" in text
    f = EmbeddingFile(tmp_path / "t.npy")
    assert f.ids == [f"recipe:test:{i}" for i in range(12)] and f[:].dtype == torch.float16
    torch.testing.assert_close(f[:].float(), reference_embeddings(run_dir, test_set, range(12)).half().float())


def test_search_by_image_prints_ids_and_scores_and_writes_a_page(registries, trained, folder, tmp_path):
    run_dir = trained[0]
    out = tmp_path / "g.safetensors"
    assert run("embed", run_dir / "last.pt", folder, "--out", out, "--no-progress")[0] == 0
    code, text = run("search", out, folder / "deep/er/scene3.png", "-k", 3, "--html", tmp_path / "page.html")
    assert code == 0, text
    lines = text.splitlines()
    assert lines[0] == f"query 1 (image): {folder / 'deep/er/scene3.png'}"
    rank, score, id_ = lines[1].split()
    assert (rank, id_) == ("1", "deep/er/scene3.png") and float(score) == pytest.approx(1.0, abs=1e-5)
    assert [line.split()[0] for line in lines[1:4]] == ["1", "2", "3"] and lines[4] == f"wrote {tmp_path / 'page.html'}"
    page = (tmp_path / "page.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4                   # the query and its 3 results
    assert "deep/er/scene3.png" in page and "#3 &middot;" in page


def test_search_errors_are_named(registries, trained, folder, tmp_path, capsys):
    run_dir = trained[0]
    out = tmp_path / "g.safetensors"
    assert run("embed", run_dir / "last.pt", folder, "--out", out, "--no-progress")[0] == 0
    assert run("search", out, "a red circle")[0] == 1
    assert "the model does not take text input" in capsys.readouterr().err
    assert run("search", out, "missing.png")[0] == 1
    assert "looks like an image path, but there is no such file" in capsys.readouterr().err
    assert run("search", tmp_path / "nope.safetensors", "x")[0] == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (("{model}", "nope:test"), "unknown dataset 'nope'"),
    (("{model}", "recipe:val"), "the model's recipe has no data.val"),
    (("{model}", "no/such/folder"), "neither an existing folder or file nor NAME:SPLIT"),
    (("{tmp}", "recipe:test"), "lacks model.safetensors, config.yaml"),
    (("{tmp}/x.pt", "recipe:test"), "does not exist"),
])
def test_embed_errors_are_named(registries, trained, tmp_path, capsys, argv, message):
    argv = [a.format(model=trained[0] / "last.pt", tmp=tmp_path) for a in argv]
    assert run("embed", *argv, "--out", tmp_path / "o.npy")[0] == 1
    assert message in capsys.readouterr().err


@pytest.fixture
def server(registries, trained, folder, tmp_path):
    """A live server on 127.0.0.1 (a free port), stopped after the test."""
    pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    from fusedembed.inference import load_embedder
    from fusedembed.serve import create_app

    out = tmp_path / "g.safetensors"
    assert run("embed", trained[0] / "last.pt", folder, "--out", out, "--no-progress")[0] == 0
    app = create_app(load_embedder(trained[0] / "last.pt", device="cpu"), EmbeddingFile(out),
                     max_request_bytes=64 * 1024)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "the server did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    srv.should_exit = True
    thread.join(timeout=10)
    sock.close()
    assert not thread.is_alive()


def post(url, body=None, raw=None):
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_serve_embeds_and_searches_over_http(server, folder):
    image = base64.b64encode((folder / "scene2.png").read_bytes()).decode()
    status, body = post(f"{server}/search", {"image": image, "k": 2})
    assert status == 200 and [h["id"] for h in body["results"][0]][0] == "scene2.png"
    assert body["results"][0][0]["score"] == pytest.approx(1.0, abs=1e-5) and len(body["results"][0]) == 2
    status, body = post(f"{server}/embed", {"images": [image, image]})
    assert status == 200 and body["output"] == "embedding" and body["dim"] == 8 and len(body["embeddings"]) == 2
    with urllib.request.urlopen(f"{server}/health", timeout=10) as response:
        assert json.loads(response.read())["items"] == 6


@pytest.mark.parametrize("body,raw,status,message", [
    ({"image": "%%%"}, None, 400, "images[0] is not base64"),
    ({"image": base64.b64encode(b"junk").decode()}, None, 400, "cannot decode the image"),
    ({"texts": ["a red circle"]}, None, 400, "does not take text input"),
    ({"image": "", "k": 0}, None, 422, "k: Input should be greater than or equal to 1"),
    ({"imgs": []}, None, 422, "imgs: Extra inputs are not permitted"),
    ({}, None, 400, "give texts or images"),
    (None, b"{not json", 422, "not valid JSON"),
    (None, b"x" * (64 * 1024 + 1), 413, "request body over 65536 bytes"),
])
def test_serve_answers_bad_requests_with_json_errors(server, body, raw, status, message):
    got, answer = post(f"{server}/search", body, raw)
    assert got == status and message in answer["error"]


class Noise(torch.utils.data.Dataset):
    """A registered dataset with its own defaults (images only, no file_transform)."""

    def __init__(self, split: str, size: int = 5):
        self.split, self.size = split, size

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        return {"image": torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(i)), "index": i}


def test_embed_a_registered_dataset_split_and_show_it(trained, tmp_path):
    from torchvision.io import encode_png

    from fusedembed.inference import load_embedder, torchvision_io
    from fusedembed.plugins import PluginManager

    regs = PluginManager(env={}).registries
    regs["dataset"].add("noise", Noise, plugin="t")
    with regs.active():
        code, text = run("embed", trained[0] / "last.pt", "t/noise:test", "--out", tmp_path / "n.npy", "--no-progress")
        assert code == 0 and "embedded 5 images" in text
        f = EmbeddingFile(tmp_path / "n.npy")
        assert f.ids == [f"t/noise:test:{i}" for i in range(5)]
        assert f.meta["source"]["config"] == {"name": "t/noise"} and f.meta["source"]["split"] == "test"
        with torchvision_io():
            query = encode_png(Noise("test")[2]["image"].mul(255).round().to(torch.uint8))
        (tmp_path / "q.png").write_bytes(query.numpy().tobytes())
        code, text = run("search", tmp_path / "n.npy", tmp_path / "q.png", "-k", 2, "--html", tmp_path / "p.html")
        assert code == 0 and text.splitlines()[1].split()[2] == "t/noise:test:2"
        # Thumbnails of a dataset's items come from the dataset again.
        assert (tmp_path / "p.html").read_text().count('src="data:image/png;base64,') == 3

    expected = load_embedder(trained[0] / "last.pt", device="cpu").embed_batch(
        {"image": torch.stack([Noise("test")[i]["image"] for i in range(5)])}, "image")[1]
    torch.testing.assert_close(f[:], expected, atol=1e-6, rtol=0)


@pytest.mark.cuda
def test_embed_on_the_gpu_matches_the_cpu_within_bf16(registries, trained, folder, tmp_path):
    run_dir = trained[0]
    for device in ("cpu", "cuda"):
        assert run("embed", run_dir / "last.pt", folder, "--out", tmp_path / f"{device}.npy", "--device", device,
                   "--no-progress")[0] == 0
    cpu, gpu = EmbeddingFile(tmp_path / "cpu.npy"), EmbeddingFile(tmp_path / "cuda.npy")
    assert cpu.ids == gpu.ids
    torch.testing.assert_close(gpu[:], cpu[:], atol=2e-2, rtol=0)        # bf16 autocast on the GPU


def test_image_files_are_prepared_as_the_recipes_dataset_prepares_its_images(trained):
    from fusedembed.inference import load_embedder

    embedder = load_embedder(trained[0] / "last.pt", device="cpu")
    big = torch.rand(3, 40, 40)
    assert embedder.image_transform(big).shape == (3, SIZE, SIZE)       # scenes: file_transform resizes

    class Normalising(Noise):                # a dataset reading files applies its transform to them
        def transform(self, image):
            return image * 2 - 1

    embedder._reference, embedder._image_transform = Normalising("test"), None
    torch.testing.assert_close(embedder.image_transform(big), big * 2 - 1)
    embedder._reference, embedder._image_transform = Noise("test"), None
    with pytest.warns(RuntimeWarning, match="Noise has neither file_transform nor transform: image files are resized "
                                            "to 16x16"):
        assert embedder.image_transform(big).shape == (3, SIZE, SIZE)


def test_images_of_mixed_sizes_embed_as_each_alone(trained):
    # a recipe may keep test images at their own size (dual-path's authors' test images)
    from fusedembed.inference import load_embedder

    embedder = load_embedder(trained[0] / "last.pt", device="cpu")
    embedder._image_transform = lambda im: im                 # sizes kept as given
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 16, 16, generator=g), torch.rand(3, 24, 20, generator=g),
              torch.rand(3, 16, 16, generator=g)]
    _, together = embedder.embed_images(images)
    alone = torch.cat([embedder.embed_images([im])[1] for im in images])
    torch.testing.assert_close(together, alone)


def test_embed_batches_hold_one_image_size_each_and_keep_failed_items_apart():
    from fusedembed.data import collate
    from fusedembed.embed import _Collate

    items = [{"i": 0, "fields": {"image": torch.zeros(3, 16, 16)}}, {"i": 1, "fields": {"image": torch.ones(3, 24, 20)}},
             {"i": 2, "error": "cannot decode"}, {"i": 3, "fields": {"image": torch.full((3, 16, 16), 2.0)}}]
    batch = _Collate(collate)(items)
    assert [(index, tuple(b["image"].shape)) for index, b in batch["groups"]] == [
        ([0, 3], (2, 3, 16, 16)), ([1], (1, 3, 24, 20))]
    assert batch["groups"][0][1]["image"][1].eq(2.0).all() and batch["bad"] == [(2, "cannot decode")]
