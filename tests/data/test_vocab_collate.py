import pytest
import torch

from fusedembed.data import PAD_ID, UNK_ID, Vocab, collate, tokenize


def test_tokenize():
    assert tokenize("Two small, RED circles: left of a man's hat!") == \
        ["two", "small", "red", "circles", "left", "of", "a", "man's", "hat"]
    assert tokenize("  ") == []


def test_tokenize_unicode_words():
    # Letters of any script are letters (they were cut at every non-ASCII character:
    # ['ein', 'hund', 'l', 'uft', 'ber', 'die', 'stra', 'e']).
    assert tokenize("Ein Hund läuft über die Straße") == ["ein", "hund", "läuft", "über", "die", "straße"]
    assert tokenize("Ein Hund la\u0308uft") == tokenize("Ein Hund läuft")      # NFKC: one spelling
    assert tokenize("ÉLAN, ΣΟΦΊΑ и Москва") == ["élan", "σοφία", "и", "москва"]
    assert tokenize("कुत्ता दौड़ रहा है") == ["कुत्ता", "दौड़", "रहा", "है"]      # vowel signs are marks
    assert tokenize("كلب يركض") == ["كلب", "يركض"]
    assert tokenize("개가 달린다") == ["개가", "달린다"]                          # Hangul has spaces
    assert tokenize("man’s ＲＥＤ hat_2") == ["man's", "red", "hat", "2"]
    # CJK has no spaces: one token per character (it gave no token at all).
    assert tokenize("一只狗在草地上奔跑。") == ["一", "只", "狗", "在", "草", "地", "上", "奔", "跑"]
    assert tokenize("a 3D 狗が走る!") == ["a", "3d", "狗", "が", "走", "る"]
    assert tokenize("") == [] and tokenize("!!! …") == []


def test_vocab_build_order_and_ids():
    v = Vocab.build([["b", "a", "c"], ["b", "a"], ["b"], ["d"]], min_count=1)
    assert v.itos == ["<pad>", "<unk>", "b", "a", "c", "d"]     # count desc, then alphabetical
    assert (v.pad_id, v.unk_id) == (PAD_ID, UNK_ID) == (0, 1)
    assert v.encode(["a", "zzz"]) == [3, UNK_ID]
    assert v.decode([3, 2, 0, 0]) == ["a", "b"]
    assert Vocab.build([["b", "a", "c"], ["b", "a"]], min_count=2).itos == \
        ["<pad>", "<unk>", "a", "b"]
    assert len(Vocab.build([["x", "y", "y"]], max_size=1)) == 3


def test_vocab_save_load(tmp_path):
    v = Vocab.build([["hello", "world", "hello"]])
    v.save(tmp_path / "v.json")
    assert Vocab.load(tmp_path / "v.json") == v
    (tmp_path / "bad.json").write_text('["a", "b"]')
    with pytest.raises(ValueError, match="bad.json.*not a fusedembed vocabulary"):
        Vocab.load(tmp_path / "bad.json")


def item(n_tok, n_obj, inst):
    return {"image": torch.full((3, 4, 4), float(inst)), "tokens": torch.arange(2, 2 + n_tok),
            "word_objects": torch.zeros(n_tok, dtype=torch.long),
            "boxes": torch.ones(n_obj, 4), "object_groups": torch.arange(n_obj),
            "instance": inst, "caption": f"c{inst}", "labels": torch.ones(3)}


def test_collate_pads_and_truncates():
    batch = [item(3, 1, 0), item(5, 3, 1)]
    out = collate(batch)
    assert out["tokens"].tolist() == [[2, 3, 4, 0, 0], [2, 3, 4, 5, 6]]
    assert out["lengths"].tolist() == [3, 5]
    assert out["word_objects"].tolist() == [[0, 0, 0, -1, -1], [0] * 5]
    assert out["boxes"].shape == (2, 3, 4) and out["boxes"][0, 1:].abs().sum() == 0
    assert out["object_groups"].tolist() == [[0, -1, -1], [0, 1, 2]]
    assert out["num_objects"].tolist() == [1, 3]
    assert out["instance"].tolist() == [0, 1] and out["instance"].dtype == torch.long
    assert out["caption"] == ["c0", "c1"] and out["image"].shape == (2, 3, 4, 4)
    fixed = collate(batch, pad_to=4)
    assert fixed["tokens"].tolist() == [[2, 3, 4, 0], [2, 3, 4, 5]]
    assert fixed["lengths"].tolist() == [3, 4]


def test_collate_errors():
    with pytest.raises(ValueError, match="empty batch"):
        collate([])
    a, b = item(2, 1, 0), item(2, 1, 1)
    del b["caption"]
    with pytest.raises(ValueError, match="item 1 has keys"):
        collate([a, b])
    c = item(2, 1, 1)
    c["image"] = torch.zeros(3, 5, 5)
    with pytest.raises(ValueError, match="'image' has different shapes"):
        collate([item(2, 1, 0), c])
