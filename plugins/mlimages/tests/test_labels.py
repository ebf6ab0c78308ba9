"""Class dictionary, list format, and the hierarchy / co-occurrence label augmentation on a
small hand-made hierarchy."""

import re

import pytest
from fusedembed_mlimages.labels import (
    cooccurrence,
    main,
    parse_class_spec,
    read_class_dictionary,
    read_label_list,
    with_ancestors,
    with_cooccurring,
)

from fusedembed.data import DataError, SkipLog

DICTIONARY = "n0\t-1\tthing\nn1\t0\tanimal\nn2\t1\tdog\nn3\t-1\tplace\n"

# 0 thing            5 place
# +- 1 animal        +- 6 field
#    +- 2 dog        +- 7 beach
#    +- 3 cat
#    +- 4 horse
HIERARCHY = [("thing", -1), ("animal", 0), ("dog", 1), ("cat", 1), ("horse", 1), ("place", -1), ("field", 5),
             ("beach", 5)]


def write_hierarchy(path):
    path.write_text("category_index\tcategory_id\tindex_of_parent_category\tcategory name\n"
                    + "".join(f"{i}\tn{i:08d}\t{p}\t{name}\n" for i, (name, p) in enumerate(HIERARCHY)))
    return path


def test_class_dictionary_formats(tmp_path):
    (tmp_path / "d3.txt").write_text(DICTIONARY)
    (tmp_path / "d4.txt").write_text("category_index\tcategory_id\tindex_of_parent_category\tcategory name\n"
                                     + "".join(f"{i}\t{line}\n" for i, line in
                                               enumerate(DICTIONARY.splitlines())))
    for name in ("d3.txt", "d4.txt"):
        d = read_class_dictionary(tmp_path / name)
        assert d.names == ["thing", "animal", "dog", "place"] and d.parents == [-1, 0, 1, -1]
        assert d.ancestors(2) == [1, 0] and d.on_one_path(0, 2) and not d.on_one_path(2, 3)
    (tmp_path / "cycle.txt").write_text("a\t1\tx\nb\t0\ty\n")
    with pytest.raises(DataError, match="cycle.txt:line 1: class 0 is on a parent cycle"):
        read_class_dictionary(tmp_path / "cycle.txt")
    (tmp_path / "range.txt").write_text("a\t-1\tx\nb\t7\ty\n")
    with pytest.raises(DataError, match="range.txt:line 2: parent 7"):
        read_class_dictionary(tmp_path / "range.txt")
    (tmp_path / "cols.txt").write_text("a\t-1\tx\nb y\n")
    with pytest.raises(DataError, match="cols.txt:line 2: 1 tab-separated columns"):
        read_class_dictionary(tmp_path / "cols.txt")
    (tmp_path / "order.txt").write_text("0\tn0\t-1\tx\n2\tn1\t0\ty\n")
    with pytest.raises(DataError, match="order.txt:line 2: class index '2', expected 1"):
        read_class_dictionary(tmp_path / "order.txt")
    (tmp_path / "latin1.txt").write_bytes(b"n0\t-1\tthing\nn1\t0\tb\xe4r\n")
    with pytest.raises(DataError, match=r"latin1.txt:line 2: not UTF-8 text"):
        read_class_dictionary(tmp_path / "latin1.txt")


def test_the_scenes_hierarchy_reads_as_an_ml_images_dictionary(scenes_root):
    from fusedembed.data import scenes

    ds = scenes("train", root=scenes_root, num_images=8, image_size=32, progress=False, workers=1)
    d = read_class_dictionary(ds.directory / "hierarchy.txt")
    assert tuple(d.names) == tuple(ds.classes) and tuple(d.parents) == tuple(ds.class_parents)
    assert len(d) == 57


def test_list_lines_soft_confidences_and_errors(tmp_path):
    (tmp_path / "list.txt").write_text("im_0.jpg\thttps://example.org/x.jpg\t2:0.9\t3:1\n\nim_1.jpg 1:0.8   0\n"
                                       "im_2.jpg 1:high\nim_3.jpg 9\nim_4.jpg 1:1.5\nim_5.jpg 1 1:0.8\n")
    log = SkipLog(skip_bad=True)
    rows = list(read_label_list(tmp_path / "list.txt", 4, log))
    assert rows == [("im_0.jpg", {2: 0.9, 3: 1.0}, 1), ("im_1.jpg", {1: 0.8, 0: 1.0}, 3)]
    assert log.counts == {"malformed_line": 4}
    assert ["bad label field '1:high'" in log.messages[0], "class 9 out of range" in log.messages[1],
            "confidence 1.5" in log.messages[2], "listed twice" in log.messages[3]] == [True] * 4
    with pytest.raises(DataError, match=r"list.txt:line 4: bad label field '1:high'"):
        list(read_label_list(tmp_path / "list.txt", 4, SkipLog(skip_bad=False)))


def test_ancestors_take_the_highest_confidence_of_their_descendants(tmp_path):
    d = read_class_dictionary(write_hierarchy(tmp_path / "h.txt"))
    assert with_ancestors({2: 0.8, 3: 0.9, 7: 1.0}, d) == {2: 0.8, 3: 0.9, 7: 1.0, 1: 0.9, 0: 0.9, 5: 1.0}


def test_cooccurrence_is_n_ij_over_n_i_above_half_and_off_the_hierarchy_path(tmp_path):
    d = read_class_dictionary(write_hierarchy(tmp_path / "h.txt"))
    # Images with both label sets. horse (4): 4 images, 3 on a field (6) -> CO = 0.75, strong;
    # field: 5 images, 3 with a horse -> CO(field, horse) = 0.6, strong; dog (2): 4 images, 2 on
    # a beach -> 0.5, not > 0.5; animal (1) with dog: CO = 1 but on one path (ancestor) -> no.
    source = [{4: 1, 6: 1, 1: 1}, {4: 1, 6: 1, 1: 1}, {4: 1, 6: 0.9, 1: 1}, {4: 1, 1: 1},
              {2: 1, 7: 1, 1: 1}, {2: 1, 7: 1, 1: 1}, {2: 1, 1: 1}, {2: 1, 1: 1},
              {6: 1}, {6: 1}, {3: 0.6, 7: 0.4}]
    # beach (7): 2 images (the 0.4 one does not count), both with dog and animal -> CO = 1.
    strong = cooccurrence(source, d)
    assert strong == {4: {6: pytest.approx(0.75)}, 6: {4: pytest.approx(0.6), 1: pytest.approx(0.6)},
                      7: {2: 1.0, 1: 1.0}}
    # restricted: i from the animals (1-4), j from the places (5-7)
    assert cooccurrence(source, d, sources=set(range(1, 5)), targets={5, 6, 7}) == {4: {6: pytest.approx(0.75)}}
    # a label counts at min_confidence: with 0.95 the third image's field (0.9) no longer does
    assert cooccurrence(source, d, min_confidence=0.95, sources={4}, targets={6}) == {}
    assert with_cooccurring({4: 0.9, 2: 1.0}, strong) == {4: 0.9, 2: 1.0, 6: 0.9}


def test_augment_command_writes_the_list(tmp_path, capsys):
    write_hierarchy(tmp_path / "h.txt")
    (tmp_path / "source.txt").write_text("a.jpg 4 6\nb.jpg 4 6\nc.jpg 4\nd.jpg 3\n")
    (tmp_path / "list.txt").write_text("x.jpg\t4:0.9\ny.jpg\t2\tbad\nz.jpg\t7:0.8\t3\n")
    args = ["--dictionary", str(tmp_path / "h.txt"), "--out", str(tmp_path / "out.txt"),
            "--cooccurrence", str(tmp_path / "source.txt"), "--from-classes", "1-4", "--to-classes", "5-7"]
    assert main([str(tmp_path / "list.txt"), *args]) == 1                    # line 2 is malformed
    assert "list.txt:line 2: bad label field 'bad'" in capsys.readouterr().err
    with pytest.warns(RuntimeWarning, match="skipped 1 malformed_line"):
        assert main([str(tmp_path / "list.txt"), *args, "--skip-bad"]) == 0
    # x: horse -> its ancestors (animal, thing) and the field it co-occurs with (CO 2/3 > 0.5);
    # z: beach, cat and their ancestors; cat has no strong partner (d.jpg alone).
    assert (tmp_path / "out.txt").read_text().splitlines() == [
        "x.jpg\t0:0.9\t1:0.9\t4:0.9\t6:0.9", "z.jpg\t0:1\t1:1\t3:1\t5:0.8\t7:0.8"]
    assert "2 images, labels 3 -> 9, 1 strongly co-occurring pairs" in capsys.readouterr().out
    for option, value, expected in (("--threshold", "1", r"\[0, 1\)"), ("--min-confidence", "1.5", r"\[0, 1\]")):
        with pytest.raises(SystemExit):
            main([str(tmp_path / "list.txt"), *args, option, value])
        assert re.search(rf"{option}: expected a value in {expected}, got {float(value)}", capsys.readouterr().err)
    assert parse_class_spec("0-2, 5", 8) == {0, 1, 2, 5}
    with pytest.raises(ValueError, match="'9' is outside"):
        parse_class_spec("9", 8)
    (tmp_path / "classes.txt").write_text("0-2\n5\n")
    assert parse_class_spec(f"@{tmp_path / 'classes.txt'}", 8) == {0, 1, 2, 5}
    # A file that is not UTF-8 is named (was a bare UnicodeDecodeError); so is a missing one.
    (tmp_path / "latin1.txt").write_bytes(b"0-2 # gr\xfcn\n")
    with pytest.raises(DataError, match=r"latin1\.txt:line 1: not UTF-8 text: byte 8 \(0xfc\)"):
        parse_class_spec(f"@{tmp_path / 'latin1.txt'}", 8)
    with pytest.raises(DataError, match=r"none\.txt: file not found"):
        parse_class_spec(f"@{tmp_path / 'none.txt'}", 8)
