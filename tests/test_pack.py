"""hpcbench-data pack: an image folder -> a shard set, resumable, under a cluster job's limits."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import mixed_size_folder, run_cli, write_image_folder
from PIL import Image

from hpcbench.data.jpeg_errors import jpeg_components
from hpcbench.data.pack import PackSettings, pack
from hpcbench.data.shards import MANIFEST, ShardSet
from hpcbench.errors import DataError


def test_pack_writes_webdataset_shards_that_webdataset_reads_and_the_index_locates(tmp_path):
    import webdataset

    folder = mixed_size_folder(tmp_path / "folder")
    shards = pack(folder, tmp_path / "shards", PackSettings(images_per_shard=8))
    assert [s.images for s in shards.splits["train"]] == [8, 8, 8, 6] and shards.image_size is None
    index = shards.index("train")
    # Class-interleaved: every prefix is class-balanced, like data.limit_train takes from the folder.
    assert index.label[:9].tolist() == [0, 1, 2] * 3
    samples = list(webdataset.WebDataset([str(tmp_path / "shards" / s.name) for s in shards.splits["train"]],
                                         shardshuffle=False))
    assert len(samples) == 30
    for position, sample in enumerate(samples):
        assert int(sample["cls"]) == index.label[position]
        shard = (tmp_path / "shards" / shards.splits["train"][index.shard[position]].name).read_bytes()
        assert shard[index.offset[position]:index.offset[position] + index.length[position]] == sample["jpg"]
    jpeg_source = (folder / "train" / "class0" / "00000.jpg").read_bytes()
    assert samples[0]["jpg"] == jpeg_source  # JPEGs are stored byte for byte
    assert samples[1]["jpg"][:3] == b"\xff\xd8\xff"  # the PNG became a JPEG

    small = pack(folder, tmp_path / "small", PackSettings(images_per_shard=100, max_side=32))
    widths, heights = small.index("train").width, small.index("train").height
    assert max(np.maximum(widths, heights)) == 32 and small.digest != shards.digest


def test_an_interrupted_pack_resumes_keeps_finished_shards_and_ends_as_a_fresh_pack(tmp_path):
    folder = mixed_size_folder(tmp_path / "folder")
    # The last image in pack order is unreadable: the pack stops at the last train shard.
    last = folder / "train" / "class2" / "00029.jpg"
    good = last.read_bytes()
    last.write_bytes(b"not an image")
    out = tmp_path / "shards"
    with pytest.raises(DataError, match=f"cannot read image {last}"):
        pack(folder, out, PackSettings(images_per_shard=8))
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "train").glob("*.tar")}
    assert len(finished) == 3 and not (out / MANIFEST).exists()
    with pytest.raises(DataError, match="packing did not finish"):
        ShardSet(out)
    with pytest.raises(DataError, match="other settings .*images_per_shard 8 -> 5"):
        pack(folder, out, PackSettings(images_per_shard=5))

    last.write_bytes(good)
    resumed = pack(folder, out, PackSettings(images_per_shard=8))
    assert {name: (out / "train" / name).stat().st_mtime_ns for name in finished} == finished  # not rewritten
    assert resumed.digest == pack(folder, tmp_path / "fresh", PackSettings(images_per_shard=8)).digest


def test_hpcbench_data_pack_command_line(tmp_path):
    folder = mixed_size_folder(tmp_path / "folder")
    done = run_cli(["pack", str(folder), str(tmp_path / "out"), "--images-per-shard", "16", "--workers", "2"],
                   tmp_path, module="hpcbench.data.pack")
    assert done.returncode == 0, done.stderr
    assert "packed" in done.stderr and ShardSet(tmp_path / "out").digest in done.stderr
    missing = run_cli(["pack", str(tmp_path / "nowhere"), str(tmp_path / "out2")], tmp_path, module="hpcbench.data.pack")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "does not exist" in missing.stderr


def test_a_pack_resumed_after_an_image_was_removed_equals_a_fresh_pack_of_what_remains(tmp_path):
    """Removing an image shifts every later one to another position: shards an earlier pack
    finished hold other images now and are written again (kept by their size alone, one image
    would be packed twice and another lost)."""
    folder = mixed_size_folder(tmp_path / "folder")
    last = folder / "train" / "class2" / "00029.jpg"
    good = last.read_bytes()
    last.write_bytes(b"not an image")  # the pack stops at the last train shard
    out = tmp_path / "shards"
    with pytest.raises(DataError):
        pack(folder, out, PackSettings(images_per_shard=8))
    (folder / "train" / "class0" / "00000.jpg").unlink()  # a bad image taken out before the rerun
    last.write_bytes(good)
    resumed = pack(folder, out, PackSettings(images_per_shard=8))
    assert resumed.digest == pack(folder, tmp_path / "fresh", PackSettings(images_per_shard=8)).digest
    assert len(resumed.index("train")) == 29


def test_cmyk_jpegs_are_stored_as_rgb_and_other_jpegs_byte_for_byte(tmp_path):
    """nvJPEG does not decode CMYK JPEGs (ImageNet's train set holds about 22)."""
    rgb = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    folder = write_image_folder(tmp_path / "folder", {"train": [(rgb, 0), (rgb, 1)], "test": [(rgb, 0), (rgb, 1)]})
    cmyk = folder / "train" / "class1" / "00001.jpg"
    Image.fromarray(rgb).convert("CMYK").save(cmyk, quality=95)
    assert jpeg_components(cmyk.read_bytes()) == 4
    shards = pack(folder, tmp_path / "shards", PackSettings(images_per_shard=8))
    reader_bytes = (shards.root / "train" / "shard-000000.tar").read_bytes()
    index = shards.index("train")
    stored = [reader_bytes[index.offset[i]:index.offset[i] + index.length[i]] for i in range(2)]
    assert stored[0] == (folder / "train" / "class0" / "00000.jpg").read_bytes()
    assert jpeg_components(stored[1]) == 3 and Image.open(io.BytesIO(stored[1])).mode == "RGB"


def test_a_stray_file_in_val_is_no_image_but_loose_images_are_refused(tmp_path):
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    folder = write_image_folder(tmp_path / "folder", {"train": [(rgb, 0), (rgb, 1)], "val": [(rgb, 0), (rgb, 1)]})
    (folder / "val" / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n")
    assert len(pack(folder, tmp_path / "shards", PackSettings()).index("test")) == 2
    Image.fromarray(rgb).save(folder / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DataError, match="holds images directly: sort them into class folders"):
        pack(folder, tmp_path / "other", PackSettings())


def test_pack_uses_the_cores_the_job_may_use_by_default(tmp_path):
    """In a Slurm job of one core on a node of many, --workers defaults to that one core."""
    folder = mixed_size_folder(tmp_path / "folder")
    result = subprocess.run([sys.executable, "-m", "hpcbench.data.pack", "pack", str(folder), str(tmp_path / "out"),
                             "--images-per-shard", "8"], capture_output=True, text=True, timeout=120,
                            preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    assert result.returncode == 0, result.stderr
    assert "6 shard(s) to write with 1 worker process(es)" in result.stderr
