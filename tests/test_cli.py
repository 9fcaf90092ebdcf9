"""The `clip-jax` command: zero-shot inference, evaluation and exports, checked against the
model computed directly, transformers and open_clip (HF_HUB_OFFLINE=1)."""

import importlib.metadata
import importlib.util
import json
import os
import re
from pathlib import Path
import subprocess
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
pytest.importorskip("open_clip")  # the test extra; without it these tests skip
pytest.importorskip("torch")
pytest.importorskip("transformers")
import open_clip  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402

import clip_jax  # noqa: E402
from clip_jax import cli  # noqa: E402
from clip_jax.errors import ConfigError  # noqa: E402
from clip_jax.training.checkpoints import Checkpointer  # noqa: E402
from clip_jax.models import create_model, l2_normalize  # noqa: E402
from clip_jax.data.preprocess import preprocess  # noqa: E402
from clip_jax.data.tokenizer import default_tokenizer, tokenize  # noqa: E402
from clip_jax_data.synthetic_shapes import render  # noqa: E402
from clip_jax.configs import base  # noqa: E402


def make_workdir(path, preset, data_dir=None, seed=1, table=None):
    """A workdir holding one checkpoint of a random model, as training writes it (trained on
    an `image_text_table` with the options `table`, if given)."""
    module, variables = create_model(preset, rng=seed)
    config = base.get_config(preset)
    config.model.dtype = "float32"
    if table:
        config.data.dataset = "image_text_table"
        config.data.table.update(table)
    if data_dir:
        config.data.data_dir = str(data_dir)
        config.data.synthetic.update(image_size=32, num_train=40, num_validation=16, num_test=24)
    checkpointer = Checkpointer(str(path), 1, 1, asynchronous=False)
    checkpointer.save(7, {"step": np.int32(7), **variables},
                      {"step": 7, "model": module.config.to_dict(), "config": config.to_dict()},
                      force=True)
    checkpointer.close()
    return module, variables


@pytest.fixture(scope="module")
def vit_workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vit")
    module, variables = make_workdir(path, "test-vit", tmp_path_factory.mktemp("tfds"))
    return str(path), module, variables


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_console_script_is_declared():
    (script,) = [e for e in importlib.metadata.entry_points(group="console_scripts")
                 if e.name == "clip-jax"]
    assert script.value == "clip_jax.cli:console"


def test_zero_shot_prints_top_labels_with_probabilities(vit_workdir, tmp_path, capsys):
    workdir, module, variables = vit_workdir
    rng = np.random.default_rng(0)
    scenes = render.sample_scenes(rng, np.array([0, 7, 20, 41]), 48, 0.0)
    folder = tmp_path / "images"
    folder.mkdir()
    paths = []
    upright = list(render.render(scenes, 48, rng))
    for i, image in enumerate(upright):
        paths.append(str((folder if i < 3 else tmp_path) / f"{i}.png"))
        exif = Image.Exif()
        exif[0x0112] = 6 if i == 1 else 1  # stored sideways: shown rotated 90 degrees clockwise
        Image.fromarray(np.rot90(image, 1) if i == 1 else image).save(paths[-1], exif=exif)
    (folder / "notes.txt").write_text("not an image")
    labels = ["red circle", "orange square", "green triangle", "purple star"]
    code, out, _ = run(capsys, "zero-shot", "--model", workdir, "--labels", ",".join(labels),
                       "--top", "2", str(folder), paths[3])
    assert code == 0
    lines = out.strip().splitlines()
    assert [line.split(": ")[0] for line in lines] == paths  # folder sorted, then the file

    images = preprocess(upright, module.config)  # EXIF orientation honoured
    img = l2_normalize(module.apply(variables, images, method=module.encode_image))
    txt = l2_normalize(module.apply(variables, tokenize([f"a photo of a {x}." for x in labels], 16),
                                    method=module.encode_text))
    logits = np.exp(variables["params"]["logit_scale"]) * np.asarray(img) @ np.asarray(txt).T
    probs = np.asarray(jax.nn.softmax(logits, axis=1))
    for line, row in zip(lines, probs):
        best = np.argsort(-row)[:2]
        expected = ", ".join(f"{labels[k]} {row[k]:.1%}" for k in best)
        assert line.split(": ", 1)[1] == expected


def test_zero_shot_errors_are_one_line(vit_workdir, tmp_path, capsys):
    workdir = vit_workdir[0]
    code, _, err = run(capsys, "zero-shot", "--model", workdir, "--labels", "cat,dog",
                       str(tmp_path / "missing.png"))
    assert code == 2 and err.strip() == f"error: No image file or folder at '{tmp_path}/missing.png'."
    code, _, err = run(capsys, "zero-shot", "--model", str(tmp_path / "nope"), "--labels",
                       "cat,dog", str(tmp_path))
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "zero-shot", "--model", workdir, "--labels", "cat", str(tmp_path))
    assert code == 2 and "needs at least 2" in err


def test_outputs_that_are_files_of_another_kind_are_refused_first(vit_workdir, tmp_path,
                                                                  capsys):
    """`eval --output FILE` failed with a traceback after the whole evaluation, and `index
    --output photo.jpg` embedded the folder and replaced the photo with the index. Both are
    one line (exit 2) before any model loads (here: a model path that does not exist); the
    photo is left as it was."""
    from PIL import Image

    photo = tmp_path / "holiday.jpg"
    Image.new("RGB", (8, 8), (200, 30, 30)).save(photo)
    before = photo.read_bytes()
    missing = str(tmp_path / "no-model")
    code, _, err = run(capsys, "eval", vit_workdir[0], "--output", str(photo))
    assert code == 2 and err.strip() == (f"error: --output {str(photo)!r} is a file; pass a "
                                         "directory (created if missing).")
    code, _, err = run(capsys, "index", str(tmp_path), "--model", missing, "--output", str(photo))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"index file {str(photo)!r} (--output) exists and is not a clip_jax image" in err
    assert photo.read_bytes() == before
    code, _, err = run(capsys, "index", str(tmp_path), "--model", missing, "--output",
                       str(tmp_path))
    assert code == 2 and "is a folder; pass the index file to write" in err
    code, _, err = run(capsys, "index", str(tmp_path), "--model", missing, "--output",
                       str(photo / "x.npz"))
    assert code == 2 and f"lies under {str(photo)!r}, which is a file" in err
    # A folder it cannot write to (even as root): one line, as the other outputs say it (a
    # PermissionError traceback after the model loaded, trial BA).
    code, _, err = run(capsys, "index", str(tmp_path), "--model", missing, "--output",
                       "/proc/clip_jax/x.npz")
    assert (code, err) == (2, "error: The index file's folder '/proc/clip_jax' is not writable "
                              "(No such file or directory); pass a directory you can write "
                              "to.\n")
    # Export commands: into a file, under a file, or into a folder of other files (here a
    # config.json that is not an export, and a training workdir) is one line, nothing written.
    notes = tmp_path / "mydocs"
    notes.mkdir()
    (notes / "config.json").write_text("my notes")
    for command in ("export-hf", "export-open-clip"):
        for out in (photo, photo / "sub", notes, Path(vit_workdir[0])):
            code, _, err = run(capsys, command, missing, str(out))
            assert code == 2 and err.startswith("error: OUTPUT_DIR "), (command, out, err)
    assert (notes / "config.json").read_text() == "my notes" and photo.read_bytes() == before


def test_eval_uses_the_workdirs_training_config(vit_workdir, tmp_path, capsys):
    workdir = vit_workdir[0]
    code, out, _ = run(capsys, "eval", workdir, "--evaluators", "zero_shot", "--batch-size", "8",
                       "--output", str(tmp_path))
    assert code == 0
    assert f"{workdir} (step 7)" in out and "zero_shot/heldout" in out
    (record,) = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert record["step"] == 7
    assert set(record) == {"step", "zero_shot/heldout/top1", "zero_shot/heldout/top5",
                           "zero_shot/heldout/mean_per_class_recall"}
    assert f"top1 {record['zero_shot/heldout/top1']:.4f}" in out
    # results.csv says which checkpoint and compute dtype (the run's recorded one) gave them.
    import pandas as pd

    from clip_jax.training import checkpoints

    frame = pd.read_csv(tmp_path / "results.csv")
    trained_in = checkpoints.read_meta(workdir)["config"]["model"]["dtype"]
    assert (frame.step == 7).all() and (frame.dtype == trained_in).all()
    assert f"(step 7), {trained_in} compute" in out


def write_captioned_pngs(folder, count, shape, seed, captions):
    """`count` random PNGs `0.png`, ... in `folder`; rows (file, caption) for each caption
    template (formatted with the image's index), image by image."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(
            folder / f"{i}.png")
        rows += [(f"{i}.png", template.format(i)) for template in captions]
    return rows


def recalls_of(module, variables, folder, rows):
    """numpy-side retrieval metrics of the model's own embeddings of the rows' images (in
    file order) and captions: the reference a retrieval evaluation must reproduce."""
    from clip_jax.evaluation.metrics import retrieval_metrics

    files = list(dict.fromkeys(file for file, _ in rows))
    images = preprocess([Image.open(folder / file) for file in files], module.config)
    img, txt, _ = module.apply(variables, images, tokenize([caption for _, caption in rows],
                                                           module.config.context_length))
    return retrieval_metrics(np.asarray(l2_normalize(img)), np.asarray(l2_normalize(txt)),
                             np.asarray([files.index(file) for file, _ in rows]))


def test_eval_retrieval_table_is_built_alone_with_its_own_columns(tmp_path, capsys):
    """A run trained on a table with other column names and its own train/validation tables:
    `--retrieval captions.csv` (open_clip's header) builds only that table's test split, and
    its recalls equal those of the model's embeddings computed directly."""
    import pandas as pd

    train_csv = tmp_path / "train.csv"
    train_csv.write_text("img,caption\n")
    workdir, data_dir = tmp_path / "run", tmp_path / "tfds"
    module, variables = make_workdir(workdir, "test-vit", data_dir, table=dict(
        name="training", train_path=str(train_csv), validation_path=str(train_csv),
        image_column="img", caption_column="caption"))
    rows = write_captioned_pngs(tmp_path, 5, (40, 48), 0,
                                ("photo number {}", "picture {}, again"))
    pd.DataFrame(rows, columns=["filepath", "title"]).to_csv(tmp_path / "captions.csv",
                                                            index=False)
    for images_kept in (5, 3):  # the table, then the same file edited: evaluated afresh
        pd.DataFrame(rows[:2 * images_kept], columns=["filepath", "title"]).to_csv(
            tmp_path / "captions.csv", index=False)
        output = tmp_path / f"out{images_kept}"
        code, out, err = run(capsys, "eval", str(workdir), "--retrieval",
                             str(tmp_path / "captions.csv"), "--batch-size", "4", "--output",
                             str(output))
        assert code == 0, err
        (record,) = [json.loads(line) for line in open(output / "metrics.jsonl")]
        want = recalls_of(module, variables, tmp_path, rows[:2 * images_kept])
        for name, value in want.items():
            assert record[f"retrieval/captions/{name}"] == pytest.approx(value, abs=1e-6), name
        row = next(line for line in out.splitlines() if "| retrieval | captions | i2t_r1 |" in line)
        assert row.endswith(f"| test | {images_kept} |  |  |")  # no classes (it said 0)
    built = sorted((data_dir / "image_text_table").glob("captions_*/1.2.0"))
    assert len(built) == 2
    # Each built table read by its TFDS name, as a run names it, is the table's data: it was
    # refused as "built with different options" (every option "changed" to None), with the
    # advice to delete it (trial CO).
    wanted = {n: recalls_of(module, variables, tmp_path, rows[:2 * n]) for n in (5, 3)}
    matched = []
    for folder in built:
        name = f"image_text_table/{folder.parent.name}"
        output = tmp_path / f"by_name_{folder.parent.name}"
        code, _, err = run(capsys, "eval", str(workdir), "--retrieval", f"{name}@test",
                           "--data-dir", str(data_dir), "--batch-size", "4", "--output",
                           str(output))
        assert code == 0, err
        (record,) = [json.loads(line) for line in open(output / "metrics.jsonl")]
        prefix = f"retrieval/{name.replace('/', '_')}_test/"
        matched += [n for n, want in wanted.items() if all(
            record[prefix + k] == pytest.approx(v, abs=1e-6) for k, v in want.items())]
    assert sorted(matched) == [3, 5]
    options = json.loads((built[0] / "build_options.json").read_text())["table"]
    assert (options["train_path"], options["validation_path"]) == ("", "")
    assert (options["image_column"], options["caption_column"]) == ("filepath", "title")
    from clip_jax.cli import eval_sources

    (tmp_path / "other.csv").write_text("filepath,words\nx.png,y\n")
    with pytest.raises(ConfigError, match=r"no caption column .*'words'.*set --caption-key"):
        eval_sources._retrieval(base.get_config("test-vit"), str(tmp_path / "other.csv"))
    config = base.get_config("test-vit")
    eval_sources._retrieval(config, str(tmp_path / "other.csv"), caption_key="words")
    assert config.eval.retrieval.other.caption_key == "words"
    # LAION's upper-case header: found case aside ("no caption column", trial CK)
    (tmp_path / "laion.csv").write_text("filepath,TEXT\nx.png,y\n")
    from clip_jax.data import labelled as labelled_data

    assert labelled_data.pick_column(["URL", "TEXT"], "", eval_sources.CAPTION_COLUMNS,
                                     "caption", "laion.csv") == "TEXT"
    eval_sources._retrieval(config, str(tmp_path / "laion.csv"))
    # Paths written relative to the working folder, not the table's: the advice was a config
    # field (data.table.image_root) that no eval flag sets (trial s43V).
    (tmp_path / "sub").mkdir()
    pd.DataFrame(rows[:2], columns=["filepath", "title"]).to_csv(tmp_path / "sub" / "c.csv",
                                                                index=False)
    code, _, err = run(capsys, "eval", str(workdir), "--retrieval", str(tmp_path / "sub" / "c.csv"))
    assert code != 0 and "image_root" not in err
    assert "write the table's image paths relative to the table's own folder" in err


def test_a_retrieval_tables_columns_are_its_own_whatever_the_config_says(tmp_path, capsys):
    """With a --config whose data.image_key / caption_key name another dataset's features,
    `--retrieval table.csv --image-key picture --caption-key text` failed on the config's
    keys, said as flags the user never passed; the table's own columns are read."""
    import pandas as pd

    import clip_jax

    module, variables = create_model("test-vit")
    clip_jax.save(module, variables, tmp_path / "m")
    (tmp_path / "cfg.py").write_text(
        "from clip_jax.configs import base\n\ndef get_config():\n"
        "    config = base.get_config('test-vit')\n"
        "    config.data.image_key, config.data.caption_key = 'jpg', 'txt'\n"
        f"    config.data.data_dir = {str(tmp_path / 'tfds')!r}\n"
        "    config.model.dtype = 'float32'\n    return config\n")
    rows = write_captioned_pngs(tmp_path, 3, (36, 40), 3, ("a photo {}", "image {} again"))
    pd.DataFrame(rows, columns=["picture", "text"]).to_csv(tmp_path / "t.csv", index=False)
    code, out, err = run(capsys, "eval", str(tmp_path / "m"), "--config", str(tmp_path / "cfg.py"),
                         "--retrieval", str(tmp_path / "t.csv"), "--image-key", "picture",
                         "--caption-key", "text", "--batch-size", "2", "--output",
                         str(tmp_path / "out"))
    assert code == 0, err
    (record,) = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl")]
    want = recalls_of(module, variables, tmp_path, rows)
    for name, value in want.items():
        assert record[f"retrieval/t/{name}"] == pytest.approx(value, abs=1e-6), name


def test_a_quoted_retrieval_tsv_is_read_with_the_quoting_flag(tmp_path, capsys, caplog):
    """A TSV that pandas' to_csv(sep='\\t') quoted (captions holding a tab, a quote, a line
    break) was read unquoted, rows skipped as malformed, and the advice (set
    data.table.quoting='csv') named a config field `clip-jax eval` cannot set (its
    `--config.FIELD` overrides were an argparse usage error). `--quoting csv` reads it as
    pandas does: the recalls equal those of the embeddings of pandas' rows."""
    import pandas as pd

    import clip_jax

    module, variables = create_model("test-vit")
    clip_jax.save(module, variables, tmp_path / "m")
    rows = write_captioned_pngs(tmp_path, 3, (36, 40), 5, ("a photo {}", "image {} again"))
    rows = [(file, caption + suffix) for (file, caption), suffix in
            zip(rows, ["\twith a tab", ' said "hi"', "\non two lines", "", "", ""])]
    pd.DataFrame(rows, columns=["filepath", "title"]).to_csv(tmp_path / "q.tsv", sep="\t",
                                                            index=False)
    read = pd.read_csv(tmp_path / "q.tsv", sep="\t")
    assert list(map(tuple, read.itertuples(index=False))) == rows
    data = ["--data-dir", str(tmp_path / "tfds")]  # the built tables go there
    with caplog.at_level("WARNING"):
        code, _, err = run(capsys, "eval", str(tmp_path / "m"), *data, "--retrieval",
                           str(tmp_path / "q.tsv"), "--batch-size", "2")
    assert code == 0 and "(clip-jax eval --retrieval: --quoting csv)" in caplog.text, err
    assert "the build skipped 2 of 7 records (malformed_row: 2)" in caplog.text
    caplog.clear()
    code, _, err = run(capsys, "eval", str(tmp_path / "m"), *data, "--retrieval",
                       str(tmp_path / "q.tsv"), "--config.data.table.quoting=csv")
    assert code == 2 and "takes no --config.FIELD=VALUE overrides" in err
    assert "--quoting" in err and len(err.strip().splitlines()) == 1
    with caplog.at_level("WARNING"):
        code, out, err = run(capsys, "eval", str(tmp_path / "m"), *data, "--retrieval",
                             str(tmp_path / "q.tsv"), "--quoting", "csv", "--batch-size", "2",
                             "--output", str(tmp_path / "out"))
    assert code == 0 and "skipped" not in caplog.text and "quoting" not in caplog.text, err
    (record,) = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl")]
    want = recalls_of(module, variables, tmp_path, rows)
    for name, value in want.items():
        assert record[f"retrieval/q/{name}"] == pytest.approx(value, abs=1e-6), name
    assert len(list((tmp_path / "tfds" / "image_text_table").glob("q_*"))) == 2  # two quotings
    code, _, err = run(capsys, "eval", str(tmp_path / "m"), "--zero-shot", str(tmp_path),
                       "--quoting", "csv")
    assert code == 2 and "--quoting applies to --retrieval" in err


@pytest.mark.parametrize("layout", ["validation/cat", "cat"])
def test_retrieval_on_an_image_folder_is_one_clear_error(tmp_path, capsys, layout):
    """`--retrieval` on a labelled image folder crashed with KeyError 'captions_tokens' (a
    folder with a validation split) or asked for a validation split (one without): an image
    folder has labels, not captions, and the error says so before any model loads."""
    import clip_jax

    clip_jax.save(*create_model("test-vit"), tmp_path / "m")
    (tmp_path / "pets" / layout).mkdir(parents=True)
    write_captioned_pngs(tmp_path / "pets" / layout, 2, (36, 40), 0, ("{}",))
    code, _, err = run(capsys, "eval", str(tmp_path / "m"), "--retrieval", str(tmp_path / "pets"))
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"error: --retrieval {tmp_path / 'pets'} is a labelled image folder: retrieval ranks "
        "captions, and it has class labels, not captions; give a CSV/TSV of image paths and "
        "captions or a TFDS caption dataset (coco_captions), and zero-shot or linear-probe "
        "tasks (--zero-shot / --linear-probe) for the labelled images.")


def test_export_hf_loads_in_transformers(vit_workdir, tmp_path, capsys):
    workdir, module, variables = vit_workdir
    code, out, _ = run(capsys, "export-hf", workdir, str(tmp_path / "hf"))
    assert code == 0 and "transformers CLIPModel" in out
    model = transformers.CLIPModel.from_pretrained(tmp_path / "hf").eval()
    images = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    tokens = tokenize(["a red circle", "two blue squares"], 16)
    with torch.no_grad():
        theirs = model(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2),
                       input_ids=torch.from_numpy(tokens).long())
    ours = module.apply(variables, images, tokens)
    np.testing.assert_allclose(theirs.image_embeds.numpy(), ours[0], atol=1e-5)
    np.testing.assert_allclose(theirs.text_embeds.numpy(), ours[1], atol=1e-5)
    code, _, _ = run(capsys, "export-hf", workdir, str(tmp_path / "hf16"), "--dtype", "bf16")
    assert code == 0
    assert transformers.CLIPModel.from_pretrained(tmp_path / "hf16").dtype == torch.bfloat16


@pytest.mark.slow
def test_export_open_clip_of_a_resnet(tmp_path, capsys):
    module, variables = make_workdir(tmp_path / "rn", "test-resnet")
    code, out, _ = run(capsys, "export-open-clip", str(tmp_path / "rn"), str(tmp_path / "oc"))
    assert code == 0 and "local-dir:" in out
    # the note on open_clip's own transforms names the size open_clip's config records
    size = json.loads((tmp_path / "oc" / "open_clip_config.json").read_text())[
        "model_cfg"]["vision_cfg"]["image_size"]
    assert f"crop_size={{'height': {size}, 'width': {size}}}" in out
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'oc'}")
    images = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        theirs = model.eval().encode_image(torch.from_numpy(images).permute(0, 3, 1, 2),
                                           normalize=True)
    ours = module.apply(variables, images, method=module.encode_image)
    np.testing.assert_allclose(theirs.numpy(), l2_normalize(ours), atol=1e-5)
    with pytest.raises(SystemExit):
        cli.main(["export-hf", "a", "b", "--dtype", "int8"])


def test_export_open_clips_pixel_advice_gives_clip_jaxs_pixels(tmp_path, capsys):
    """The note after `export-open-clip` named CLIPImageProcessor's image size and mean/std
    only: for a model that resizes before its crop (shortest side 40, crop 32) that processor
    was up to 2.8 off clip_jax's pixels (trial CF). The call it now writes out, run as
    written, gives clip_jax.preprocess's pixels."""
    import ast

    module, variables = clip_jax.create_model("test-vit", resize_size=40,
                                              image_mean=(0.5, 0.4, 0.3),
                                              image_std=(0.2, 0.25, 0.3))
    clip_jax.save(module, variables, tmp_path / "model")
    code, out, _ = run(capsys, "export-open-clip", str(tmp_path / "model"), str(tmp_path / "oc"))
    assert code == 0, out
    call = re.search(r"CLIPImageProcessor\((.*?)\) \(as in", out).group(1)
    options = {keyword.arg: ast.literal_eval(keyword.value)
               for keyword in ast.parse(f"f({call})", mode="eval").body.keywords}
    processor = transformers.CLIPImageProcessor(**options)
    photo = np.random.default_rng(1).integers(0, 256, (61, 90, 3), dtype=np.uint8)
    theirs = processor(images=Image.fromarray(photo), return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(np.transpose(theirs, (0, 2, 3, 1)),
                               preprocess(photo, module.config), atol=1e-5)


def test_the_weights_flags_read_what_a_checkpoint_file_does_not_say(tmp_path, capsys):
    """A training checkpoint of a custom open_clip architecture (32-wide vision heads, which
    the shapes do not tell) with an EMA copy: the warnings said `ema=True` / `model=`, which
    no command took. `--architecture CONFIG.json` (open_clip's model config) and `--ema` export
    the average, equal to open_clip running it; an index built so records them for search."""
    model_cfg = {"embed_dim": 32, "quick_gelu": True,
                 "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8,
                                "head_width": 32},
                 "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64,
                              "heads": 2, "layers": 2}}
    (tmp_path / "arch.json").write_text(json.dumps(model_cfg))
    kwargs = dict(embed_dim=32, vision_cfg=model_cfg["vision_cfg"],
                  text_cfg=model_cfg["text_cfg"], quick_gelu=True)
    torch.manual_seed(0)
    trained, average = (open_clip.model.CLIP(**kwargs).eval() for _ in range(2))
    with torch.no_grad():
        for p in average.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save({"epoch": 2, "state_dict": trained.state_dict(),
                "state_dict_ema": average.state_dict()}, tmp_path / "epoch_2.pt")
    code, _, err = run(capsys, "export-open-clip", str(tmp_path / "epoch_2.pt"),
                       str(tmp_path / "oc"), "--ema", "--architecture", str(tmp_path / "arch.json"))
    assert code == 0, err
    exported, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'oc'}")
    images = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2)
    with torch.no_grad():
        want, got = (m.eval().encode_image(pixels).numpy() for m in (average, exported))
    np.testing.assert_allclose(got, want, atol=1e-5)

    photos = tmp_path / "photos"
    photos.mkdir()
    write_captioned_pngs(photos, 3, (40, 40), 1, ())
    code, _, err = run(capsys, "index", str(photos), "--model", str(tmp_path / "epoch_2.pt"),
                       "--ema", "--architecture", str(tmp_path / "arch.json"), "--output",
                       str(tmp_path / "i.npz"))
    assert code == 0, err
    code, out, err = run(capsys, "search", str(tmp_path / "i.npz"), "a photo")
    assert code == 0 and "warning" not in err, err  # loaded as indexed: the same embeddings
    code, out, err = run(capsys, "search", str(tmp_path / "i.npz"), "a photo", "--activation",
                         "quick_gelu")  # one flag given: the other recorded options still hold
    assert code == 0 and "warning" not in err, err
    code, _, err = run(capsys, "search", str(tmp_path / "i.npz"))
    assert code == 2 and "No query: give a text query" in err, err


def test_eval_of_a_model_without_a_dataset_asks_for_one(tmp_path, capsys):
    """A checkpoint that records no training config names no dataset: refuse, naming --config,
    instead of evaluating on a default the user never chose."""
    module, variables = create_model("test-vit", rng=0)
    checkpointer = Checkpointer(str(tmp_path), 1, 1, asynchronous=False)
    checkpointer.save(1, {"step": np.int32(1), **variables},
                      {"step": 1, "model": module.config.to_dict()}, force=True)
    checkpointer.close()
    code, out, err = run(capsys, "eval", str(tmp_path))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "--config" in err and "dataset" in err, err
    assert out == ""


def test_only_config_errors_are_one_line(monkeypatch, tmp_path, capsys):
    """A ConfigError is the user's mistake: one line, exit 2. Any other exception (a bug in
    clip_jax, JAX or TF) keeps its traceback."""
    def mistake(args):
        raise ConfigError("--labels names one class; give at least 2.")

    def bug(args):
        raise ValueError("a bug inside a library")

    argv = ["zero-shot", "--model", str(tmp_path), "--labels", "a,b", str(tmp_path)]
    help_text, arguments, _ = cli.COMMANDS["zero-shot"]
    monkeypatch.setitem(cli.COMMANDS, "zero-shot", (help_text, arguments, mistake))
    assert run(capsys, *argv)[::2] == (2, "error: --labels names one class; give at least 2.\n")
    monkeypatch.setitem(cli.COMMANDS, "zero-shot", (help_text, arguments, bug))
    with pytest.raises(ValueError, match="a bug inside a library"):
        cli.main(argv)


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_train_help_lists_its_flags_and_configs(flag, capsys):
    from clip_jax.cli import train as entry

    assert entry.main(["clip-jax train", "--config=tiny", flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: clip-jax train --config FILE_OR_NAME --workdir DIR")
    assert "--workdir: Directory" in out and "--config: Config file" in out
    assert "Exit codes:" in out and "vit_b16" in out and "--helpfull" in out
    assert "'None'" not in out  # a required flag has no default to show
    # --helpfull adds absl's flags (it printed absl's usage, naming the script, and exited 1)
    assert entry.main(["clip-jax train", "--helpfull"]) == 0
    full = capsys.readouterr().out
    assert full.startswith(out.strip()) and "--verbosity" in full


@pytest.mark.parametrize("argv, missing", [(["--config=tiny"], "--workdir"),
                                           (["--workdir", "w"], "--config")])
def test_train_without_config_or_workdir_says_the_command_line(argv, missing, capsys):
    """absl's "Flag --workdir must have a value other than None." named no fix (trial BS)."""
    from absl import flags

    from clip_jax.cli import train as entry

    with pytest.raises(ConfigError, match=f"^{missing} is required: clip-jax train --config "
                                          r"FILE_OR_NAME --workdir DIR \[--config.FIELD=VALUE "
                                          r"...\] \(see --help\).$"):
        entry.load(["clip-jax train", *argv], flags.FlagValues())


def test_config_by_path_or_name_without_sys_path_changes(monkeypatch):
    """`--config` takes a path from the checkout root, the package's path, or a bare name;
    all load clip_jax/configs/NAME.py's get_config() and leave sys.path alone."""
    from absl import flags

    from clip_jax.cli import train as entry
    from clip_jax.configs import vit_b16

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.chdir(root)
    expected = vit_b16.get_config().to_dict()
    before = list(sys.path)
    for given in ("configs/vit_b16.py", "clip_jax/configs/vit_b16.py", "vit_b16"):
        config, workdir = entry.load(["clip-jax train", "--config", given, "--workdir", "w",
                                      "--config.batch_size=64"], flags.FlagValues())
        assert config.batch_size == 64 and workdir == "w"
        config.unlock().batch_size = expected["batch_size"]
        assert config.to_dict() == expected, given
        assert cli.evaluate.load_config_file(given).to_dict() == expected, given
    assert sys.path == before
    with pytest.raises(ConfigError, match="'vit_b17': no such config file; did you mean "
                                          "--config vit_b16\\? Or .* vit_b16, vit_b32"):
        entry.resolve_config_path("vit_b17")
    with pytest.raises(ConfigError, match="'tinyy': no such config file; did you mean --config "
                                          "tiny\\? Or pass"):
        entry.resolve_config_path("tinyy")
    with pytest.raises(ConfigError, match="^--config 'base': base.py is the recipe the model "
                                          "configs start from, not a config of its own; use "
                                          "--config vit_b32 "):
        entry.resolve_config_path("base")  # trial CR: "no such config file", though it exists
    with pytest.raises(ConfigError, match="'configs': is a folder, not a config file; pass a"):
        entry.resolve_config_path("configs")  # it said "no such config file" of a folder
    monkeypatch.chdir(os.path.dirname(root))  # the README's paths, typed outside a checkout
    for given, bundled in (("configs/vit_b16.py", "vit_b16"), ("my/tiny.py:x", "tiny:x")):
        with pytest.raises(ConfigError, match=rf"^--config '{given}': no such config file here; "
                                              rf"the bundled config of that name is --config "
                                              rf"{bundled}\.$"):
            entry.resolve_config_path(given)
    with pytest.raises(ConfigError, match="cannot apply --config.optimizer.lrr=1"):
        entry.load(["clip-jax train", "--config=tiny", "--workdir=w", "--config.optimizer.lrr=1"],
                   flags.FlagValues())
    # A section given a value: the fix, not the parser's complaint.
    for override, example in (("--config.model=ViT-B/32", "--config.model.name=ViT-B/32"),
                              ("--config.optimizer=adam", "--config.optimizer.FIELD=VALUE")):
        with pytest.raises(ConfigError) as error:
            entry.load(["clip-jax train", "--config=tiny", "--workdir=w", override],
                       flags.FlagValues())
        field = override.split("=")[0]
        assert str(error.value).startswith(f"{field} is a section of the config, not a value")
        assert f"e.g. {example} " in str(error.value)


def test_an_optional_field_set_by_the_config_file_can_be_unset_from_the_command_line(
        tmp_path):
    """A config file giving SigLIP's bias: `--config.model.logit_bias_init=None` failed as
    "could not convert string to float: 'None'" (absl parses with the current value's type).
    An optional field (an ml_collections placeholder) takes None, as a Python assignment
    does; a required field is refused in one line naming it, and so is an unknown one."""
    from absl import flags

    from clip_jax.cli import train as entry

    (tmp_path / "sig.py").write_text(
        "from clip_jax.configs import tiny\n\n\ndef get_config():\n"
        "    c = tiny.get_config()\n    c.loss = 'sigmoid'\n"
        "    c.model.logit_bias_init = -10.0\n    c.peak_flops_per_device = 1e12\n"
        "    return c\n")
    argv = ["clip-jax train", f"--config={tmp_path / 'sig.py'}", "--workdir=w",
            "--config.model.logit_bias_init=None", "--config.peak_flops_per_device=None",
            "--config.batch_size=32"]
    config, _ = entry.load(argv, flags.FlagValues())
    spec = importlib.util.spec_from_file_location("sig", tmp_path / "sig.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.get_config()
    expected.model.logit_bias_init = expected.peak_flops_per_device = None
    expected.batch_size = 32
    assert config.to_dict() == expected.to_dict()
    for override, message in (
            ("--config.total_steps=None", "--config.total_steps=None: config.total_steps is not "
                                          "optional (it holds int "),
            ("--config.model.bias=None", "cannot apply --config.model.bias=None: unknown field"),
            ("--config.model.activaton=None", "unknown field 'model.activaton'; did you mean "
                                              "--config.model.activation?"),
            ("--config.learning_rate=None", "unknown field 'learning_rate'; did you mean "
                                            "--config.optimizer.lr?"),
            ("--config.eval.zero_shot.heldout=None", "config.eval.zero_shot.heldout is a "
                                                     "section, not a value"),
            ("--config.init_from=None", "give it a value (empty: --config.init_from=).")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            entry.load([*argv[:3], override], flags.FlagValues())


def test_eval_without_a_config_uses_the_base_configs_sections(tmp_path):
    """Sources named on the command line: the data and eval defaults are configs/base.py's
    (in float32), not a second copy of them."""
    from clip_jax.data import options as data_options
    from clip_jax.evaluation import evaluate

    config = cli.evaluate.eval_config(str(tmp_path), None, sources_given=True)
    assert config.model.dtype == "float32"
    assert dict(config.mesh) == {"data": -1, "fsdp": 1, "tensor": 1}
    assert config.data.to_dict() == data_options.default_config().to_dict()
    assert config.eval.to_dict() == evaluate.default_config().to_dict()


def test_warnings_read_alike_under_every_command():
    """The entry points show clip_jax's warnings (the dataset builders' `clip_jax_data` too:
    a table's repeated header came out as `WARNING:clip_jax_data.tables:...`) as one
    `warning: ...` line, also where absl's handler sits on the root logger (`clip-jax train`),
    which must not print them again."""
    def stderr_lines(code):
        return subprocess.run([sys.executable, "-c", "import logging; from absl import "
                               "logging as absl_logging; from clip_jax.runtime import logs; "
                               + code], capture_output=True, text=True,
                              check=True).stderr.strip().splitlines()

    assert stderr_lines(
        "absl_logging.use_absl_handler(); logs.show_warnings(); logs.show_warnings(); "
        "logging.getLogger('clip_jax.data.sources').warning('skipped %d of %d', 1, 2); "
        "logging.getLogger('clip_jax.data.sources').info('not shown'); "
        "logging.getLogger('clip_jax_data.tables').warning('renamed %s', 'label.1')"
    ) == ["warning: skipped 1 of 2", "warning: renamed label.1"]
    # huggingface_hub's retry lines came out twice, its own handler's and the root's
    # (`WARNING:huggingface_hub.utils._http:Retrying in 1s`, trial BH)
    assert stderr_lines(
        "logs.show_warnings(); from huggingface_hub.utils import logging as hub_logging; "
        "absl_logging.vlog(1, 'absl adds a root handler'); assert logging.root.handlers; "
        "hub_logging.get_logger('huggingface_hub.utils._http').warning('Retrying in 1s')"
    ) == ["Retrying in 1s"]


def test_a_closed_output_pipe_is_one_warning_not_a_traceback():
    """`clip-jax ... | head -1`: the command goes on (exit 0) with stdout dropped and says so
    once; python's own `print` to the closed pipe would raise BrokenPipeError."""
    code = ("from clip_jax.runtime import logs; logs.setup_console(); import sys\n"
            "def main():\n"
            "    for i in range(200000): print('line', i)\n"
            "    print('done', file=sys.stderr)\n"
            "sys.exit(logs.exit_status(main))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "line 0\n"
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, err
    assert err.splitlines() == ["warning: standard output was closed (its reader exited); "
                                "carrying on without it.", "done"]
    # stdout on a full disk (/dev/full: every write ENOSPC) was a traceback that killed a
    # run, its last steps unsaved (trial AL): dropped the same way, said once; but the
    # output is lost, so the status is a failure (it was 0, trial BA)
    full_disk = ["warning: standard output cannot be written (No space left on device); "
                 "carrying on without it.", "done", "error: standard output could not be "
                 "written (No space left on device), so this command's output is incomplete; "
                 "free space there (or write elsewhere) and run it again."]
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-c", code], stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=60)
    assert (proc.returncode, proc.stderr.splitlines()) == (1, full_disk)
    # the same of the command itself, whose --help exits through argparse's SystemExit
    with open("/dev/full", "w") as full:
        proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "clip-jax"),
                               "--help"], stdout=full, stderr=subprocess.PIPE, text=True,
                              timeout=60)
    assert (proc.returncode, proc.stderr.splitlines()) == (1, [full_disk[0], full_disk[2]])


def test_orbax_tracebacks_are_left_out_of_the_quiet_console():
    """A failed checkpoint write's one line came after orbax's logged tracebacks, and (in
    one CI run of 2) asyncio's "_GatheringFuture exception was never retrieved" for orbax's
    writes: records with a traceback logged by orbax, or through its frames, are left out by
    default; others, asyncio's included, are shown."""
    import logging
    import sys

    from clip_jax.cli import train as entry

    def raised(filename):
        scope = {}
        exec(compile("def write():\n    raise ValueError('OUT_OF_RANGE: Error writing')\n",
                     filename, "exec"), scope)
        try:
            scope["write"]()
        except ValueError:
            return sys.exc_info()

    def record(logger, path, exc_info):
        return logging.LogRecord(logger, logging.ERROR, path, 1, "failed", None, exc_info)

    orbax = "/site-packages/orbax/checkpoint/_src/serialization/serialization.py"
    asyncio = "/usr/lib/python3.11/asyncio/base_events.py"
    assert not entry._shown(record("asyncio", asyncio, raised(orbax)))
    assert not entry._shown(record("absl", orbax, raised("/elsewhere/x.py")))
    assert entry._shown(record("asyncio", asyncio, raised("/elsewhere/x.py")))
    assert entry._shown(record("absl", orbax, None))  # orbax's warnings without a traceback
    # tensorstore's failed write, set on a future from C++: no Python frame to tell by (a CI run)
    native = ValueError('OUT_OF_RANGE: Error writing "x" in OCDBT database')
    assert not entry._shown(record("asyncio", asyncio, (ValueError, native, None)))
    assert entry._shown(record("absl", "/elsewhere/x.py", (ValueError, native, None)))


def test_a_removed_current_directory_and_an_unstartable_platform_are_one_line(
        tmp_path, monkeypatch, capsys):
    """Trial AL: a shell in a removed folder got FileNotFoundError tracebacks naming no path
    (and `clip-jax search rel.npz` "No index file"), and JAX_PLATFORMS=gpu on a machine
    without one a traceback (train) or every healthy checkpoint called damaged (zero-shot)."""
    import jax

    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    for argv in (["search", "x.npz", "red"], ["index", "photos", "--model", "m", "--output",
                                              "x.npz"]):
        assert cli.main(argv) == 2
        assert capsys.readouterr().err == (
            "error: The current directory no longer exists (removed while the shell was in "
            "it); cd to an existing folder, or give absolute paths.\n")
    monkeypatch.chdir(tmp_path)

    def unstartable():
        raise RuntimeError("Unable to initialize backend 'rocm': Backend 'rocm' is not in the "
                           "list of known backends: ['cpu', 'tpu'].")

    monkeypatch.setattr(jax, "devices", unstartable)
    monkeypatch.setenv("JAX_PLATFORMS", "gpu")
    assert cli.main(["search", "x.npz", "red"]) == 2
    assert capsys.readouterr().err.startswith(
        "error: JAX_PLATFORMS='gpu', but JAX cannot start it here (Unable to initialize backend "
        "'rocm': ")
    monkeypatch.delenv("JAX_PLATFORMS")
    with pytest.raises(RuntimeError, match="Unable to initialize"):  # not ours to explain
        cli.main(["search", "x.npz", "red"])


@pytest.mark.parametrize("argv, flag, problem", [
    (["zero-shot", "--labels", "a,b", "--alpha", "pinkish"], "--alpha",
     "invalid value 'pinkish': use 'drop' (keep the colours stored under transparent pixels, "
     "as transformers' load_image) or an opaque colour name or hex code such as 'white' or "
     "'#808080'"),
    (["zero-shot", "--labels", "a,b", "--alpha", "rgba(255,255,255,0)"], "--alpha",
     "invalid value 'rgba(255,255,255,0)': use 'drop' (keep the colours stored under "
     "transparent pixels, as transformers' load_image) or an opaque colour name or hex code "
     "such as 'white' or '#808080'"),
    (["zero-shot", "--labels", "a,b", "--top", "0"], "--top",
     "invalid value '0': give a whole number >= 1"),
    (["zero-shot", "--labels", "a,b", "--top", "-1"], "--top",
     "invalid value '-1': give a whole number >= 1"),
    (["zero-shot", "--labels", "a,b", "--batch-size", "0"], "--batch-size",
     "invalid value '0': give a whole number >= 1"),
    (["search", "INDEX", "a cat", "--top", "0"], "--top",
     "invalid value '0': give a whole number >= 1"),
    (["index", "--output", "o.npz", "--batch-size", "-4"], "--batch-size",
     "invalid value '-4': give a whole number >= 1"),
    (["index", "--output", "o.npz", "--save-every", "0"], "--save-every",
     "invalid value '0': give a whole number >= 1"),
    (["eval", "--batch-size", "0"], "--batch-size", "invalid value '0': give a whole number >= 1"),
    (["eval", "--seeds", "0"], "--seeds", "invalid value '0': give a whole number >= 1"),
    (["eval", "--shots", "1,2,0"], "--shots",
     "invalid value '1,2,0': give comma-separated whole numbers >= 1, e.g. '1,2,4,8,16'"),
    (["eval", "--shots", "1.5"], "--shots",
     "invalid value '1.5': give comma-separated whole numbers >= 1, e.g. '1,2,4,8,16'"),
    (["plan", "--search-seconds", "-5"], "--search-seconds",
     "invalid value '-5': give seconds >= 0 (0 skips the search)"),
    (["plan", "--search-seconds", "inf"], "--search-seconds",
     "invalid value 'inf': give seconds >= 0 (0 skips the search)"),
    (["eval", "--shifts", "blur,blurr"], "--shifts",
     "Unknown shift 'blurr'; use one of greyscale, invert, hue_rotate, blur, noise, jpeg, "
     "sketch, occlusion, downscale_upscale."),
    # written with local file calls: into ./gs:/b/x, said to be written to gs://b/x (trial CP)
    (["eval", "--output", "gs://b/x"], "--output", "'gs://b/x' is a URL: this command writes "
     "locally; give a local path, and copy the result to storage afterwards (gcloud storage "
     "cp -r PATH gs://...)"),
    (["index", "--output", "gs://b/i.npz"], "--output", "'gs://b/i.npz' is a URL: this "
     "command writes locally; give a local path, and copy the result to storage afterwards "
     "(gcloud storage cp -r PATH gs://...)"),
    (["export-hf", "gs://b/hf"], "OUTPUT_DIR", "'gs://b/hf' is a URL: this command writes "
     "locally; give a local path, and copy the result to storage afterwards (gcloud storage "
     "cp -r PATH gs://...)"),
    (["export-open-clip", "s3://b/oc"], "OUTPUT_DIR", "'s3://b/oc' is a URL: this command "
     "writes locally; give a local path, and copy the result to storage afterwards (gcloud "
     "storage cp -r PATH gs://...)"),
    (["eval", "--output", "hdfs://nn/x"], "--output", "'hdfs://nn/x' is a URL: this command "
     "writes locally; give a local path, and copy the result to storage afterwards (gcloud "
     "storage cp -r PATH gs://...)"),
])
def test_bad_flag_values_are_refused_when_parsing(argv, flag, problem, tmp_path, capsys):
    """A value that every image, label or task would fail on (an unknown --alpha colour, a
    count below 1, an unknown shift) is refused by argparse, naming the flag, before the
    model (here: one that does not exist) is looked at."""
    command, *rest = argv
    model = str(tmp_path / "no_model")
    positional = {"zero-shot": ["--model", model, str(tmp_path)], "search": [],
                  "index": [str(tmp_path), "--model", model], "eval": [model],
                  "plan": ["--topology", "v5e-8"], "export-hf": [model],
                  "export-open-clip": [model]}[command]
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, *positional, *rest])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.strip().splitlines()[-1] == f"clip-jax {command}: error: argument {flag}: {problem}"


@pytest.mark.parametrize("argv, said", [
    (["plan", "--config", "tiny", "--config", "vit_b16", "--topology", "v5e-8"],
     "--config is given more than once; give it once."),
    (["eval", "w", "--config", "a.py", "--config=b.py"],
     "--config is given more than once; give it once."),
    (["eval", "w", "--zero-shot", "a", "--zero-shot", "b"],
     "--zero-shot is given more than once; give it once, with all its values (--zero-shot A "
     "B)."),
    (["eval", "w", "--linear-probe", "a", "b", "--linear-probe", "c", "d"],
     "--linear-probe is given more than once; give it once."),
    (["eval", "w", "--robustness", "a", "--robustness", "b"],
     "--robustness is given more than once; give it once."),
    (["eval", "w", "--retrieval", "a.csv", "--retrieval=b.csv"],
     "--retrieval is given more than once; give it once."),
])
def test_a_config_or_source_given_twice_is_refused(argv, said, capsys):
    """The last of two won silently (trial BS: `plan --config tiny --config vit_b16` planned
    vit_b16 and compiled for minutes; `--zero-shot a --zero-shot b` evaluated b alone);
    refused while parsing, before anything runs. Other options keep argparse's last-wins
    (wrapper scripts append overrides to their defaults)."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"clip-jax {argv[0]}: error: {said}"
    args = cli.parser().parse_args(["zero-shot", "--model", "m", "a.jpg", "--labels", "a,b",
                                    "--top", "1", "--top", "2"])
    assert args.top == 2


def test_accepted_alpha_and_count_values_pass_through(tmp_path):
    """The colours Pillow names and hex codes, 'drop', and counts from 1, as given."""
    for alpha in ("drop", "white", "#808080", "rgb(10,20,30)"):
        args = cli.parser().parse_args(["zero-shot", "--model", "m", "--labels", "a,b",
                                        "--alpha", alpha, "--top", "1", "x.jpg"])
        assert (args.alpha, args.top) == (alpha, 1)
    args = cli.parser().parse_args(["eval", "m", "--shots", "1, 4", "--seeds", "2"])
    assert (args.shots, args.seeds) == ("1,4", 2)


@pytest.mark.parametrize("argv, message", [
    (["zero-shot", "--labels", "a, b,a"],
     "--labels 'a, b,a' repeats the label(s) ['a']; give each label once."),
    (["zero-shot", "--labels", "a,,b"], "--labels 'a,,b' has an empty label; remove the extra "
                                        "comma."),
    (["zero-shot", "--labels", " "], "--labels ' ' has an empty label; give the labels, "
                                     "comma-separated (a,b) or in a file."),
    (["zero-shot", "--labels", "LABELS_FILE"],
     "--labels file 'LABELS_FILE' repeats the label(s) ['cat', 'dog']; give each label once."),
    (["zero-shot", "--labels", "a,b", "--templates", "nope"],
     "Unknown template set 'nope': use one of ['default', 'openai_imagenet', 'simple', "
     "'synthetic_shapes'], the path of a text file with one template (containing '{}' or "
     "'{c}') per line, or one template with exactly one '{}'."),
    (["eval", "--zero-shot", "cifar10", "--class-names", "cat,dog,cat"],
     "--class-names 'cat,dog,cat' repeats the label(s) ['cat']; give each label once."),
    (["eval", "--zero-shot", "cifar10", "--templates", "defualt"],
     "--templates: Unknown template set 'defualt' (did you mean 'default'?): use one of "
     "['default', 'openai_imagenet', "
     "'simple', 'synthetic_shapes'], the path of a text file with one template (containing "
     "'{}' or '{c}') per line, or one template with exactly one '{}'."),
    (["eval", "--zero-shot", "cifar10", "--evaluators", "zero_shot,zero_shoot"],
     "config.eval.evaluators has unknown evaluator(s) ['zero_shoot'] (did you mean "
     "'zero_shot'?); use a comma-separated "
     "subset of zero_shot,retrieval,linear_probe,few_shot,robustness."),
    # it said "config.eval.retrieval has no task; add one or remove 'retrieval' from
    # config.eval.evaluators", a config the user never wrote (trial CO)
    (["eval", "--zero-shot", "cifar10", "--evaluators", "zero_shot,retrieval"],
     "--evaluators names retrieval, but no retrieval source was given; add --retrieval TABLE, "
     "or leave retrieval out of --evaluators."),
    (["search", "--image", "QUERY"], "No query image at 'QUERY'; check --image."),
    (["search", "--image", "FOLDER"], "--image takes one query image, and 'FOLDER' is a "
                                      "folder; pass one of its images (to search with many, "
                                      "run one search per image)."),
    (["index", "QUERY"], "No image file or folder at 'QUERY'."),
    # an option no given source reads would be silently ignored
    (["eval", "--zero-shot", "cifar10", "--shots", "1,2"],
     "--shots applies to --few-shot, which is not given; add it or drop --shots."),
    (["eval", "--linear-probe", "cifar10", "cifar10", "--templates", "simple"],
     "--templates applies to --zero-shot or --few-shot or "
                                        "--robustness, which is not given; add it or drop "
                                        "--templates."),
    (["eval", "--zero-shot", "cifar10", "--caption-column", "text"],  # --caption-key's alias
     "--caption-key applies to --retrieval, which is not given; add it or drop "
     "--caption-key."),
])
def test_labels_and_prompts_are_checked_before_the_model_loads(argv, message, tmp_path,
                                                               capsys):
    """Duplicate or empty labels (in a list or a file: blank lines there are skipped), unknown
    templates or evaluators, a missing query image: one error line, before the model (here:
    one that does not exist) is loaded."""
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n\ncat\nbird\n dog \n")
    model = str(tmp_path / "no_model")
    command, *rest = [str(labels) if a == "LABELS_FILE" else a for a in argv]
    message = message.replace("LABELS_FILE", str(labels))
    named = {"QUERY": str(tmp_path / "q.jpg"), "FOLDER": str(tmp_path)}
    for name, path in named.items():
        message = message.replace(name, path)
    rest = [named.get(a, a) for a in rest]
    positional = {"zero-shot": ["--model", model, str(tmp_path)], "eval": [model],
                  "search": [str(tmp_path / "index.npz")],
                  "index": ["--model", model, "--output", str(tmp_path / "o.npz")]}[command]
    code, out, err = run(capsys, command, *positional, *rest)
    assert (code, out, err) == (2, "", f"error: {message}\n")


def _hf_clip_without_tokenizer(directory, vocab_size=49408):
    """A random transformers CLIPModel as `save_pretrained` leaves it: no tokenizer files."""
    torch.manual_seed(0)
    model = transformers.CLIPModel(transformers.CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                         bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=16),
        projection_dim=16)).eval()
    model.save_pretrained(directory)
    assert not {"vocab.json", "merges.txt", "tokenizer.json"} & set(os.listdir(directory))
    return model


def test_export_hf_of_a_directory_without_tokenizer_files(tmp_path, capsys, caplog):
    """`clip-jax export-hf` of what `clip_jax.load` reads: a CLIPModel with OpenAI's vocabulary
    size gets OpenAI's tokenizer, said in a warning, and the export tokenises as open_clip and
    computes as the source model; another vocabulary size is one error line whose fix is a
    file to copy (no Python call)."""
    source = _hf_clip_without_tokenizer(tmp_path / "src")
    with caplog.at_level("WARNING"):
        code, out, err = run(capsys, "export-hf", str(tmp_path / "src"), str(tmp_path / "out"))
    assert code == 0, err
    assert (f"{tmp_path / 'src'} has no tokenizer files; using OpenAI's CLIP vocabulary, which "
            "its 49408-token embedding table matches") in caplog.text
    texts = ["a photo of a cat", "Two dogs, running."]
    tokenizer = transformers.CLIPTokenizer.from_pretrained(tmp_path / "out")
    for ids, reference in zip(tokenizer(texts)["input_ids"], open_clip.tokenize(texts, 16)):
        assert ids == reference[reference != 0].tolist()  # open_clip pads with 0, HF with EOT
    hf_tokens = tokenizer(texts, padding="max_length", max_length=16,
                          return_tensors="pt")["input_ids"]
    exported = transformers.CLIPModel.from_pretrained(tmp_path / "out").eval()
    pixels = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 32, 32)))
    with torch.no_grad():
        theirs = exported(pixel_values=pixels.float(), input_ids=hf_tokens)
        want = source(pixel_values=pixels.float(), input_ids=hf_tokens)
    np.testing.assert_allclose(theirs.logits_per_image.numpy(), want.logits_per_image.numpy(),
                               atol=1e-5)

    _hf_clip_without_tokenizer(tmp_path / "small", vocab_size=1000)
    capsys.readouterr()  # transformers' progress bars
    from clip_jax.pretrained import factory

    with pytest.MonkeyPatch.context() as patch:  # refused before the weights load
        patch.setattr(factory.loading, "load", lambda *_: pytest.fail("loaded the weights"))
        code, out, err = run(capsys, "export-hf", str(tmp_path / "small"),
                             str(tmp_path / "out2"))
    assert (code, out) == (2, "")
    assert err == (f"error: {tmp_path / 'small'} has no tokenizer files (vocab.json + "
                   "merges.txt, or tokenizer.json) and its vocab_size 1000 is not OpenAI's "
                   "49408; copy the model's own vocab.json and merges.txt from its original "
                   f"repository into {tmp_path / 'small'}.\n")
    default_tokenizer().save_hf(tmp_path / "small")  # another model's vocabulary, too large
    code, out, err = run(capsys, "export-hf", str(tmp_path / "small"), str(tmp_path / "out2"))
    assert (code, out) == (2, "")
    assert err == ("error: The tokenizer has 49408 tokens but the model only 1000 embeddings; "
                   "pass the model's own tokenizer (from Python: tokenizer=hf_tokenizer."
                   "load_tokenizer(DIR) of its vocab.json and merges.txt; `clip-jax export-hf` "
                   "reads them from the transformers directory or Hub repo it exports: put the "
                   "model's own there).\n")


def test_eval_flag_mistakes_are_reported_before_tensorflow_loads(tmp_path):
    """`clip-jax eval` checked its flags only after importing TensorFlow (~10 s): a wrong flag
    combination and a wrong --shifts name now fail with TensorFlow never imported."""
    code = ("import sys\nfrom clip_jax import cli\ntry:\n    rc = cli.main(sys.argv[1:])\n"
            "except SystemExit as stop:\n    rc = stop.code\n"
            "print('tensorflow' in sys.modules, rc)")
    for argv, message in (
            (["eval", str(tmp_path), "--zero-shot", str(tmp_path), "--shots", "1,2"],
             "--shots applies to --few-shot"),
            (["eval", str(tmp_path), "--robustness", str(tmp_path), "--shifts", "fog"],
             "Unknown shift 'fog'")):
        result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True,
                                text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
        assert result.stdout.split()[-2:] == ["False", "2"], (result.stdout, result.stderr)
        assert message in result.stderr.strip().splitlines()[-1], result.stderr


def test_train_data_mistakes_are_reported_before_tensorflow_loads(tmp_path):
    """A data section's mistakes (a table column its header lacks, a missing table name, a
    bad augmentation range) were found only after TensorFlow and the training module loaded
    (~14 s): now one line, exit 2, with TensorFlow never imported."""
    (tmp_path / "t.tsv").write_text("image\tcaption\n0.png\ta cat\n")
    (tmp_path / "0.png").write_bytes(b"")
    code = ("import sys\nfrom clip_jax import cli\ntry:\n    rc = cli.main(sys.argv[1:])\n"
            "except SystemExit as stop:\n    rc = stop.code\n"
            "print('tensorflow' in sys.modules, rc)")
    table = ["--config.data.dataset=image_text_table",
             f"--config.data.table.train_path={tmp_path / 't.tsv'}"]
    for overrides, message in (
            ([*table, "--config.data.table.name=t", "--config.data.table.image_column=image"],
             "data.table.caption_column='title' is not a column of"),
            ([*table, "--config.data.table.name=t"],  # the usual names the header has: offered
             "the header has 'image': set data.table.image_column='image'"),
            ([*table, "--config.data.table.name=t", "--config.data.table.image_column=image"],
             "the header has 'caption': set data.table.caption_column='caption'"),
            ([*table, "--config.data.table.image_column=image",
              "--config.data.table.caption_column=caption"],
             "config.data.table.name='' is invalid"),
            (["--config.data.augment.ratio=(2.0,1.0)"], "data.augment.ratio"),
            # a ThreadPoolExecutor traceback once the build had started; then a TFDS one
            ([*table, "--config.data.table.name=t", "--config.data.table.image_column=image",
              "--config.data.table.caption_column=caption", "--config.data.table.num_threads=0"],
             "config.data.table.num_threads=0 is invalid; use 1 or more threads"),
            (["--config.data.dataset=webdataset_shards", "--config.data.webdataset.name=w",
              f"--config.data.webdataset.train_shards={tmp_path}/{{0..1}}.tar",
              "--config.data.webdataset.num_threads=0"],
             "config.data.webdataset.num_threads=0 is invalid; use 1 or more threads"),
            ([f"--config.data.data_dir={tmp_path / 't.tsv'}"],
             f"config.data.data_dir='{tmp_path / 't.tsv'}' is invalid: it is a file; use the "
             "folder"),
            ([f"--config.data.data_dir={tmp_path / 't.tsv' / 'sub'}"],
             f"'{tmp_path / 't.tsv'}' above it is a file; use the folder")):
        argv = ["train", "--config", "tiny", "--workdir", str(tmp_path / "w"), *overrides]
        result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True,
                                text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
        assert result.stdout.split()[-2:] == ["False", "2"], (result.stdout, result.stderr)
        assert message in result.stderr.strip().splitlines()[-1], result.stderr


def test_eval_sources_that_share_a_name_keep_their_own_results(tmp_path, monkeypatch):
    """`--zero-shot a/test.csv b/test.csv` made one task `test`: the second replaced the first
    with no message. Sources that would share a name are told apart by their folders, a split
    is part of a name, a shifted set never takes a synthetic shift's name, and a source given
    twice is refused."""
    from clip_jax.cli import eval_sources
    from clip_jax.evaluation.naming import source_names

    monkeypatch.chdir(tmp_path)
    for folder in ("a", "b", "blur"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "test.csv").write_text("filepath,label\nx.png,cat\n")
    args = cli.parser().parse_args(["eval", "model", "--zero-shot", "a/test.csv", "b/test.csv",
                                    "imagenet_v2"])
    config = base.get_config("test-vit")
    eval_sources.apply(config, args)
    assert list(config.eval.zero_shot) == ["a_test", "b_test", "imagenet_v2"]
    # A table has no splits: `b/test.csv@validation` was read whole, recorded as validation.
    with pytest.raises(ConfigError, match=r"^b/test.csv@validation: a table has no splits"):
        eval_sources.apply(base.get_config("test-vit"), cli.parser().parse_args(
            ["eval", "model", "--zero-shot", "b/test.csv@validation"]))
    assert [config.eval.zero_shot[n].dataset for n in ("a_test", "b_test")] == [
        "a/test.csv", "b/test.csv"]
    assert source_names(["lab@train", "lab@test", "x/y/blur", "blur"], "shifted",
                        taken=["blur", "noise"]) == ["lab_train", "lab_test", "y_blur",
                                                       f"{tmp_path.name}_blur"]
    # Folder names in any script keep their letters (they were all '_': `lab dir/日本` and
    # `lab dir/中国` became one task, the second's results replacing the first's); names no
    # folder tells apart are numbered.
    assert source_names(["lab dir/日本", "lab dir/中国", "tëst 日本@test"], "--zero-shot") == [
        "日本", "中国", "tëst_日本_test"]
    assert source_names(["###", "$$$", "a b"], "--zero-shot") == ["___", "____2", "a_b"]
    # One folder's .csv and .tsv of a name: told apart by the extension (they were
    # `<whole path>_test` and `<whole path>_test_2`).
    (tmp_path / "a" / "test.tsv").write_text("filepath\tlabel\nx.png\tcat\n")
    assert source_names(["a/test.csv", "a/test.tsv", "b/test.csv"],
                        "--zero-shot") == ["a_test", "test_tsv", "b_test"]
    assert source_names(["a/test.csv", "a/test.tsv"], "--zero-shot") == ["test_csv", "test_tsv"]
    args = cli.parser().parse_args(["eval", "model", "--zero-shot", "a/test.csv",
                                    f"{tmp_path}/a/test.csv"])
    with pytest.raises(ConfigError, match=r"--zero-shot: '.*/a/test.csv' is given twice \(also "
                                          r"as 'a/test.csv'\); give each source once."):
        eval_sources.apply(base.get_config("test-vit"), args)
    # The same spelling twice said "(as 'a/test.csv' too)" of itself.
    args = cli.parser().parse_args(["eval", "model", "--zero-shot", "a/test.csv", "a/test.csv"])
    with pytest.raises(ConfigError, match=r"^--zero-shot: 'a/test.csv' is given twice; give "):
        eval_sources.apply(base.get_config("test-vit"), args)
    # A folder's split and that split's folder are one source (scored twice, trial CO)
    (tmp_path / "d" / "test" / "cat").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"^--zero-shot: 'd/test' is given twice \(also as "
                                          r"'d@test'\); give each source once\.$"):
        source_names(["d@test", "d/test"], "--zero-shot")


def test_warnings_of_a_command_line_task_are_said_in_flag_terms():
    """`clip-jax eval --zero-shot DIR --class-names ...` warned about
    `config.eval.zero_shot.DIR.class_names`, a config path the user never wrote; inside the
    eval command a warning is rewritten as its errors are (`in_flag_terms`), and only there."""
    import logging

    from clip_jax.cli import eval_sources
    from clip_jax.runtime import logs

    seen = []
    handler = logging.Handler()
    handler.set_name(logs._HANDLER_NAME)  # the handler `show_warnings` installs
    handler.emit = lambda record: seen.append(handler.format(record))
    top, logger = logging.getLogger("clip_jax"), logging.getLogger("clip_jax.evaluation.x")
    top.addHandler(handler)
    origins = {"zero_shot.colours": "--zero-shot colours"}
    try:
        with logs.warnings_rewritten(lambda m: eval_sources.in_flag_terms(m, origins)):
            logger.warning("config.eval.%s.class_names: by position", "zero_shot.colours")
        logger.warning("config.eval.zero_shot.colours.class_names: elsewhere")
    finally:
        top.removeHandler(handler)
    assert seen == ["--zero-shot colours (--class-names): by position",
                    "config.eval.zero_shot.colours.class_names: elsewhere"]


def _train_error(argv):
    """The one line `clip-jax train ARGV` prints for a mistake in its command line (what
    `train.main` prints of the ConfigError `load` raises), with nothing loaded or trained."""
    from absl import flags

    from clip_jax.cli import train as entry

    with pytest.raises(ConfigError) as error:
        entry.load(["clip-jax train", *argv], flags.FlagValues())
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("flag, says", [
    (["--batch-size", "16"], "use --config.batch_size=16."),
    (["--batch_size=16"], "use --config.batch_size=16."),
    (["--lr", "1e-4"], "use --config.optimizer.lr=1e-4."),
    (["--wd", "0.1"], "use --config.optimizer.weight_decay=0.1."),
    (["--warmup", "100"], "use --config.warmup_steps=100."),
    (["--epochs", "3"], "use --config.total_steps=VALUE (optimizer steps, not epochs"),
    (["--train-data", "x.csv"], "use --config.data.table.train_path=VALUE (a CSV/TSV table) or "
                                "--config.data.webdataset.train_shards=VALUE"),
    (["--precision", "amp"], "use --config.model.dtype=VALUE (float32, bfloat16 or float16)."),
    (["--model", "ViT-B-32"], "use --config.model.name=ViT-B-32."),
    (["--pretrained", "openai"], "use --config.init_from=openai."),
    (["--workers", "8"], "use --config.data.table.num_threads=VALUE or "
                         "--config.data.webdataset.num_threads=VALUE"),  # not "workdir?"
    (["--total-steps", "5"], "use --config.total_steps=5."),
    (["--siglip"], "use --config.loss=VALUE (sigmoid or chunked_sigmoid)."),
    (["--grad-checkpointing"], "use --config.model.remat_policy=VALUE (full, dots or "
                               "dots_no_batch)."),
    (["--bf16"], "use --config.model.dtype=VALUE (bfloat16)."),
])
def test_other_trainers_flags_name_the_config_field_that_does_their_job(flag, says):
    """open_clip's / transformers' flags on `clip-jax train` said only "Unknown command line
    flag 'batch-size'" (and `--workers`: "Did you mean: workdir?"); each now names the
    --config.FIELD doing its job, from config_file.SYNONYMS or the base config's own names."""
    message = _train_error(["--config=tiny", "--workdir=w", *flag])
    name = flag[0].partition("=")[0]
    assert message.startswith(f"{name} is not a flag of clip-jax train"), message
    assert says in message and "workdir ?" not in message, message
    # An unknown flag with no such field still says how the command takes its settings.
    assert "--config.FIELD=VALUE" in _train_error(["--config=tiny", "--workdir=w", "--frob=1"])


@pytest.mark.parametrize("typed", [["--confg.batch_size=8"], ["--Config.batch_size=8"],
                                   ["--conifg.batch_size=8"], ["--confg.batch_size", "8"]])
def test_a_misspelt_config_prefix_is_spelt_out(typed, capsys):
    """`--confg.batch_size=8` said only "Unknown command line flag 'confg.batch_size'" (train)
    or "unrecognised arguments" (plan); both now give the override as meant, its value written
    with '=' or after a space."""
    meant = "did you mean --config.batch_size=8?"
    assert meant in _train_error(["--config=tiny", "--workdir=w", *typed])
    code, _, err = run(capsys, "plan", "--config", "tiny", "--topology", "v5e-8", *typed)
    assert code == 2 and meant in err, err


def test_plan_names_the_config_field_of_another_trainers_flag(capsys):
    code, _, err = run(capsys, "plan", "--config", "tiny", "--topology", "v5e-8",
                       "--batch-size", "64")
    assert (code, err) == (2, "error: --batch-size is not a flag of clip-jax plan (it takes "
                              "--config, --config.FIELD=VALUE and the flags of --help); use "
                              "--config.batch_size=64.\n")


@pytest.mark.parametrize("override, says", [
    ("--config.batch-size=16", "cannot apply --config.batch-size=16: unknown field "
                               "'batch-size'; did you mean --config.batch_size (field names "
                               "use '_', not '-')?"),
    ("--config.data.table.train-path=x.csv", "did you mean --config.data.table.train_path "
                                             "(field names use '_', not '-')?"),
    ("--config.optimizer.learning-rate=1", "did you mean --config.optimizer.lr (field names"),
    ("--config.Batch_Size=16", "did you mean --config.batch_size?"),
    ("--config.epochs=3", "did you mean --config.total_steps (optimizer steps, not epochs"),
    ("--config.optimizer.foo=1", "unknown field 'optimizer.foo'; the fields are those of"),
    # A field of another section, by its own name (trial AM)
    ("--config.model.lock_image=True", "unknown field 'model.lock_image'; did you mean "
                                       "--config.lock_image?"),
    ("--config.optimizer.batch_size=8", "did you mean --config.batch_size or "
                                        "--config.eval.batch_size?"),
    # t5x's and Megatron's axis names: `model` alone is model.name, under mesh the tensor axis
    ("--config.mesh.model=2", "did you mean --config.mesh.tensor (heads and MLP split over "
                              "devices)?"),
    ("--config.mesh.dp=2", "did you mean --config.mesh.data?"),
    ("--config.lock_vision=True", "did you mean --config.lock_image?"),  # trial CL
    ("--config.lock_img=True", "did you mean --config.lock_image?"),
    ("--config.lock_language=True", "did you mean --config.lock_text?"),
    ("--config.mesh.tp=2", "did you mean --config.mesh.tensor (heads and MLP split over "
                           "devices)?"),
    ("--config.mesh.replica=2", "did you mean --config.mesh.data?"),
])
def test_an_override_of_no_field_is_named_before_absl_parses_it(override, says):
    """`--config.batch-size=16` said "unknown field or wrong type (malformed node or string
    on line 1: <ast.Name object at 0x...>)": absl read the hyphen as Python. Every override's
    field is looked up in the loaded config first and a miss named with its fix."""
    message = _train_error(["--config=tiny", "--workdir=w", "--config.total_steps=3", override])
    assert says in message and "ast." not in message, message


def test_a_config_file_returning_a_dict_is_one_line(tmp_path, capsys):
    """`get_config()` returning a dict failed with "AttributeError: 'dict' object has no
    attribute 'mode'" (a traceback); anything not a ConfigDict is refused by name, for train,
    plan and eval --config alike."""
    for value in ("{'batch_size': 4}", "None"):
        (tmp_path / "d.py").write_text(f"def get_config():\n    return {value}\n")
        message = _train_error([f"--config={tmp_path / 'd.py'}", "--workdir=w"])
        kind = "dict" if value != "None" else "NoneType"
        assert message.startswith(f"the config file {tmp_path / 'd.py'}: get_config() returned "
                                  f"a {kind}; return an ml_collections.ConfigDict"), message
    code, _, err = run(capsys, "plan", "--config", str(tmp_path / "d.py"), "--topology", "v5e-8")
    assert code == 2 and "returned a NoneType" in err and len(err.splitlines()) == 1
    code, _, err = run(capsys, "eval", str(tmp_path), "--config", str(tmp_path / "d.py"))
    assert code == 2 and "returned a NoneType" in err and len(err.splitlines()) == 1
    # A run's config.json given as --config: "AttributeError: 'NoneType' object has no
    # attribute 'loader'"; now what it is, and how to resume or start from that run.
    # The resume advice only for a run's (trial AU: it was given for any JSON file, and
    # --workdir alone resumes nothing: the run's --config is needed again).
    run_dir = tmp_path / "run1"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    message = _train_error([f"--config={run_dir / 'config.json'}", "--workdir=w"])
    assert message == (f"the config file {run_dir / 'config.json'} is JSON; config files are "
                       "Python files with get_config() (as clip_jax/configs/tiny.py). A run's "
                       "config.json is its record: to resume that run, give its own --config "
                       f"and overrides again with --workdir {run_dir}; to start another from "
                       f"its weights, --config.init_from={run_dir}."), message
    for name, kind in (("other.json", "JSON"), ("cfg.yaml", "YAML"), ("cfg.yml", "YAML")):
        (tmp_path / name).write_text("batch_size: 4\n")
        message = _train_error([f"--config={tmp_path / name}", "--workdir=w"])
        assert message == (f"the config file {tmp_path / name} is {kind}; config files are "
                           "Python files with get_config() (as clip_jax/configs/tiny.py)."), message
    # A Python config of any name loads (it failed on 'NoneType' object has no attribute
    # 'loader'), as ml_collections loads it; and arguments absl leaves over are refused, where
    # an override after a stray "\ " was lost unsaid.
    from absl import flags

    from clip_jax.cli import train as entry

    (tmp_path / "mytiny").write_text(Path(entry.resolve_config_path("tiny")).read_text())
    config, _ = entry.load(["clip-jax train", f"--config={tmp_path / 'mytiny'}", "--workdir=w",
                            "--config.total_steps=7"], flags.FlagValues())
    assert config.total_steps == 7
    message = _train_error(["--config=tiny", "--workdir=w", " --config.total_steps=3"])
    assert message.startswith("unrecognised arguments [' --config.total_steps=3']: clip-jax "
                              "train takes --config, --workdir and overrides"), message


def test_eval_of_a_missing_model_says_so_before_asking_for_data(tmp_path, monkeypatch, capsys):
    """`clip-jax eval runs/demo/X` (no such run) said it 'records no dataset to evaluate on'
    and suggested a config path that exists only in a checkout (trial AU)."""
    (tmp_path / "runs" / "demo" / "Y").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "eval", "runs/demo/X")
    assert code == 2 and err.startswith("error: No checkpoint at 'runs/demo/X': runs/demo/ has "
                                        "no 'X' (it holds: Y)"), err


def test_an_index_output_naming_a_folder_is_refused_first(vit_workdir, tmp_path, monkeypatch,
                                                          capsys):
    """`--output newidx/` (no such folder yet) embedded every image, then failed with
    NotADirectoryError, leaving `..tmp-PID` in the current folder and `newidx/.partial/`. A
    path that cannot be a file is one line before the model loads, nothing written; a
    missing folder above a file name is created."""
    from clip_jax.inference import image_index

    photos = tmp_path / "photos"
    photos.mkdir()
    write_captioned_pngs(photos, 2, (40, 40), 0, ())
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    missing = str(tmp_path / "no-model")
    for output in ("newidx/", "newidx/sub/", ".", "..", "newidx/.", "/"):
        code, _, err = run(capsys, "index", str(photos), "--model", missing, "--output", output)
        assert code == 2 and len(err.splitlines()) == 1, (output, err)
        assert err.startswith(f"error: The index file {output!r} (--output) names a folder, "
                              "not a file"), err
    assert os.listdir(work) == []
    code, out, err = run(capsys, "index", str(photos), "--model", vit_workdir[0], "--output",
                         "new/deep/i.npz")
    assert code == 0 and os.listdir(work / "new" / "deep") == ["i.npz"], err
    # A save that fails leaves no temporary file beside its target.
    with pytest.raises(OSError):
        image_index._save_npz(str(work / "gone") + os.sep, x=np.zeros(2))
    assert sorted(os.listdir(work)) == ["new"]


@pytest.mark.parametrize("flag, value, says", [
    ("--labels", "mylabels.txt", "--labels 'mylabels.txt': no such file"),
    ("--labels", "lists/animals", "--labels 'lists/animals': no such file"),
    ("--labels", "Classes.CSV", "--labels 'Classes.CSV': no such file"),
    ("--labels", "DIR", "--labels 'DIR': is a folder"),
    ("--templates", "nonexist_templates.txt", "--templates 'nonexist_templates.txt': no such "
                                              "file"),
    ("--templates", "prompts/mine", "--templates 'prompts/mine': no such file"),
])
def test_a_missing_labels_or_templates_file_is_said_so(flag, value, says, tmp_path, capsys):
    """A file name that is not there was read as inline text: `--labels mylabels.txt` gave
    "1 class(es) ... needs at least 2", `--templates x.txt` "Unknown template set". A value
    that looks like a file (.txt/.csv/.tsv, or a path separator without a comma) is named
    as missing, before the model loads; labels and templates given inline are unchanged."""
    value = str(tmp_path) if value == "DIR" else value
    says = says.replace("'DIR'", repr(str(tmp_path)))
    other = {"--labels": ["--templates", "simple"], "--templates": ["--labels", "a,b"]}[flag]
    photos = tmp_path / "photos"
    photos.mkdir()
    write_captioned_pngs(photos, 1, (40, 40), 0, ())
    code, out, err = run(capsys, "zero-shot", "--model", str(tmp_path / "no-model"), flag,
                         value, *other, str(photos))
    assert (code, out) == (2, "") and err.startswith(f"error: {says}; ") and len(
        err.splitlines()) == 1, err
    for inline in (["--labels", "AC/DC,Blur"], ["--labels", "a,b", "--templates",
                                                 "a photo of a {} / a sketch"]):
        code, _, err = run(capsys, "zero-shot", "--model", str(tmp_path / "no-model"), *inline,
                           str(photos))
        assert code == 2 and "no such file" not in err and "no-model" in err, err
    if flag == "--templates":  # clip-jax eval's --templates too, before the model loads
        code, out, err = run(capsys, "eval", str(tmp_path / "no-model"), "--zero-shot",
                             str(photos), flag, value)
        assert (code, out) == (2, "") and err.startswith(f"error: {says}; "), err


def test_an_image_path_as_a_text_query_warns_in_flag_terms(vit_workdir, tmp_path, capsys):
    """`clip-jax search INDEX photo.jpg` printed Python's UserWarning with its file and line
    and the library's advice (pass pathlib.Path); the command says one `warning:` line naming
    --image, before the model loads, and still searches the text."""
    import warnings

    photos = tmp_path / "photos"
    photos.mkdir()
    write_captioned_pngs(photos, 2, (40, 40), 0, ())
    index = str(tmp_path / "i.npz")
    assert run(capsys, "index", str(photos), "--model", vit_workdir[0], "--output", index)[0] == 0
    query = str(photos / sorted(os.listdir(photos))[0])
    for given, says in ((query, "names an image file"),
                        ("holiday.jpg", "looks like an image file name")):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code, out, err = run(capsys, "search", index, given, "--top", "1")
        assert code == 0 and len(out.splitlines()) == 1, err
        assert [str(w.message) for w in caught] == []
        # (a long temporary path also fills the test model's 16-token context: said next)
        assert err.splitlines(keepends=True)[0] == (
            f"warning: the query {given!r} is searched as text, though it {says}; to search by "
            f"the image, pass --image {given}.\n")


def test_zero_shot_csv_has_one_column_per_name(vit_workdir, tmp_path, capsys):
    """`--output csv` with a label named `path` or `label` wrote `path,label,path,label,cat`,
    which pandas reads back as path.1 / label.1. Such labels are refused (before the model
    loads); any other header reads back as written."""
    pandas = pytest.importorskip("pandas")
    import io

    photos = tmp_path / "photos"
    photos.mkdir()
    write_captioned_pngs(photos, 2, (40, 40), 0, ())
    for labels in ("path,cat", "dog,label"):
        code, out, err = run(capsys, "zero-shot", "--model", str(tmp_path / "no-model"),
                             "--labels", labels, "--output", "csv", str(photos))
        clash = "path" if labels.startswith("path") else "label"
        assert (code, out) == (2, ""), err
        assert err.startswith(f"error: --labels has {clash!r}, a column of --output csv's own "
                              "(path, label, then one per label)"), err
    code, out, err = run(capsys, "zero-shot", "--model", vit_workdir[0], "--labels",
                         "paths,Label,cat", "--output", "csv", str(photos))
    assert code == 0, err
    table = pandas.read_csv(io.StringIO(out))
    assert list(table.columns) == ["path", "label", "paths", "Label", "cat"]
    assert len(table) == 2 and set(table["label"]) <= {"paths", "Label", "cat"}


@pytest.mark.parametrize("argv, dest", [
    (["index", "--model=~/m", "--output=~/i.npz", "~/photos"], ("model", "output", "images")),
    (["zero-shot", "--model=~/m", "--labels", "a,b", "~/p.jpg"], ("model", "images")),
    (["search", "~/i.npz", "q", "--model=~/m", "--image=~/p.jpg"], ("index", "model", "image")),
    (["eval", "~/run", "--config=~/c.py", "--data-dir=~/tfds", "--output=~/out",
      "--zero-shot=~/photos", "--retrieval=~/t.csv", "--robustness=~/photos"],
     ("path", "config", "data_dir", "output", "zero_shot", "retrieval", "robustness")),
    (["eval", "~/run", "--linear-probe", "~/a", "~/b", "--few-shot", "~/a", "~/b"],
     ("linear_probe", "few_shot")),
    (["export-hf", "~/run", "~/hf"], ("source", "output_dir")),
    (["demo", "--workdir=~/demo"], ("workdir",)),
])
def test_a_path_flag_given_with_equals_and_a_tilde_is_the_home_folder(argv, dest, monkeypatch):
    """`--output=~/x` reaches the program unexpanded (bash expands `~` only at a word's start):
    the index, the evaluation's results and the demo's run went into a folder named '~' in
    the current one. Every path flag is expanded as os.path.expanduser (the shell's rule)."""
    monkeypatch.setenv("HOME", "/home/someone")
    args = cli.parser().parse_args(argv)
    for name in dest:
        value = getattr(args, name)
        for path in value if isinstance(value, list) else [value]:
            assert path.startswith("/home/someone/"), (name, path)


def test_a_training_workdir_and_config_given_with_equals_and_a_tilde_are_at_home(
        monkeypatch, tmp_path, capsys):
    """`clip-jax train --workdir=~/run` trained into './~/run' (trial BB), and
    `--config=~/my.py` was "no such config file"."""
    from clip_jax.cli import train as train_cli

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "my.py").write_text("")
    assert train_cli.resolve_config_path("~/my.py:arg") == f"{tmp_path}/my.py:arg"
    seen = []

    def prepare(config, workdir):
        seen.append(workdir)
        raise ConfigError("stop here")

    monkeypatch.setattr(train_cli, "prepare", prepare)
    assert train_cli.run(None, "~/run") == 2
    assert seen == [f"{tmp_path}/run"]


def test_a_csv_stdout_cannot_write_is_refused_before_the_model_loads(vit_workdir, tmp_path,
                                                                    monkeypatch, capsys):
    """Under PYTHONIOENCODING=ascii `--output csv` wrote 'café.png' as 'caf\\xe9.png', a path
    no program finds, with exit 0. Refused in one line before the model loads (the model path
    of the first runs does not exist), naming the fix; a stream that can write the names
    (Latin-1 here) passes the check, and the csv module reads each name back as itself."""
    import csv
    import io

    photos = tmp_path / "photos"
    photos.mkdir()
    write_captioned_pngs(photos, 1, (40, 40), 0, ())
    os.rename(photos / os.listdir(photos)[0], photos / "café.png")
    for labels, encoding, bad in (("cat,dog", "ascii", str(photos / "café.png")),
                                  ("猫,dog", "latin-1", "猫")):
        stdout = io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors="backslashreplace")
        monkeypatch.setattr(sys, "stdout", stdout)
        code = cli.main(["zero-shot", "--model", str(tmp_path / "none"), "--labels", labels,
                         "--output", "csv", str(photos)])
        err = capsys.readouterr().err
        assert (code, stdout.buffer.getvalue()) == (2, b"")
        assert err == (f"error: --output csv: standard output's encoding ({encoding}) cannot "
                       f"write {bad!r}; run with PYTHONIOENCODING=utf-8, or use --output json "
                       "(which escapes what it cannot write).\n")
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="latin-1", errors="backslashreplace")
    monkeypatch.setattr(sys, "stdout", stdout)
    assert cli.main(["zero-shot", "--model", vit_workdir[0], "--labels", "crème,dog",
                     "--output", "csv", str(photos)]) == 0
    stdout.flush()
    rows = list(csv.reader(io.StringIO(stdout.buffer.getvalue().decode("latin-1"))))
    assert [rows[0][2:], rows[1][0]] == [["crème", "dog"], str(photos / "café.png")]


@pytest.mark.parametrize("argv, field, value", [
    (["search", "i.npz", "--top", "1", "--", "-red"], "query", "-red"),
    (["search", "i.npz", "--top", "1", "red"], "query", "red"),
    (["zero-shot", "--model", "m", "a", "--labels", "x,y", "--", "-b"], "images", ["a", "-b"]),
    (["index", "--model", "m", "a", "--output", "o", "--", "-b", "c"], "images",
     ["a", "-b", "c"]),
])
def test_words_after_a_double_dash_are_the_trailing_positional(argv, field, value):
    """`search INDEX --top 1 -- "-red"` said "unrecognized arguments: -- -red" (trial BB):
    after `--` every word is the command's last positional argument, as argparse reads `--`
    before the options."""
    args, extra = cli.parser().parse_known_args(argv)
    assert cli._take_trailing_positionals(args, extra) == []
    assert getattr(args, field) == value
    args, extra = cli.parser().parse_known_args(["search", "i.npz", "--top", "1", "--bad"])
    assert cli._take_trailing_positionals(args, extra) == ["--bad"]


@pytest.mark.parametrize("argv, said", [
    (["zero-shot", "--model", "m", "a.jpg", "--labels", "a,b", "--bogus"],
     "clip-jax zero-shot: error: unrecognized arguments: --bogus"),
    (["search", "i.npz", "red", "blue"], "clip-jax search: error: unrecognized arguments: blue; "
                                         "quote a query of several words: 'red blue'"),
])
def test_unknown_arguments_are_said_by_the_command(argv, said, capsys):
    """They were said with the top-level usage (`clip-jax: error:`), naming no command, and
    an unquoted query of two words with no hint (trial BS)."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.strip().splitlines()[-1] == said
    assert err.startswith(f"usage: clip-jax {argv[0]} ")


def test_options_before_the_command_are_said_as_such(capsys):
    """`clip-jax --config tiny train` said "invalid choice: 'tiny'" (trial BS)."""
    assert cli.main(["--config", "tiny", "train", "--workdir", "w"]) == 2
    assert capsys.readouterr().err == ("error: the command comes first, its options after it: "
                                       "clip-jax train --config tiny --workdir w\n")
    assert cli.main(["--config", "tiny"]) == 2
    assert capsys.readouterr().err.startswith("error: the command comes first, its options after "
                                              "it: clip-jax COMMAND --config tiny, COMMAND one "
                                              "of train, zero-shot, index, ")


def test_version_is_the_installed_distributions(capsys):
    """`clip-jax --version` (there was none) prints what pip installed, exit 0."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"clip-jax {importlib.metadata.version('clip_jax')}\n"
    assert clip_jax.__version__ == importlib.metadata.version("clip_jax")


def test_the_c_locale_writes_labels_and_names_as_a_utf8_locale_does(tmp_path):
    """LC_ALL=C with PYTHONUTF8=0: stdout is ASCII passing undecodable bytes through, so a
    label typed in UTF-8 (read as the text typed) raised UnicodeEncodeError mid-listing, JSON
    paths came out as '\\udcc3\\udca9' escapes, and a second `clip-jax index` reused none
    of its UTF-8-named entries. The same program in a UTF-8 locale is the reference: the same
    bytes on stdout, and the index's paths are os.listdir's in either."""
    (tmp_path / "café 猫.png").write_bytes(b"")
    code = ("import os, sys; from clip_jax.runtime import logs; logs.setup_console()\n"
            "from clip_jax.cli.common import json_line, text_path\n"
            "from clip_jax.inference.image_index import _decode, _encode\n"
            "name, = os.listdir(sys.argv[1])\n"
            "print(sys.argv[2], text_path(name), json_line({'path': name, 'top': [sys.argv[2]]}))\n"
            "print(_decode(_encode([name])) == [name], bytes(_encode([name])))\n")
    outputs = []
    for locale in ("C", "C.UTF-8"):
        env = dict(os.environ, LC_ALL=locale, PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
        outputs.append(subprocess.run([sys.executable, "-c", code, str(tmp_path), "crème 猫"],
                                      env=env, capture_output=True, check=True).stdout)
    assert outputs[0] == outputs[1]
    assert outputs[1].decode("utf-8").splitlines() == [
        'crème 猫 café 猫.png {"path": "café 猫.png", "top": ["crème 猫"]}',
        f"True {'café 猫.png'.encode()}"]


def _in_c_locale(text):
    """`text` as Python gives an argument in a locale that is not UTF-8 (LC_ALL=C,
    PYTHONUTF8=0, PYTHONCOERCECLOCALE=0): its bytes decoded as ASCII, the others escaped."""
    return text.encode("utf-8").decode("ascii", "surrogateescape")


def test_an_argument_in_a_c_locale_is_the_text_typed(vit_workdir, tmp_path, capsys):
    """In a locale that is not UTF-8, a query, labels and templates reached the tokenizer as
    surrogate escapes ('caf\\udcc3\\udca9'): other tokens, other rankings, no warning.
    They are read as the UTF-8 text typed: the same output as the text itself (the
    simulation of the locale is Python's own, checked in a subprocess); bytes that are not
    UTF-8 are one line."""
    env = dict(os.environ, LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    typed = ["café crème", "猫 noir", "une photo de {}"]
    seen = subprocess.run([sys.executable, "-c", "import sys; print(ascii(sys.argv[1:]))",
                           *typed], env=env, check=True, capture_output=True, text=True)
    assert seen.stdout.strip() == ascii([_in_c_locale(t) for t in typed])

    photos = tmp_path / "photos"
    photos.mkdir()
    write_captioned_pngs(photos, 3, (40, 40), 0, ())
    index = str(tmp_path / "i.npz")
    assert run(capsys, "index", str(photos), "--model", vit_workdir[0], "--output", index)[0] == 0
    outputs = []
    for text in (str, _in_c_locale):
        outputs.append([
            run(capsys, "zero-shot", "--model", vit_workdir[0], "--labels",
                text(f"{typed[0]},{typed[1]},dog"), "--templates", text(typed[2]), "--output",
                "json", str(photos))[:2],
            run(capsys, "search", index, text(typed[1]), "--output", "json")[:2]])
    assert outputs[0] == outputs[1]
    (code, shown), (searched, _) = outputs[0]
    assert code == searched == 0 and '"label": "猫 noir"' in shown
    latin1 = "caf\xe9".encode("latin-1").decode("ascii", "surrogateescape")
    assert run(capsys, "search", index, latin1) == (
        2, "", "error: The query 'caf\\xe9' is not UTF-8 text (typed in another encoding); "
               "give it in UTF-8.\n")


def test_demo_help_gives_the_readmes_measured_time(capsys):
    """`clip-jax demo --help` said "~8 minutes on 2 cores" where the README measures 9 min
    17 s: the help gives the README's figure (read from its wall-time row here) and no other."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    measured = re.search(r"\| wall time: training \+ evaluation [^|]*\| ([\d]+ min [\d]+ s) "
                         r"from start", readme).group(1)
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert measured in help_text, help_text
    assert not re.search(r"\d+[- ]minute", help_text), help_text


def test_eval_exif_transpose_flag_sets_the_data_config():
    """`--no-exif-transpose` reaches config.data.build.exif_transpose, which the labelled
    eval sources read by (tests/test_labelled_data.py); unset, the config's value stays."""
    parse = cli.parser().parse_args
    assert parse(["eval", "w", "--no-exif-transpose"]).exif_transpose is False
    assert parse(["eval", "w", "--exif-transpose"]).exif_transpose is True
    assert parse(["eval", "w"]).exif_transpose is None
    assert parse(["eval", "w", "--robustness", "d", "--train-split", "val"]).train_split == "val"


def test_json_output_writes_non_ascii_names_as_themselves_where_stdout_can(monkeypatch):
    """`--output json` printed café_猫.jpg as caf\\u00e9_\\u732b.jpg: on a UTF-8 stdout the
    line holds the characters; on an ASCII one, and for a name with undecodable bytes (a
    lone surrogate from os.listdir), the escapes; json.loads reads back the same record."""
    import io

    record = {"path": "flat/café_猫_🐱.jpg", "top": [{"label": "猫", "probability": 0.5}]}
    broken = {"path": os.fsdecode(b"caf\xe9.jpg"), "rank": 1}
    for encoding, readable in (("utf-8", True), ("ascii", False)):
        monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BytesIO(), encoding=encoding))
        line = cli.common.json_line(record)
        assert ("café_猫_🐱" in line) is readable and json.loads(line) == record
        line = cli.common.json_line(broken)
        assert line.isascii() and json.loads(line) == broken
        print(line)  # writable


@pytest.mark.parametrize("encoding", ["ascii", "utf-8"])
def test_names_the_terminal_cannot_show_do_not_kill_a_command(encoding):
    """Under PYTHONIOENCODING=ascii a CJK file name killed `clip-jax zero-shot` and `search`
    (text and csv output) with UnicodeEncodeError. The entry points' console setup makes such
    a name print escaped there; on UTF-8 a name with undecodable bytes prints as its bytes."""
    code = ("import os; from clip_jax.runtime import logs; logs.setup_console(); "
            "print('flat/café_猫.jpg'); print(os.fsdecode(b'caf\\xe9.jpg')); "
            "import sys; print('猫', file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          env={**os.environ, "PYTHONIOENCODING": encoding})
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    if encoding == "ascii":
        assert first == rb"flat/caf\xe9_\u732b.jpg" and proc.stderr.strip() == rb"\u732b"
        assert second == rb"caf\udce9.jpg"
    else:
        assert first == "flat/café_猫.jpg".encode() and second == b"caf\xe9.jpg"


def test_every_command_help_opens_with_what_it_does(capsys):
    """`clip-jax demo --help` began with its usage and options, without the line
    `clip-jax --help` lists for it (python -m clip_jax.demo --help had one)."""
    for name, (help_text, _, _) in cli.COMMANDS.items():
        with pytest.raises(SystemExit):
            cli.parser().parse_args([name, "--help"])
        out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert " ".join(f"{help_text[0].upper()}{help_text[1:]}.".split()) in out, name


@pytest.mark.parametrize("config", [["--config", "tiny"], ["--config=tiny"]])
def test_an_override_before_the_config_flag_applies(config):
    """`clip-jax train --config.data.dataset=... --config tiny` was absl's "Found
    --config.data.dataset=... in argv before a value for --config was specified" (trial BC):
    flags go in any order, as everywhere else."""
    from absl import flags

    from clip_jax.cli import train as train_cli

    loaded, workdir = train_cli.load(["clip-jax train", "--workdir=w", "--config.batch_size=4",
                                      *config, "--config.seed=7"], flags.FlagValues())
    assert (loaded.batch_size, loaded.seed, workdir) == (4, 7, "w")
