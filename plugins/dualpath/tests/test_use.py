"""A trained dual-path model through fusedembed embed / search: cross-modal text -> image."""

import io

import pytest
import torch

from fusedembed.cli import main
from fusedembed.embedfile import EmbeddingFile
from fusedembed.inference import torchvision_io


def png(test_set, i) -> bytes:
    from torchvision.io import encode_png

    with torchvision_io():
        return encode_png(torch.from_numpy(test_set.image_array(i).copy()).permute(2, 0, 1)).numpy().tobytes()


def run(*argv):
    out = io.StringIO()
    return main([str(a) for a in argv], out=out), out.getvalue()


@pytest.fixture(scope="module")
def model(tiny_recipe, installed_registries, tmp_path_factory):
    """(checkpoint, recipe) of the tiny dual-path recipe, two steps per stage (the commands'
    faithfulness, not the model's quality, is under test)."""
    from fusedembed.trainer import train

    run_dir = tmp_path_factory.mktemp("dualpath-use")
    with installed_registries.active():
        recipe = tiny_recipe("trainer.max_steps=2", "evaluators=[]", "trainer.best_metric=null")
        train(recipe, run_dir, out=lambda _: None)
    return run_dir / "last.pt", recipe


@pytest.fixture(scope="module")
def files(model, installed_registries, tmp_path_factory):
    """The test split's images and captions embedded by the command."""
    out = tmp_path_factory.mktemp("dualpath-files")
    with installed_registries.active():
        assert run("embed", model[0], "recipe:test", "--out", out / "images.safetensors", "--no-progress")[0] == 0
        assert run("embed", model[0], "recipe:test", "--modality", "text", "--out", out / "texts.npy",
                   "--no-progress")[0] == 0
    return EmbeddingFile(out / "images.safetensors"), EmbeddingFile(out / "texts.npy")


@pytest.fixture(scope="module")
def encoded(model, installed_registries):
    """What the dual-path evaluator computes for the test split (its own encoding path)."""
    from fusedembed_dualpath.evaluator import encode

    from fusedembed import build
    from fusedembed.config import stage_recipes
    from fusedembed.trainer import eval_loader, load_model

    checkpoint, recipe = model
    with installed_registries.active():
        staged = stage_recipes(recipe)[-1][1]            # last.pt holds the last stage's model
        test_set = build("dataset", staged.data.test, split="test")
        return (test_set, *encode(load_model(staged, checkpoint, device="cpu"), eval_loader(test_set, staged),
                                  device="cpu"))


def test_embedded_split_is_what_the_evaluator_scores(files, encoded):
    from fusedembed.metrics import retrieval_metrics

    images, texts = files
    test_set, img, txt, caption_to_image = encoded
    assert images.meta["output"] == "image_embedding" and texts.meta["output"] == "text_embedding"
    assert len(images) == test_set.num_images and len(texts) == test_set.num_captions
    torch.testing.assert_close(images[:], img, atol=1e-5, rtol=0)
    torch.testing.assert_close(texts[:], txt, atol=1e-5, rtol=0)
    assert retrieval_metrics(images[:], texts[:], caption_to_image) == retrieval_metrics(img, txt, caption_to_image)


def test_a_folder_of_the_same_images_embeds_the_same(model, files, encoded, registries, tmp_path):
    test_set = encoded[0]
    for i in range(test_set.num_images):
        (tmp_path / f"{i:02d}.png").write_bytes(png(test_set, i))
    assert run("embed", model[0], tmp_path, "--out", tmp_path / "f.npy", "--no-progress", "--workers", 0)[0] == 0
    torch.testing.assert_close(EmbeddingFile(tmp_path / "f.npy")[:], files[0][:], atol=1e-5, rtol=0)


def test_a_sentence_searches_the_images_cross_modally(model, files, encoded, registries, tmp_path):
    test_set, img, txt, caption_to_image = encoded
    caption = test_set.texts[7]
    code, out = run("search", files[0].path, caption, "-k", 5, "--html", tmp_path / "page.html")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == f"query 1 (text): {caption}"
    expected = (txt[7] @ img.T).topk(5)
    assert [line.split()[2] for line in lines[1:6]] == [f"recipe:test:{i}" for i in expected.indices.tolist()]
    assert [float(line.split()[1]) for line in lines[1:6]] == pytest.approx(expected.values.tolist(), abs=1e-4)
    page = (tmp_path / "page.html").read_text()
    assert page.count('src="data:image/png;base64,') == 5 and "&ldquo;" in page    # thumbnails from the dataset


def test_a_query_file_mixes_sentences_and_images(model, files, encoded, registries, tmp_path):
    test_set, img, txt, _ = encoded
    (tmp_path / "three.png").write_bytes(png(test_set, 3))
    (tmp_path / "queries.txt").write_text(f"{test_set.texts[0]}\n\nthree.png\n")
    code, out = run("search", files[0].path, tmp_path / "queries.txt", "-k", 1)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("query 1 (text):") and lines[2] == f"query 2 (image): {tmp_path / 'three.png'}"
    assert lines[3].split()[2] == "recipe:test:3"                       # an image finds itself
    assert lines[1].split()[2] == f"recipe:test:{int((txt[0] @ img.T).argmax())}"


def test_sentences_from_a_file_are_a_text_gallery_an_image_searches(model, encoded, registries, tmp_path):
    test_set = encoded[0]
    sentences = [test_set.texts[j] for j in (0, 5, 10)]
    (tmp_path / "s.txt").write_text("\n".join(sentences + [sentences[0], "!!!"]) + "\n")
    code, out = run("embed", model[0], tmp_path / "s.txt", "--out", tmp_path / "s.safetensors", "--no-progress")
    assert code == 0 and "note: 1 repeated line(s) embedded once" in out and "embedded 3 texts; skipped 1" in out
    assert (tmp_path / "s.safetensors.skipped.txt").read_text() == "!!!\tno word to embed\n"
    gallery = EmbeddingFile(tmp_path / "s.safetensors")
    assert gallery.ids == sentences and gallery.meta["output"] == "text_embedding"
    torch.testing.assert_close(gallery[:], encoded[2][[0, 5, 10]], atol=1e-5, rtol=0)
