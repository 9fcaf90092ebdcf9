"""The evaluation suite end to end: labelled folders, mock TFDS shifted ImageNets and the
`clip-jax eval` command -> metrics, checked against the unsharded model on Pillow-prepared
images with numpy / scikit-learn, and the results files against pandas."""

import json
import os
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image
pytest.importorskip("sklearn")  # the test extra; without it these tests skip
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score

from clip_jax.data._tf import tf  # noqa: F401  (hides accelerators before TFDS starts TensorFlow)
import clip_jax
from clip_jax import cli
from clip_jax.errors import ConfigError
from clip_jax.evaluation import report as eval_report
from clip_jax.evaluation import evaluate
from clip_jax.evaluation import few_shot
from clip_jax.evaluation import imagenet_names
from clip_jax.evaluation import imagenet_subsets
from clip_jax.evaluation import plot_fonts
from clip_jax.data import sources
from clip_jax.data import options as data_options
from clip_jax.data import labelled as labelled_data
from clip_jax.data import templates
from clip_jax.models import create_model
from clip_jax.data.preprocess import preprocess
from clip_jax.data.tokenizer import tokenize
from clip_jax.configs import base

import tensorflow_datasets as tfds

from compile_count import backend_compiles
from unsharded import embed

COLOURS = {"red": 0, "green": 1, "blue": 2}


@pytest.fixture(scope="module")
def model():
    return create_model("test-vit", rng=3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 5)):
        for name, channel in COLOURS.items():
            os.makedirs(root / split / name)
            for i in range(n):
                pixels = rng.integers(0, 90, (32, 32, 3), dtype=np.uint8)
                pixels[..., channel] += 150
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def class_embeddings(module, variables, names, prompts):
    emb = embed(module, variables, tokens=tokenize(templates.prompts(names, prompts), 16))
    mean = emb.reshape(len(prompts), len(names), -1).mean(0)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def config_for(**tasks):
    config = base.get_config("test-vit")
    config.model.dtype = "float32"
    config.eval.batch_size = 8
    config.eval.evaluators = ",".join(tasks)
    for kind, task in tasks.items():
        config.eval[kind] = {"t": task}
    return config


def test_evaluating_the_same_model_again_compiles_nothing(folder, model):
    """`evaluate_model` built new jitted embedding functions on every call: evaluating
    checkpoints in a loop (or a model rebuilt from the same config) compiled the image and
    text towers again each time. The functions are kept per model, mesh and shardings."""
    module, variables = model
    config = config_for(zero_shot=evaluate.zero_shot_task(str(folder), templates="default"))
    first, _ = evaluate.evaluate_model(config, module, variables)
    with backend_compiles() as compiles:
        again, _ = evaluate.evaluate_model(config, clip_jax.models.CLIP(module.config),
                                           variables)
    assert again == first and compiles == []


def test_zero_shot_prompts_cut_at_the_context_are_said(folder, model, tmp_path, caplog):
    """`clip-jax eval`'s zero-shot tokenised its prompts without the check `clip-jax
    zero-shot` and search make: a long template or class name was cut at the model's context
    unsaid. The prompts said to fill it are those whose open_clip tokens leave no padding."""
    import logging

    import open_clip

    module, variables = model
    length = module.config.context_length
    chosen = ("a {}.", "a blurry photo of a {} " + "seen from far away " * 3)
    (tmp_path / "templates.txt").write_text("\n".join(chosen))
    config = config_for(zero_shot=evaluate.zero_shot_task(
        str(folder), templates=str(tmp_path / "templates.txt")))
    with caplog.at_level(logging.WARNING, "clip_jax"):
        evaluate.evaluate_model(config, module, variables)
    prompts = templates.prompts(labelled_data.read(str(folder), "test").class_names, chosen)
    filled = (open_clip.tokenize(prompts, context_length=length)[:, -1] != 0).numpy()
    first = prompts[int(np.flatnonzero(filled)[0])]
    said = [r.getMessage() for r in caplog.records if "context" in r.getMessage()]
    assert said == [f"{filled.sum()} of {len(prompts)} texts (the first {first[:57] + '...'!r}) "
                    f"fill the model's {length}-token context, so any words past it are cut (as "
                    "OpenAI's tokenizer cuts them) and play no part; shorten them to the key "
                    "words"]


def test_a_resnet_with_running_statistics_evaluates_as_its_reference(folder):
    """`evaluate_model` (and `clip-jax eval`) of any ResNet failed with "sharding should be an
    instance of jax.sharding" (trial P): its BatchNorm statistics' shardings kept their
    initialiser boxes. Zero-shot top-1 against the model applied directly."""
    module, variables = create_model("test-resnet", rng=5)
    assert variables["batch_stats"]
    config = config_for(zero_shot=evaluate.zero_shot_task(str(folder), templates="default"))
    config.model.name = "test-resnet"
    metrics, _ = evaluate.evaluate_model(config, module, variables)
    test = labelled_data.read(str(folder), "test")
    images = embed(module, variables, images=preprocess(
        [Image.open(f).convert("RGB") for f in test.files], module.config))
    classes = class_embeddings(module, variables, list(test.class_names), templates.DEFAULT)
    assert metrics["zero_shot/t/top1"] == pytest.approx(
        np.mean((images @ classes.T).argmax(1) == test.labels), abs=1e-6)


def test_folder_zero_shot_few_shot_and_robustness_match_the_reference(folder, model, tmp_path):
    module, variables = model
    config = config_for(
        zero_shot=evaluate.zero_shot_task(str(folder), templates="default",
                                          compare_prompts=True),
        few_shot=evaluate.few_shot_task(str(folder), shots="1,2", seeds=2, l2="0.01",
                                        zero_shot_init=False, templates="default"),
        robustness=evaluate.robustness_task(str(folder), shifts="greyscale,invert",
                                            shifted=f"{folder}@train",
                                            baseline="0.6:0.5,0.9:0.7", templates="default"))
    metrics, evaluation = evaluate.evaluate_model(config, module, variables)

    test = labelled_data.read(str(folder), "test")
    train = labelled_data.read(str(folder), "train")
    pil = [Image.open(f).convert("RGB") for f in test.files]
    images = embed(module, variables, images=preprocess(pil, module.config))
    names = list(test.class_names)  # the folder's order (sorted), which its labels index
    ensemble = class_embeddings(module, variables, names, templates.DEFAULT)
    top1 = lambda emb, classes: np.mean((emb @ classes.T).argmax(1) == test.labels)  # noqa
    assert metrics["zero_shot/t/top1"] == pytest.approx(top1(images, ensemble), abs=1e-6)
    for key, prompts in (("top1_class_name", ("{}",)), ("top1_one_template", templates.DEFAULT[:1])):
        assert metrics[f"zero_shot/t/{key}"] == pytest.approx(
            top1(images, class_embeddings(module, variables, names, prompts)), abs=1e-6)
    # `clip-jax eval --help` names the metrics --compare-prompts adds (it said top1_bare_name)
    compared = {k.split("/")[-1] for k in metrics if k.startswith("zero_shot/t/top1_")}
    helped = next(a.help for a in next(
        p for p in cli.parser()._subparsers._group_actions[0].choices.values()
        if p.prog.endswith(" eval"))._actions if "--compare-prompts" in a.option_strings)
    assert compared == set(re.findall(r"top1_\w+", helped)), helped

    train_emb = embed(module, variables, images=preprocess(
        [Image.open(f).convert("RGB") for f in train.files], module.config))
    for k in (1, 2):
        accs = []
        for seed in range(2):
            fit = few_shot.sample_shots(train.labels, k, np.random.default_rng(seed))
            clf = LogisticRegression(C=1 / (0.01 * len(fit)), tol=1e-10, max_iter=10_000)
            clf.fit(train_emb[fit].astype(np.float64), train.labels[fit])
            accs.append(np.mean(clf.predict(images) == test.labels))
        assert metrics[f"few_shot/t/{k}shot_top1"] == pytest.approx(np.mean(accs),
                                                                     abs=1.01 / len(images))
    assert metrics["few_shot/t/zero_shot_top1"] == pytest.approx(top1(images, ensemble))

    grey = embed(module, variables, images=preprocess(
        [p.convert("L").convert("RGB") for p in pil], module.config))
    inverted = embed(module, variables, images=preprocess(
        [Image.fromarray(255 - np.asarray(p)) for p in pil], module.config))
    x = np.log(np.array([0.6, 0.9]) / (1 - np.array([0.6, 0.9])))
    y = np.log(np.array([0.5, 0.7]) / (1 - np.array([0.5, 0.7])))
    slope = np.sum((x - x.mean()) * (y - y.mean())) / np.sum((x - x.mean()) ** 2)
    intercept = y.mean() - slope * x.mean()
    reference = top1(images, ensemble)
    assert metrics["robustness/t/reference_top1"] == pytest.approx(reference)
    for name, emb in (("greyscale", grey), ("invert", inverted)):
        shifted = top1(emb, ensemble)
        assert metrics[f"robustness/t/{name}_top1"] == pytest.approx(shifted)
        assert metrics[f"robustness/t/{name}_drop"] == pytest.approx(reference - shifted)
        logit_ref = np.log(np.clip(reference, 1e-4, 1 - 1e-4) / (1 - np.clip(reference, 1e-4,
                                                                              1 - 1e-4)))
        expected = shifted - 1 / (1 + np.exp(-(slope * logit_ref + intercept)))
        assert metrics[f"robustness/t/{name}_effective_robustness"] == pytest.approx(expected)
    train_set = f"{folder.name}_train"  # the training split as a shifted set, its own images
    assert metrics[f"robustness/t/{train_set}_top1"] == pytest.approx(
        np.mean((train_emb @ ensemble.T).argmax(1) == train.labels), abs=1e-6)

    where = evaluation.provenance["zero_shot/t"]
    assert where == {"data": f"image folder {folder}/test", "split": "test", "images": 15,
                     "unreadable": 0, "skipped": 0, "classes": 3, "templates": "default (12)",
                     "trained_on": ""}
    table = eval_report.rows(metrics, evaluation.provenance, "test-vit")
    # Each row names the data, split and image count its number comes from (trial s29): the
    # shifted training split its own, a synthetic shift the reference's, a mean all it averages.
    rows = pd.DataFrame(table).query("evaluator == 'robustness'").set_index("metric")
    n_test, n_train = (len(list((folder / split).glob("*/*.png"))) for split in ("test", "train"))
    test_data, train_data = f"image folder {folder}/test", f"image folder {folder}/train"
    for metric, where in {
            "reference_top1": (test_data, "test", n_test),
            f"{train_set}_top1": (train_data, "train", n_train),
            f"{train_set}_drop": (train_data, "train", n_train),
            f"{train_set}_effective_robustness": (train_data, "train", n_train),
            "greyscale_drop": (test_data, "test +greyscale", n_test),
            "mean_shifted_top1": (f"mean over greyscale, invert, {train_set}",
                                  "test +greyscale, test +invert, train",
                                  2 * n_test + n_train)}.items():
        assert tuple(rows.loc[metric, ["dataset", "split", "images"]]) == where, metric
    # Top-5 among the folder's 3 classes would be 1 whatever the model: it does not apply.
    assert metrics["zero_shot/t/top5"] is None
    for line in eval_report.markdown(table).splitlines()[2:]:  # every value legible, none 0.0000
        evaluator, task, metric, value = [c.strip() for c in line.strip("|").split("|")][:4]
        expected = metrics[f"{evaluator}/{task}/{metric}"]
        if expected is None:
            assert value == "-"
        else:
            assert float(value) == pytest.approx(expected, rel=2e-3, abs=5e-5)
    assert [eval_report.number(v) for v in (1e-6, 0.93751, 0.0, -1.39e-17, -3e-4)] == [
        "1e-06", "0.9375", "0.0000", "0.0000", "-0.0003"]
    paths = eval_report.write(str(tmp_path), table, evaluation.details)
    frame = pd.read_csv(tmp_path / "results.csv")
    assert len(frame) == len(metrics)
    for row in frame.itertuples():
        expected = metrics[f"{row.evaluator}/{row.task}/{row.metric}"]
        assert np.isnan(row.value) if expected is None else row.value == pytest.approx(expected)
    assert ",t,top5,,zero_shot," in (tmp_path / "results.csv").read_text()
    results = json.load(open(tmp_path / "results.json"))["results"]
    assert results[0]["metric"] == "top1"
    assert [r["value"] for r in results if r["metric"] == "top5"] == [None]
    for path in paths[2:]:
        assert Image.open(path).size[0] > 100
    assert {os.path.basename(p) for p in paths[2:]} == {
        "per_class_t.png", "few_shot_t.png", "robustness_t.png"}
    # Rerun into the same folder: an earlier task's plot goes, the user's own files stay.
    for name in ("few_shot_gone.png", "few_notes.png", "per_class.txt"):
        (tmp_path / name).write_bytes(b"x")
    eval_report.write(str(tmp_path), table, evaluation.details)
    assert not (tmp_path / "few_shot_gone.png").exists()
    assert (tmp_path / "few_notes.png").exists() and (tmp_path / "per_class.txt").exists()
    assert (tmp_path / "few_shot_t.png").exists()


def bundled_fonts_only(monkeypatch):
    """Matplotlib's font list cut to the fonts it ships, none with CJK characters (Last
    Resort's are boxes): a machine without a CJK font."""
    import matplotlib
    from matplotlib import font_manager

    monkeypatch.setattr(font_manager.fontManager, "ttflist", [
        f for f in font_manager.fontManager.ttflist
        if f.fname.startswith(matplotlib.get_data_path())])


def plot_warnings(caplog, recwarn, class_names, path):
    """The report's warnings and Python's UserWarnings (Matplotlib's) of a per-class plot."""
    caplog.clear()
    recwarn.clear()
    detail = {"class_names": class_names, "accuracy": [0.5, 1.0, 0.25, None][:len(class_names)]}
    with caplog.at_level("WARNING"):
        eval_report.plot_per_class(detail, str(path), "t")
    assert Image.open(path).size[0] > 100
    said = [r.getMessage() for r in caplog.records if r.name == plot_fonts.__name__]
    return said, [str(w.message) for w in recwarn if issubclass(w.category, UserWarning)]


def test_labels_the_plot_font_lacks_are_one_warning_naming_them(tmp_path, monkeypatch, caplog,
                                                                recwarn):
    """A trial's CJK class names printed Matplotlib's multi-line `UserWarning: Glyph 40644
    (\\N{CJK UNIFIED IDEOGRAPH-9EC4}) missing from font(s) DejaVu Sans.` once per character,
    and the plot showed boxes. Without a font that has them, one warning names the labels
    drawn with boxes, in the plot's order (a class without test images is not drawn), and
    that the results keep the names; ASCII labels warn of nothing."""
    bundled_fonts_only(monkeypatch)
    said, python = plot_warnings(caplog, recwarn, ["黄色", "red", "青色", "蓝色"],
                                 tmp_path / "cjk.png")
    assert python == [] and len(said) == 1 and "\n" not in said[0], (python, said)
    assert said[0].startswith(f"{tmp_path / 'cjk.png'}: the plot's font (DejaVu Sans) lacks "
                              "characters of '青色', '黄色', drawn as boxes there (results.csv "
                              "and results.json keep the names); install a font"), said
    assert plot_warnings(caplog, recwarn, ["yellow", "red"], tmp_path / "ascii.png") == ([], [])


def test_labels_the_plot_font_lacks_fall_back_to_an_installed_font_with_them(tmp_path, caplog,
                                                                             recwarn):
    """`⌒` is not in DejaVu Sans, Matplotlib's default font, but is in DejaVu Sans Mono, which
    Matplotlib ships: the label takes it from there (Matplotlib's font fallback), so no
    character is a box and nothing warns."""
    from matplotlib import font_manager, ft2font

    default = font_manager.findfont(font_manager.FontProperties())
    assert ord("⌒") not in ft2font.FT2Font(str(default)).get_charmap()
    assert plot_warnings(caplog, recwarn, ["arc ⌒", "red"], tmp_path / "arc.png") == ([], [])


def test_a_tables_skipped_rows_reach_the_results_and_repeated_rows_are_warned(
        folder, model, tmp_path, caplog):
    """Trial E: rows skipped for a missing image were said on the console only (results.csv
    and results.json read `unreadable 0`), and rows repeating an image were scored again
    without a word. pandas counts both: rows whose file is not there, and `duplicated` rows."""
    module, variables = model
    test = labelled_data.read(str(folder), "test")
    names = [test.class_names[y] for y in test.labels]
    files = [*test.files, str(tmp_path / "gone.png"), test.files[0], test.files[1],
             f"{tmp_path}/../{tmp_path.name}/nope.png"]
    other = next(name for name in test.class_names if name != names[1])
    labels = [*names, names[0], names[0], other, names[0]]
    pd.DataFrame({"filepath": files, "label": labels}).to_csv(tmp_path / "t.csv", index=False)
    table = pd.read_csv(tmp_path / "t.csv")
    exists = table.filepath.map(os.path.exists)
    repeated = table[exists].filepath.map(os.path.realpath).duplicated()
    config = config_for(zero_shot=evaluate.zero_shot_task(str(tmp_path / "t.csv"),
                                                          templates="simple"))
    with caplog.at_level("WARNING"):
        metrics, evaluation = evaluate.evaluate_model(config, module, variables)
    where = evaluation.provenance["zero_shot/t"]
    assert (where["images"], where["skipped"]) == (exists.sum(), (~exists).sum())
    assert (f"{repeated.sum()} row(s) list an image file a row above lists already (line "
            f"{len(test.files) + 3} repeats line 2: {test.files[0]}), 1 of them with another "
            "label;") in caplog.text
    eval_report.write(str(tmp_path / "out"), eval_report.rows(
        metrics, evaluation.provenance, "test-vit"), evaluation.details)
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert set(results.skipped) == {(~exists).sum()}


def test_probes_map_test_classes_listed_in_another_order_by_name(folder, model, tmp_path):
    """Test data with the training classes in another order (a table whose classnames.txt
    lists them so) was refused; its labels are now mapped by name: the linear probe and the
    few-shot probes score exactly as on the folder's own test split, and a class only one side
    has is still refused."""
    module, variables = model
    test = labelled_data.read(str(folder), "test")
    reordered = list(reversed(test.class_names))
    (tmp_path / "classnames.txt").write_text("\n".join(reordered) + "\n")
    pd.DataFrame({"filepath": test.files, "label": [test.class_names[y] for y in test.labels]}
                 ).to_csv(tmp_path / "test.csv", index=False)
    tasks = lambda test_dataset: dict(  # noqa: E731
        linear_probe=evaluate.linear_probe_task(str(folder), "train", "test", l2="0.01",
                                                test_dataset=test_dataset),
        few_shot=evaluate.few_shot_task(str(folder), "train", "test", shots="1,2", seeds=2,
                                        l2="0.01", test_dataset=test_dataset,
                                        templates="simple"))
    same, _ = evaluate.evaluate_model(config_for(**tasks(str(folder))), module, variables)
    mapped, evaluation = evaluate.evaluate_model(config_for(**tasks(str(tmp_path / "test.csv"))),
                                                 module, variables)
    assert evaluation.provenance["few_shot/t"]["data"] == f"table {tmp_path}/test.csv"
    # What each probe was fit on is recorded beside what it was scored on (trial M: the
    # results never said "train").
    n_train = len(labelled_data.read(str(folder), "train").files)
    for key in ("linear_probe/t", "few_shot/t"):
        assert evaluation.provenance[key]["trained_on"] == (
            f"image folder {folder}/train (train): {n_train} images"), key
    assert evaluation.provenance["few_shot/t/zero_shot_top1"]["trained_on"] == ""  # trial N
    assert mapped == pytest.approx(same, abs=1e-6)
    assert 0 < same["few_shot/t/zero_shot_top1"] and 0 < same["linear_probe/t/accuracy"]
    # A class only the test data has, with an image (with none, there is nothing to score).
    (tmp_path / "classnames.txt").write_text("\n".join(reordered + ["purple"]) + "\n")
    with open(tmp_path / "test.csv", "a") as f:
        f.write(f"{test.files[0]},purple\n")
    with pytest.raises(ConfigError, match=r"only in the test data: 'purple' \(1 class\)"):
        evaluate.evaluate_model(config_for(**tasks(str(tmp_path / "test.csv"))), module,
                                variables)


def test_class_names_in_another_unicode_form_are_the_same_classes(folder, model, tmp_path):
    """A Mac's folder names are decomposed (NFD: 'e' + U+0301), most tables composed (NFC):
    the linear probe trained on such a folder warned that 'café' had no training images and
    scored it as misses, and few-shot refused it (trial CE). Names compare in NFC: the probes
    score as on one form throughout, a table spelling one class both ways included."""
    import shutil
    import unicodedata

    module, variables = model
    french = {"red": "rouge écarlate", "green": "vert émeraude", "blue": "bleu céleste"}
    for form in ("NFC", "NFD"):
        for colour, name in french.items():
            shutil.copytree(folder / "train" / colour,
                            tmp_path / form / "train" / unicodedata.normalize(form, name))
    assert len({unicodedata.normalize("NFD", n) for n in french.values()} & set(
        os.listdir(tmp_path / "NFD" / "train"))) == 3  # the file system kept the forms apart
    test = labelled_data.read(str(folder), "test")
    labels = [french[test.class_names[y]] for y in test.labels]
    labels[0] = unicodedata.normalize("NFD", labels[0])  # one row typed the other way
    pd.DataFrame({"filepath": test.files, "label": labels}).to_csv(tmp_path / "test.csv",
                                                                    index=False)
    results = {}
    for form in ("NFC", "NFD"):
        train = str(tmp_path / form)
        results[form], _ = evaluate.evaluate_model(config_for(
            linear_probe=evaluate.linear_probe_task(train, "train", "test", l2="0.01",
                                                    test_dataset=str(tmp_path / "test.csv")),
            few_shot=evaluate.few_shot_task(train, "train", "test", shots="1,2", seeds=2,
                                            l2="0.01", test_dataset=str(tmp_path / "test.csv"),
                                            templates="simple")), module, variables)
    assert results["NFD"] == pytest.approx(results["NFC"], abs=1e-6)
    same, _ = evaluate.evaluate_model(config_for(linear_probe=evaluate.linear_probe_task(
        str(folder), "train", "test", l2="0.01")), module, variables)
    assert results["NFC"]["linear_probe/t/accuracy"] == pytest.approx(
        same["linear_probe/t/accuracy"], abs=1e-6)  # every test image scored, none a miss
    # Both forms as two class folders of one split (Linux keeps them apart): refused, naming
    # the class and the likely cause (it said "a class named twice" of neither, trial CG).
    shutil.copytree(tmp_path / "NFD" / "train" / unicodedata.normalize("NFD", french["red"]),
                    tmp_path / "NFC" / "train" / unicodedata.normalize("NFD", french["red"]))
    with pytest.raises(ConfigError, match=rf"image folder {tmp_path}/NFC/train names a class "
                                          r"twice \('rouge écarlate'\): .* another Unicode "
                                          r"form .*; merge them into one class\.$"):
        evaluate.evaluate_model(config_for(linear_probe=evaluate.linear_probe_task(
            str(tmp_path / "NFC"), "train", "test", l2="0.01",
            test_dataset=str(tmp_path / "test.csv"))), module, variables)


def test_probe_classes_written_with_underscores_match_the_spaced_names(folder, model,
                                                                      tmp_path):
    """Training folders `dark_red` against a table labelled `dark red`: the linear probe
    warned that the class had no training images and scored it as misses, few-shot refused
    (trial CK), though prompts read both as 'dark red'. They match as prompts read them."""
    import shutil

    module, variables = model
    for colour in COLOURS:
        shutil.copytree(folder / "train" / colour, tmp_path / "train" / f"dark_{colour}")
    test = labelled_data.read(str(folder), "test")
    pd.DataFrame({"filepath": test.files,
                  "label": [f"dark {test.class_names[y]}" for y in test.labels]}).to_csv(
        tmp_path / "test.csv", index=False)
    spaced, _ = evaluate.evaluate_model(config_for(
        linear_probe=evaluate.linear_probe_task(str(tmp_path), "train", "test", l2="0.01",
                                                test_dataset=str(tmp_path / "test.csv")),
        few_shot=evaluate.few_shot_task(str(tmp_path), "train", "test", shots="1", seeds=1,
                                        l2="0.01", test_dataset=str(tmp_path / "test.csv"),
                                        templates="simple")), module, variables)
    same, _ = evaluate.evaluate_model(config_for(linear_probe=evaluate.linear_probe_task(
        str(folder), "train", "test", l2="0.01")), module, variables)
    assert spaced["linear_probe/t/accuracy"] == pytest.approx(same["linear_probe/t/accuracy"],
                                                              abs=1e-6)


def test_a_classnames_file_beside_a_table_is_said_as_written_as_class_names_are(
        folder, model, tmp_path):
    """The same names file gave other zero-shot numbers beside a table of class indices
    (underscores read as spaces: `five_5` prompted as "five 5") than as --class-names (as
    written): a trial's 0.1143 against 0.1000 on one table. A names file is the user's words
    either way; prompts say them as written, so both readings score alike."""
    import shutil

    module, variables = model
    test = labelled_data.read(str(folder), "test")
    written = [f"{name}_{k}" for k, name in enumerate(test.class_names)]
    pd.DataFrame({"filepath": test.files, "label": test.labels}).to_csv(
        tmp_path / "test.csv", index=False)
    (tmp_path / "classnames.txt").write_text("\n".join(written) + "\n")
    task = lambda **names: evaluate.zero_shot_task(  # noqa: E731
        str(tmp_path / "test.csv"), templates="simple", **names)
    beside, evaluation = evaluate.evaluate_model(config_for(zero_shot=task()), module, variables)
    assert evaluation.details["per_class/t"]["class_names"] == written
    shutil.move(tmp_path / "classnames.txt", tmp_path / "names.txt")
    given, evaluation = evaluate.evaluate_model(
        config_for(zero_shot=task(class_names=str(tmp_path / "names.txt"))), module, variables)
    assert evaluation.details["per_class/t"]["class_names"] == written
    assert given == pytest.approx(beside, abs=1e-7)


def test_robustness_warns_of_a_shifted_set_that_is_the_probe_data_or_the_reference(
        folder, model, tmp_path, caplog):
    """`--robustness DIR --shifted DIR/@train`: the probe baseline was scored on the images it
    was fit on without a word, and `DIR/` and `DIR` were two listings (each hidden file warned
    twice) and two embeddings of one split. A path is one pass however it is written; a
    shifted set that is the probe's training data, or the reference itself, is named."""
    import shutil

    module, variables = model
    root = tmp_path / "colours"
    shutil.copytree(folder, root)
    (root / "train" / "red" / ".DS_Store").write_bytes(b"Bud1")
    os.symlink(root / "test", tmp_path / "link")  # the reference through a link
    config = config_for(robustness=evaluate.robustness_task(
        str(root), shifts="", shifted=f"{root}/@train,{root}/./test,{tmp_path / 'link'}",
        baseline="linear_probe", templates="simple"))
    with caplog.at_level("WARNING"):
        metrics, evaluation = evaluate.evaluate_model(config, module, variables)
    said = [r.getMessage() for r in caplog.records]
    assert sum(".DS_Store" in m for m in said) == 1
    assert any(m.startswith("robustness/t: the shifted set(s) colours_train are the data the "
                            f"linear-probe baseline is fit on (image folder {root}/train)")
               for m in said), said
    assert any(m.startswith("robustness/t: the shifted set(s) test, link are the reference "
                            f"set itself (image folder {root}/test)") for m in said), said
    train = [p for p in evaluation.passes.passes if p.split == "train"]
    assert len(train) == 1 and train[0].data.dataset == str(root)
    assert metrics["robustness/t/test_drop"] == 0
    # A folder with no split folders: the probe is fit on the reference set itself (its
    # shifted copies are its own training images), which is said; so is --train-split naming
    # the reference's own split.
    for dataset, train_split in ((str(root / "test"), ""), (str(root), "test")):
        caplog.clear()
        config = config_for(robustness=evaluate.robustness_task(
            dataset, shifts="greyscale", baseline="linear_probe", templates="simple",
            train_split=train_split))
        with caplog.at_level("WARNING"):
            evaluate.evaluate_model(config, module, variables)
        assert any(r.getMessage().startswith(
            "robustness/t: the linear-probe baseline is fit on the reference set itself "
            f"(image folder {root}/test)") for r in caplog.records), (
            dataset, [r.getMessage() for r in caplog.records])


@pytest.mark.parametrize("test_classes", [("red", "green", "blue", "yellow"), ("red", "green")])
def test_robustness_probe_baseline_scores_test_classes_as_the_linear_probe_does(
        folder, model, tmp_path, caplog, test_classes):
    """A test split with a class the train split lacks crashed the linear-probe baseline
    ("labels[14] is 5, not a class index 0..4"), and one lacking a training class lost it
    ("its 4 classes are not the reference's 5": the 5 were the train split's), though
    `--linear-probe` scores both (trial Y). The baseline's accuracies, on the reference and
    its shifted copy, now equal scikit-learn's probe fit on the train split at the l2 the
    linear_probe task picks, an unseen class's images counted as misses."""
    import shutil

    module, variables = model
    root = tmp_path / "colours"
    shutil.copytree(folder / "train", root / "train")
    for name in test_classes:
        source = folder / "test" / ("red" if name == "yellow" else name)
        shutil.copytree(source, root / "test" / name)
    for f in (root / "test" / "yellow").glob("*.png") if "yellow" in test_classes else ():
        pixels = np.asarray(Image.open(f)).copy()
        pixels[..., 1] = pixels[..., 0]  # red + green
        Image.fromarray(pixels).save(f)
    config = config_for(
        linear_probe=evaluate.linear_probe_task(str(root)),
        robustness=evaluate.robustness_task(str(root), shifts="greyscale",
                                            baseline="linear_probe", templates="simple"))
    with caplog.at_level("WARNING"):
        metrics, _ = evaluate.evaluate_model(config, module, variables)
    said = [r.getMessage() for r in caplog.records]
    assert not any("no linear-probe baseline" in m for m in said), said
    assert any(m.startswith("robustness/t (linear-probe baseline): 1 test class(es) have no "
                            "training images") for m in said) == ("yellow" in test_classes)

    splits = {split: labelled_data.read(str(root), split) for split in ("train", "test")}
    pil = {split: [Image.open(f).convert("RGB") for f in d.files] for split, d in splits.items()}
    train_x = embed(module, variables, images=preprocess(pil["train"], module.config))
    mean, std = train_x.mean(0), np.maximum(train_x.std(0), 1e-6)
    l2 = metrics["linear_probe/t/l2"]
    probe = LogisticRegression(C=1 / (l2 * len(train_x)), tol=1e-10, max_iter=10_000)
    probe.fit((train_x - mean) / std, np.asarray(splits["train"].class_names)[
        splits["train"].labels])
    truth = np.asarray(splits["test"].class_names)[splits["test"].labels]
    for key, images in (("reference", pil["test"]),
                        ("greyscale", [p.convert("L").convert("RGB") for p in pil["test"]])):
        x = embed(module, variables, images=preprocess(images, module.config))
        expected = np.mean(probe.predict((x - mean) / std) == truth)
        assert metrics[f"robustness/t/{key}_linear_probe_top1"
                       if key != "reference" else "robustness/t/linear_probe_reference_top1"
                       ] == pytest.approx(expected, abs=1.01 / len(truth)), key


def test_class_names_listing_a_folders_classes_in_another_order_map_by_name(folder, model,
                                                                           caplog):
    """`--class-names red,green,blue` on a folder whose classes read blue, green, red renamed
    them by position (blue images scored as 'red', silently). The same names in any order map
    by name: zero-shot scores as with the folder's own names; names that are some of the
    folder's at other positions are warned about."""
    module, variables = model
    test = labelled_data.read(str(folder), "test")
    task = lambda names: config_for(zero_shot=evaluate.zero_shot_task(  # noqa: E731
        str(folder), templates="simple", class_names=names))
    reordered = ",".join(reversed(test.class_names))
    assert reordered != ",".join(test.class_names)
    images = embed(module, variables, images=preprocess(
        [Image.open(f).convert("RGB") for f in test.files], module.config))
    classes = class_embeddings(module, variables, list(test.class_names),
                               templates.TEMPLATE_SETS["simple"])
    predicted = (images @ classes.T).argmax(1)
    for names in (reordered, ""):
        metrics, evaluation = evaluate.evaluate_model(task(names), module, variables)
        np.testing.assert_array_equal(evaluation.predictions["t"][:, 0], predicted)
        assert metrics["zero_shot/t/top1"] == pytest.approx(np.mean(predicted == test.labels),
                                                            abs=1e-6), names
    with caplog.at_level("WARNING"):
        evaluate.evaluate_model(task(f"{test.class_names[2]},purple,{test.class_names[1]}"),
                                module, variables)
    assert any("replace the dataset's classes by position" in r.getMessage()
               for r in caplog.records)


def test_a_sources_own_names_given_with_underscores_change_nothing(folder, model, tmp_path):
    """Folder `deep_red/` is prompted as "deep red"; `--class-names` listing the folder names
    as written (`deep_red`) prompted "deep_red" and changed the accuracy. Given names matched
    by name are said as the source's own; a table labelled `deep_red` takes the names file's
    "deep red" as that class."""
    import shutil

    module, variables = model
    root = tmp_path / "shades"
    for name in COLOURS:
        shutil.copytree(folder / "test" / name, root / f"deep_{name}_tone")
    test = labelled_data.read(str(root))
    said = [name.replace("_", " ") for name in test.class_names]
    images = embed(module, variables, images=preprocess(
        [Image.open(f).convert("RGB") for f in test.files], module.config))
    classes = class_embeddings(module, variables, said, templates.TEMPLATE_SETS["simple"])
    predicted = (images @ classes.T).argmax(1)
    assert len(set(predicted)) > 1  # the names matter to the scores
    for names in ("", ",".join(test.class_names), ",".join(reversed(said))):
        _, evaluation = evaluate.evaluate_model(config_for(zero_shot=evaluate.zero_shot_task(
            str(root), templates="simple", class_names=names)), module, variables)
        np.testing.assert_array_equal(evaluation.predictions["t"][:, 0], predicted, names)
    table = tmp_path / "shades.csv"
    pd.DataFrame({"filepath": test.files,
                  "label": [test.class_names[y] for y in test.labels]}).to_csv(table, index=False)
    read = labelled_data.read(str(table), class_names=said)
    np.testing.assert_array_equal(read.labels, test.labels)


def imagenet_source(self, split, decoders=None, deserialize_method=None, **kwargs):
    """Mock random access: 12 images; imagenet_r / imagenet_a use 4 of their 200 classes and,
    as a mislabelled copy might, one class outside them."""
    del decoders, deserialize_method, kwargs
    rng = np.random.default_rng(len(self.name))
    if self.name in imagenet_subsets.SUBSETS:
        names = self.info.features["label"].names
        wnids = imagenet_subsets.SUBSETS[self.name]
        labels = [names.index(wnids[(0, 60, 130, 199)[i % 4]]) for i in range(11)]
        labels.append(next(k for k, w in enumerate(names) if w not in wnids))
    else:
        labels = [int(rng.integers(0, 1000)) for _ in range(12)]
    return [self.info.features.serialize_example({
        "image": rng.integers(0, 256, (24, 30, 3), dtype=np.uint8), "label": y,
        "file_name": f"{i}.jpeg"}) for i, y in enumerate(labels)]


def test_the_fixed_imagenet_subsets_are_200_of_tfds_imagenet_classes():
    """Each list names 200 distinct classes, every one a class of TFDS's imagenet2012 (whose
    ClassLabel labels imagenet_r and imagenet_a): a mistyped id would fail here."""
    names = set(tfds.builder("imagenet2012").info.features["label"].names)
    for dataset, wnids in imagenet_subsets.SUBSETS.items():
        assert len(set(wnids)) == 200 and set(wnids) <= names, dataset
        assert tfds.builder(dataset).info.features["label"].num_classes == 1000, dataset


def test_wordnet_id_classes_read_as_openais_names_with_the_papers_templates(model, tmp_path):
    """ImageNet names its classes by WordNet id (TFDS imagenet2012's ClassLabel, `n01440764/`
    folders on disk), so the default prompts were "a photo of a n01440764.". Such classes
    read as OpenAI's names with the paper's 80 templates, as open_clip's zero_shot_metadata
    lists them, and are scored as numpy scores those prompts; ids outside ImageNet-1k are
    refused, naming them."""
    import shutil

    metadata = pytest.importorskip("open_clip.zero_shot_metadata")
    module, variables = model
    wnids = tfds.builder("imagenet2012").info.features["label"].names
    assert list(imagenet_names.class_names()) == wnids
    assert list(imagenet_names.class_names().values()) == list(metadata.IMAGENET_CLASSNAMES)
    assert [t.replace("{}", "sea lion") for t in templates.TEMPLATE_SETS["openai_imagenet"]] \
        == [t("sea lion") for t in metadata.OPENAI_IMAGENET_TEMPLATES]

    picked = (0, 1, 657, 744)  # 657 and 744 are both "missile" to OpenAI: a tie, lower wins
    rng = np.random.default_rng(5)
    for k in picked:
        os.makedirs(tmp_path / "val" / wnids[k])
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(
                tmp_path / "val" / wnids[k] / f"{i}.png")
    metrics, evaluation = evaluate.evaluate_model(
        config_for(zero_shot=evaluate.zero_shot_task(str(tmp_path / "val"))), module, variables)
    names = [metadata.IMAGENET_CLASSNAMES[k] for k in picked]
    prompts = [t(c) for t in metadata.OPENAI_IMAGENET_TEMPLATES for c in names]
    emb = embed(module, variables, tokens=tokenize(prompts, 16)).reshape(80, len(names), -1)
    classes = emb.mean(0) / np.linalg.norm(emb.mean(0), axis=1, keepdims=True)
    files = sorted((tmp_path / "val").glob("*/*.png"))
    images = embed(module, variables, images=preprocess([Image.open(f) for f in files],
                                                          module.config))
    labels = np.repeat(np.arange(len(picked)), 3)
    assert metrics["zero_shot/t/top1"] == pytest.approx(
        np.mean((images @ classes.T).argmax(1) == labels))
    assert evaluation.provenance["zero_shot/t"]["templates"] == "openai_imagenet (80)"
    # Names given for such a folder are matched by the names its prompts use: OpenAI's names
    # in another order (they were applied by position: the tench folder prompted "goldfish"),
    # or the ids themselves (prompted as "n01440764").
    predicted = evaluation.predictions["t"][:, 0]
    for given in (",".join(reversed(names)), ",".join(wnids[k] for k in reversed(picked))):
        again, other = evaluate.evaluate_model(config_for(zero_shot=evaluate.zero_shot_task(
            str(tmp_path / "val"), class_names=given)), module, variables)
        np.testing.assert_array_equal(other.predictions["t"][:, 0], predicted)
        assert again["zero_shot/t/top1"] == metrics["zero_shot/t/top1"], given

    (tmp_path / "mixed").mkdir()  # a known id among plain names reads as its name too
    shutil.copytree(tmp_path / "val" / wnids[0], tmp_path / "mixed" / wnids[0])
    shutil.copytree(tmp_path / "val" / wnids[1], tmp_path / "mixed" / "sea_lion")
    mixed = evaluate.evaluate_model(config_for(zero_shot=evaluate.zero_shot_task(
        str(tmp_path / "mixed"), templates="simple")), module, variables)[1]
    assert mixed.details["per_class/t"]["class_names"] == ["tench", "sea lion"]

    os.makedirs(tmp_path / "val" / "n99999999")  # an ImageNet-21k id among them
    Image.open(files[0]).save(tmp_path / "val" / "n99999999" / "0.png")
    with pytest.raises(ConfigError, match=r"^config.eval.zero_shot.t: The class names hold "
                                          r"WordNet ids, 1 of them not among ImageNet-1k's "
                                          r"1000 \(\['n99999999'\]\).*--class-names"):
        evaluate.evaluate_model(config_for(zero_shot=evaluate.zero_shot_task(
            str(tmp_path / "val"), templates="simple")), module, variables)


def test_tfds_imagenet_zero_shot_defaults_to_openais_names(model):
    """TFDS imagenet2012 without class names: its 1000 classes are prompted by OpenAI's names
    (open_clip's list), one template given."""
    metadata = pytest.importorskip("open_clip.zero_shot_metadata")
    config = config_for(zero_shot=evaluate.zero_shot_task(
        "imagenet2012", split="validation", templates="simple"))
    predictions = []
    metrics, expected = zero_shot_on_mocked(model, config, "imagenet2012",
                                            list(metadata.IMAGENET_CLASSNAMES),
                                            ("a photo of a {}.",), predictions)
    assert metrics["zero_shot/t/top1"] == pytest.approx(expected)
    np.testing.assert_array_equal(*predictions)  # 12 images' picks among 1000 classes


def test_tfds_shifted_imagenets_score_on_their_classes(model, tmp_path):
    module, variables = model
    names = [f"thing {k}" for k in range(1000)]
    (tmp_path / "names.txt").write_text("\n".join(names))
    config = config_for(robustness=evaluate.robustness_task(
        "imagenet2012", split="validation", shifted="imagenet_v2,imagenet_r,imagenet_sketch",
        templates="simple", class_names=str(tmp_path / "names.txt")),
        zero_shot=evaluate.zero_shot_task("imagenet_r", split="test", templates="simple",
                                          class_names=str(tmp_path / "names.txt")))
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_data_source_fn=imagenet_source):
        metrics, _ = evaluate.evaluate_model(config, module, variables)
        builders = {n: tfds.builder(n) for n in ("imagenet2012", "imagenet_v2", "imagenet_r",
                                                 "imagenet_sketch")}
        data = {n: [b.info.features.deserialize_example_np(r) for r in
                    imagenet_source(b, "test")] for n, b in builders.items()}
    classes = class_embeddings(module, variables, names, ("a photo of a {}.",))
    for name, examples in data.items():
        images = embed(module, variables, images=preprocess(
            [Image.fromarray(e["image"]) for e in examples], module.config))
        labels = np.array([e["label"] for e in examples])
        scores = images @ classes.T
        if name in evaluate.SUBSET_DATASETS:
            # Among the 200 classes, whichever 4 the data hold; the 12th image is a miss.
            wnids = builders[name].info.features["label"].names
            subset = np.asarray([wnids.index(w) for w in imagenet_subsets.SUBSETS[name]])
            expected = np.mean(subset[scores[:, subset].argmax(1)] == labels)
            if name == "imagenet_r":  # zero-shot on it alone too, as CLIP_benchmark scores it
                top5 = subset[np.argsort(-scores[:, subset], axis=1, kind="stable")[:, :5]]
                assert metrics["zero_shot/t/top1"] == pytest.approx(expected)
                assert metrics["zero_shot/t/top5"] == pytest.approx(
                    np.mean((top5 == labels[:, None]).any(1)))
                inside = np.isin(labels, subset)  # the 12th image: a miss, no class of its own
                recall = [np.mean(subset[scores[labels == k][:, subset].argmax(1)] == k)
                          for k in np.unique(labels[inside])]
                assert metrics["zero_shot/t/mean_per_class_recall"] == pytest.approx(
                    np.mean(recall))
        else:
            expected = np.mean(scores.argmax(1) == labels)
        key = "reference_top1" if name == "imagenet2012" else f"{name}_top1"
        assert metrics[f"robustness/t/{key}"] == pytest.approx(expected), name
    # imagenet_r's 200-way top-1 is set against the reference's 1000-way top-1 and averaged
    # with the other sets, as the CLIP paper does (its Figure 13 and effective robustness).
    shifted = ("imagenet_v2", "imagenet_r", "imagenet_sketch")
    assert metrics["robustness/t/mean_shifted_top1"] == pytest.approx(
        np.mean([metrics[f"robustness/t/{n}_top1"] for n in shifted]))
    assert metrics["robustness/t/imagenet_r_drop"] == pytest.approx(
        metrics["robustness/t/reference_top1"] - metrics["robustness/t/imagenet_r_top1"])


def test_a_caption_trained_run_evaluates_other_datasets_on_their_labels(model, tmp_path):
    """A run trained on captions alone sets data.label_key='' (the README's table example
    does); `clip-jax eval RUN --zero-shot imagenet2012@validation` inherited that key and was
    refused ("needs labels but its label_key is ''") although the dataset has its `label`. A
    task on another dataset starts from the default feature keys."""
    names = [f"thing {k}" for k in range(1000)]
    (tmp_path / "names.txt").write_text("\n".join(names))
    config = config_for(zero_shot=evaluate.zero_shot_task(
        "imagenet2012", split="validation", templates="simple",
        class_names=str(tmp_path / "names.txt")))
    config.data.label_key, config.data.image_key = "", "jpg"  # the training data's features
    metrics, expected = zero_shot_on_mocked(model, config, "imagenet2012", names,
                                            ("a photo of a {}.",))
    assert metrics["zero_shot/t/top1"] == pytest.approx(expected)


def zero_shot_on_mocked(model, config, dataset, names, prompts, predictions=None):
    """`config`'s metrics on mocked TFDS data (`imagenet_source`), and the top-1 numpy gives
    on the same examples with the classifier of `names` x `prompts`; with `predictions` (a
    list), the task `t`'s top-1 predictions and numpy's are appended to it."""
    module, variables = model
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_data_source_fn=imagenet_source):
        metrics, evaluation = evaluate.evaluate_model(config, module, variables)
        builder = tfds.builder(dataset)
        examples = [builder.info.features.deserialize_example_np(r)
                    for r in imagenet_source(builder, "test")]
    images = embed(module, variables, images=preprocess(
        [Image.fromarray(e["image"]) for e in examples], module.config))
    classes = class_embeddings(module, variables, names, prompts)
    labels = np.array([e["label"] for e in examples])
    if predictions is not None:
        predictions += [evaluation.predictions["t"][:, 0], (images @ classes.T).argmax(1)]
    return metrics, np.mean((images @ classes.T).argmax(1) == labels)


def test_a_tfds_name_with_a_config_is_a_dataset_on_the_command_line(model, tmp_path):
    """`--zero-shot imagenet2012_subset/1pct@validation` holds '/', so it was taken for a
    missing folder ("No labelled folder or table"); a registered TFDS name with a config or
    version is a dataset (named with its config in the metric keys), scored as numpy scores
    the mocked split; a '/' name that is neither is still refused in one line."""
    names = [f"thing {k}" for k in range(1000)]
    (tmp_path / "names.txt").write_text("\n".join(names))
    config = eval_args("--zero-shot", "imagenet2012_subset/1pct:5.0.0@validation",
                       "--class-names", str(tmp_path / "names.txt"), "--templates", "simple")
    task = config.eval.zero_shot.imagenet2012_subset_1pct_validation
    assert (task.dataset, task.split) == ("imagenet2012_subset/1pct:5.0.0", "validation")
    metrics, expected = zero_shot_on_mocked(model, config, "imagenet2012_subset/1pct", names,
                                            templates.TEMPLATE_SETS["simple"])
    assert metrics["zero_shot/imagenet2012_subset_1pct_validation/top1"] == pytest.approx(
        expected)
    with pytest.raises(ConfigError, match=r"^No labelled folder or table at 'photos/val': not "
                                          r"a file or folder, nor a TFDS dataset"):
        eval_args("--zero-shot", "photos/val@test")


@pytest.mark.parametrize("spec,message", [
    # each was a traceback after the model had loaded
    ("cifar10/plain:3.0.2@test", "TFDS dataset cifar10 has no config 'plain' (it has none)"),
    ("imagenet_v2/matchd", "TFDS dataset imagenet_v2 has no config 'matchd' (its configs: "
                           "matched-frequency, threshold-0.7, topimages)"),
    ("cifar10:9.9.9", "Dataset cifar10 cannot be loaded at version 9.9.9, only: 3.0.2"),
    ("cifr10@test", "nor a TFDS dataset (Dataset cifr10 not found; did you mean cifar10"),
    ("tfds:cifar10@test", "nor a TFDS dataset (Namespace tfds not found"),
    # no TFDS name as written: "no such file or folder." alone (trial AK)
    ("cifar-10@test", "No dataset 'cifar-10': no such file or folder, nor a TFDS dataset name; "
                      "did you mean cifar10, cifar100"),
    ("Oxford-Flowers102", "did you mean oxford_flowers102"),
    ("/no/such/folder@test", "No labelled folder or table at '/no/such/folder': no such file"),
    # webdataset shards: "No labelled folder or table at ...: no such file or folder."
    ("wds/{00000..00001}.tar", "'wds/{00000..00001}.tar' names webdataset shards: the sources "
                               "here are labelled folders, CSV/TSV tables and TFDS names"),
    ("/data/shards/00000.tar@test", "names webdataset shards"),
])
def test_a_tfds_name_tfds_cannot_construct_is_one_line_before_the_model(spec, message):
    """What TFDS itself says of the name (config, version, namespace, did-you-mean), checked
    when the command line is read."""
    with pytest.raises(ConfigError) as error:
        eval_args("--zero-shot", spec)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_typo_below_a_local_folder_is_named_as_a_path(tmp_path, monkeypatch):
    """`--zero-shot data/splt` beside a folder `data/` holding `split/` was answered as a
    TFDS name ("Dataset data not found; did you mean dart?") after ~11 s; it is a path with
    a typo: the folder that exists, the part that does not and the closest names there."""
    (tmp_path / "data" / "split" / "test").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    for spec, said in (
            ("data/splt@test", "No labelled folder or table at 'data/splt': no such file or "
                               "folder (data has no 'splt'; did you mean 'split'?)."),
            ("data/split/tset", "(data/split has no 'tset'; did you mean 'test'?)."),
            ("data/zzz/test", "(data has no 'zzz')."),
    ):
        with pytest.raises(ConfigError) as error:
            eval_args("--zero-shot", spec)
        assert str(error.value).endswith(said) and "TFDS" not in str(error.value), error.value


def test_a_dataset_needing_a_manual_download_says_so(tmp_path):
    """imagenet2012's files cannot be downloaded by TFDS: its build failed with TFDS's
    AssertionError traceback; it is one line naming the folder the files go into."""
    config = data_options.default_config()
    config.dataset, config.data_dir = "imagenet2012", str(tmp_path)
    with pytest.raises(ConfigError, match=r"^imagenet2012/[\d.]+ needs a manual download "
                                          rf"\(Manual directory {tmp_path}/downloads/manual "):
        sources.prepare(config)


def test_a_dataset_that_cannot_be_downloaded_is_one_line(tmp_path, monkeypatch):
    """An eval task on cifar10, not built and offline: TFDS's requests retried, then a
    194-line ConnectionError traceback. It is one line naming the dataset, the folder and
    where to build it."""
    import requests
    import tensorflow_datasets as tfds

    def offline(self, **kwargs):
        raise requests.exceptions.ConnectionError(
            "HTTPSConnectionPool(host='www.cs.toronto.edu', port=443): Max retries exceeded")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    config = data_options.default_config()
    config.dataset, config.data_dir = "cifar10", str(tmp_path)
    with pytest.raises(ConfigError) as error:
        sources.prepare(config)
    said = str(error.value)
    assert said.startswith(f"Cannot download cifar10/3.0.2 to build it in {tmp_path}/cifar10/"
                           "3.0.2 (ConnectionError: HTTPSConnectionPool(host='www.cs.toronto."
                           "edu', port=443): Max retries exceeded); build it where it can be "
                           "downloaded (tfds build cifar10 --data_dir DIR)")
    assert "\n" not in said


def test_unreadable_images_are_counted_and_left_out_of_the_metrics(folder, model, tmp_path,
                                                                   caplog):
    """A JPEG cut off in its pixel data and an empty class folder, among a folder's images:
    the evaluation finishes, its top-1 is the reference's over the readable images (the empty
    class a candidate, as ImageFolder lists it), the count left out is reported next to the
    file's name, and the empty class has no per-class accuracy (None, not 0 %)."""
    import shutil

    module, variables = model
    root = tmp_path / "colours"
    shutil.copytree(folder / "test", root)
    (root / "purple").mkdir()
    (root / "red" / ".DS_Store").write_bytes(b"Bud1")
    Image.open(root / "red" / "0.png").save(root / "red" / "photo.jpg", quality=95)
    jpeg = (root / "red" / "photo.jpg").read_bytes()
    (root / "red" / "photo.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    config = config_for(zero_shot=evaluate.zero_shot_task(str(root), templates="simple"),
                        robustness=evaluate.robustness_task(str(root), shifts="greyscale,blur",
                                                            baseline="", templates="simple"))
    with caplog.at_level("WARNING"):
        metrics, evaluation = evaluate.evaluate_model(config, module, variables)
    test = labelled_data.read(str(folder), "test")
    names = sorted([*COLOURS, "purple"])
    labels = np.array([names.index(test.class_names[y]) for y in test.labels])
    images = embed(module, variables, images=preprocess(
        [Image.open(f).convert("RGB") for f in test.files], module.config))
    classes = class_embeddings(module, variables, names, templates.TEMPLATE_SETS["simple"])
    expected = np.mean((images @ classes.T).argmax(1) == labels)
    assert metrics["zero_shot/t/top1"] == pytest.approx(expected, abs=1e-6)
    assert evaluation.sizes["zero_shot/t"] == {"images": len(test), "classes": 4}
    accuracy = evaluation.details["per_class/t"]["accuracy"]
    assert accuracy[names.index("purple")] is None and None not in accuracy[:2]
    assert f"skipped unreadable image {root / 'red' / 'photo.jpg'}" in caplog.text
    # Said once, though four passes (zero-shot, and the reference and two shifted copies of
    # robustness; tasks with other class names) read the folder.
    assert caplog.text.count(f"1 of {len(test) + 1} images unreadable") == 1, caplog.text
    assert caplog.text.count("no images in class folder(s) purple") == 1, caplog.text
    assert caplog.text.count(".DS_Store") == 1, caplog.text  # the skipped hidden file, too


def test_a_probes_unreadable_training_images_are_counted_in_its_results(folder, model,
                                                                        tmp_path):
    """A probe's training images that could not be read were said on the console only: the
    results' trained_on cell read as if every image was used (trial CE)."""
    import shutil

    module, variables = model
    root = tmp_path / "colours"
    shutil.copytree(folder, root)
    Image.open(root / "train" / "red" / "0.png").save(root / "train" / "red" / "cut.jpg")
    jpeg = (root / "train" / "red" / "cut.jpg").read_bytes()
    (root / "train" / "red" / "cut.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    _, evaluation = evaluate.evaluate_model(config_for(linear_probe=evaluate.linear_probe_task(
        str(root), "train", "test", l2="0.01")), module, variables)
    readable = len(labelled_data.read(str(folder), "train").files)
    assert evaluation.provenance["linear_probe/t"]["trained_on"] == (
        f"image folder {root}/train (train): {readable} images, 1 unreadable")


def test_a_jpeg_damaged_inside_its_scan_is_left_out_and_named(folder, model, tmp_path,
                                                              caplog):
    """A whole JPEG (start and end markers in place) with scrambled bytes inside its scan
    data passed the file check, and TensorFlow's decoder then stopped the whole evaluation
    with a traceback naming no file. It is left out and named; the metrics are numpy's over
    the other images, at a batch size where the dropped image's slot decides whether the
    last batch is full (every image counted, none lost with it)."""
    import io
    import shutil

    module, variables = model
    root = tmp_path / "colours"
    shutil.copytree(folder / "test", root)
    encoded = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)).save(
        encoded, format="JPEG", quality=90)
    damaged = bytearray(encoded.getvalue())
    middle = len(damaged) // 2
    damaged[middle:middle + 200] = bytes(0 if b == 0xFF else (b * 7 + 13) % 256
                                         for b in damaged[middle:middle + 200])
    (root / "blue" / "damaged.jpg").write_bytes(bytes(damaged))
    with pytest.raises(tf.errors.InvalidArgumentError):  # what stopped the evaluation
        tf.io.decode_jpeg(bytes(damaged), channels=3)
    test = labelled_data.read(str(folder), "test")
    config = config_for(zero_shot=evaluate.zero_shot_task(str(root), templates="simple"))
    config.eval.batch_size = 4  # 16 images: the 15 readable ones fill 4 batches only with padding
    with caplog.at_level("WARNING"):
        metrics, evaluation = evaluate.evaluate_model(config, module, variables)
    images = embed(module, variables, images=preprocess(
        [Image.open(f).convert("RGB") for f in test.files], module.config))
    classes = class_embeddings(module, variables, list(test.class_names),
                               templates.TEMPLATE_SETS["simple"])
    assert metrics["zero_shot/t/top1"] == pytest.approx(
        np.mean((images @ classes.T).argmax(1) == test.labels), abs=1e-6)
    assert evaluation.sizes["zero_shot/t"]["images"] == len(test)
    assert f"skipped unreadable image {root / 'blue' / 'damaged.jpg'}: its data is damaged" \
        in caplog.text
    assert f"1 of {len(test) + 1} images unreadable" in caplog.text


def test_a_clip_benchmark_webdataset_is_scored_with_its_own_templates_file(folder, model,
                                                                          tmp_path):
    """CLIP_benchmark writes `zeroshot_classification_templates.txt` with a `{c}` slot (filled
    by `template.format(c=name)`); that file was refused. Zero-shot now scores with it, equal
    to the reference filled that way; a bad line is refused naming the file."""
    import io
    import tarfile

    module, variables = model
    test = labelled_data.read(str(folder), "test")
    raw = ["a photo of a {c}.", "a {c} colour"]
    root = tmp_path / "wds"
    os.makedirs(root / "test")
    (root / "classnames.txt").write_text("\n".join(test.class_names) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(raw) + "\n")
    with tarfile.open(root / "test" / "0.tar", "w") as tar:
        for i, (path, label) in enumerate(zip(test.files, test.labels)):
            for ext, data in (("png", open(path, "rb").read()), ("cls", str(label).encode())):
                info = tarfile.TarInfo(f"s{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    config = config_for(zero_shot=evaluate.zero_shot_task(str(root)))
    metrics, evaluation = evaluate.evaluate_model(config, module, variables)
    images = embed(module, variables, images=preprocess(
        [Image.open(f).convert("RGB") for f in test.files], module.config))
    tokens = tokenize([t.format(c=name) for t in raw for name in test.class_names], 16)
    emb = embed(module, variables, tokens=tokens).reshape(len(raw), len(test.class_names), -1)
    classes = emb.mean(0) / np.linalg.norm(emb.mean(0), axis=1, keepdims=True)
    assert metrics["zero_shot/t/top1"] == pytest.approx(
        np.mean((images @ classes.T).argmax(1) == test.labels), abs=1e-6)
    assert evaluation.provenance["zero_shot/t"]["templates"] == "source file (2)"
    (root / "zeroshot_classification_templates.txt").write_text("a {c} and a {}\n")
    with pytest.raises(ConfigError, match="these in .*wds/zeroshot_classification_templates.txt "
                                          "do not"):
        evaluate.evaluate_model(config, module, variables)


def test_clip_jax_eval_command_with_sources(folder, model, tmp_path, capsys):
    from clip_jax.convert.hf_export import export_hf

    module, variables = model
    export_hf(module.config, variables, tmp_path / "hf")
    code = cli.main(["eval", str(tmp_path / "hf"), "--zero-shot", str(folder),
                     "--linear-probe", f"{folder}@train", f"{folder}@test",
                     "--templates", "simple", "--batch-size", "8",
                     "--output", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0
    assert "| zero_shot | colours0 | top1 |" in out.replace(folder.name, "colours0")
    # Top-5 among 3 classes does not apply: `-` in the summary lines and the table.
    assert "top5 -" in out and "| zero_shot | colours0 | top5 | - |" in out.replace(
        folder.name, "colours0")
    assert f"image folder {folder}/test | test | 15 | 3 | simple (1) |" in out
    frame = pd.read_csv(tmp_path / "out" / "results.csv")
    assert set(frame.evaluator) == {"zero_shot", "linear_probe"}
    # A probe is named after its test source, split included (it dropped the `@test`).
    assert set(frame.query("evaluator == 'linear_probe'").task) == {f"{folder.name}_test"}
    # An export computes in float32 and has no step; no image was left out.
    assert "float32 compute" in out and (frame.dtype == "float32").all()
    assert frame.step.isna().all() and (frame.unreadable == 0).all()
    code = cli.main(["eval", str(tmp_path / "hf"), "--zero-shot", str(tmp_path / "nowhere/x")])
    assert code == 2 and "No labelled folder or table" in capsys.readouterr().err
    # A table in a format not read (JSON lines) was "no such file or folder", though it exists.
    frame = pd.DataFrame({"filepath": [str(f) for f in (folder / "test").glob("*/*.png")],
                          "label": "red"})
    for flag in ("--zero-shot", "--retrieval"):
        for suffix, lines in ((".jsonl", True), (".json", False)):
            path = tmp_path / f"labels{suffix}"
            frame.to_json(path, orient="records", lines=lines)
            code = cli.main(["eval", str(tmp_path / "hf"), flag, str(path)])
            err = capsys.readouterr().err
            assert code == 2 and f"'{path}' is a file but not a table clip_jax reads" in err, err
            # The conversion it names gives the table back (pandas is the reference).
            convert = err.split("convert it: ")[1].split(" (a list")[0].rstrip(".\n")
            namespace = {"pandas": pd, "path": str(path)}
            exec(convert.replace("'table.csv'", repr(str(tmp_path / "t.csv"))), namespace)
            pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "t.csv"), frame)


def test_eval_reads_labelled_images_with_the_alpha_and_exif_options(folder, model, tmp_path,
                                                                     monkeypatch, capsys):
    """`clip-jax eval --alpha` / `--no-exif-transpose` reach the labelled sources' reader;
    unset, the config's `data.build` options do (a saved model's: "drop", turned upright)."""
    from clip_jax.data import labelled_batches

    module, variables = model
    clip_jax.save(module, variables, str(tmp_path / "m"))
    seen, make = [], labelled_batches.make_iterable

    def spy(*args, **kwargs):
        seen.append((kwargs["alpha"], kwargs["exif_transpose"]))
        return make(*args, **kwargs)

    monkeypatch.setattr(labelled_batches, "make_iterable", spy)
    run = ["eval", str(tmp_path / "m"), "--zero-shot", str(folder), "--templates", "simple"]
    assert cli.main(run + ["--alpha", "white", "--no-exif-transpose"]) == 0
    assert cli.main(run) == 0
    assert seen == [("white", False), ("drop", True)]
    # Its progress, into a log here (stderr not a terminal): the split's count at the end.
    err = capsys.readouterr().err
    assert re.search(rf"^eval: image folder {re.escape(str(folder))}/test \(test\): 15/15 "
                     r"images( \([\d.]+ img/s\))?$", err, re.M), err


def index_tables(folder, root):
    """train.csv / test.csv of the folder's images, labelled by class index in sorted-name
    order (as an ImageFolder numbers them), with no classnames.txt beside them."""
    names = sorted(COLOURS)
    for split in ("train", "test"):
        files = sorted(str(f) for f in (folder / split).glob("*/*.png"))
        labels = [names.index(os.path.basename(os.path.dirname(f))) for f in files]
        pd.DataFrame({"filepath": files, "label": labels}).to_csv(root / f"{split}.csv",
                                                                  index=False)
    return names


def eval_args(*argv):
    """A config whose eval tasks come from `clip-jax eval` source flags, as the CLI makes it."""
    from clip_jax.cli import eval_sources

    config = config_for()
    eval_sources.apply(config, cli.parser().parse_args(["eval", "model", *argv]))
    return config


def test_tables_of_class_indices_take_the_class_names_given(folder, model, tmp_path):
    """The trial's `--zero-shot lab_test.csv --class-names ...`: the names reach the table
    reader (zero-shot and few-shot score with them, against numpy); a linear probe needs no
    names; zero-shot without names, or with too few, fails with one line saying so."""
    module, variables = model
    names = index_tables(folder, tmp_path)
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    train, test = str(tmp_path / "train.csv"), str(tmp_path / "test.csv")
    config = eval_args("--zero-shot", test, "--few-shot", train, test, "--shots", "1,2",
                       "--seeds", "1", "--class-names", str(tmp_path / "names.txt"),
                       "--templates", "simple")
    metrics, _ = evaluate.evaluate_model(config, module, variables)
    frames = {split: pd.read_csv(tmp_path / f"{split}.csv") for split in ("train", "test")}
    emb = {split: embed(module, variables, images=preprocess(
        [Image.open(f).convert("RGB") for f in frame.filepath], module.config))
        for split, frame in frames.items()}
    classes = class_embeddings(module, variables, names, ("a photo of a {}.",))
    expected = np.mean((emb["test"] @ classes.T).argmax(1) == frames["test"].label)
    assert metrics["zero_shot/test/top1"] == pytest.approx(expected, abs=1e-6)
    assert metrics["few_shot/test/zero_shot_top1"] == pytest.approx(expected, abs=1e-6)

    config = eval_args("--linear-probe", train, test)  # no names: the probe needs labels only
    config.eval.linear_probe.test.l2 = "0.01"
    metrics, _ = evaluate.evaluate_model(config, module, variables)
    mean, std = emb["train"].mean(0), np.maximum(emb["train"].std(0), 1e-6)
    reference = LogisticRegression(C=1 / (0.01 * len(emb["train"])), tol=1e-10, max_iter=10_000)
    reference.fit((emb["train"] - mean) / std, frames["train"].label)
    assert metrics["linear_probe/test/accuracy"] == pytest.approx(
        reference.score((emb["test"] - mean) / std, frames["test"].label), abs=1.01 / 15)
    with pytest.raises(ValueError, match="zero_shot.test: the labels of table .*test.csv are "
                                         "class indices and zero-shot prompts need class names"
                       ) as refused:
        evaluate.evaluate_model(eval_args("--zero-shot", test), module, variables)
    # As the command says it: the advice names the flag ("give them with --zero-shot
    # test.csv (--class-names) (a file ..." read garbled: trial S).
    from clip_jax.cli import eval_sources

    config = config_for()
    origins = eval_sources.apply(config, cli.parser().parse_args(["eval", "m", "--zero-shot",
                                                                  test]))
    said = eval_sources.in_flag_terms(str(refused.value), origins)
    assert said.startswith(f"--zero-shot {test}: the labels of table ")
    assert said.endswith("need class names; give them with --class-names (a file, one per "
                         "line, or a comma-separated list) or a classnames.txt beside it.")
    with pytest.raises(ValueError, match=r"test.csv has class indices up to 2 \(3 classes, "
                                         r"line \d+\) but 2 class names were given"):
        evaluate.evaluate_model(eval_args("--zero-shot", test, "--class-names", "blue,green"),
                                module, variables)


def test_shifted_tables_of_class_indices_take_the_reference_classes(folder, model, tmp_path):
    """A robustness task on a named reference (the folder) whose shifted set is a table of
    class indices without names: its labels index the reference's classes, so its top-1 is
    scored with the reference's classifier (here the same images: the reference's top-1,
    against numpy) and the linear-probe baseline covers it."""
    module, variables = model
    index_tables(folder, tmp_path)
    config = config_for(robustness=evaluate.robustness_task(
        str(folder), shifted=str(tmp_path / "test.csv"), baseline="linear_probe",
        templates="simple"))
    metrics, _ = evaluate.evaluate_model(config, module, variables)
    test = labelled_data.read(str(folder), "test")
    images = embed(module, variables, images=preprocess(
        [Image.open(f).convert("RGB") for f in test.files], module.config))
    classes = class_embeddings(module, variables, list(test.class_names),
                               templates.TEMPLATE_SETS["simple"])
    expected = np.mean((images @ classes.T).argmax(1) == test.labels)
    assert metrics["robustness/t/reference_top1"] == pytest.approx(expected, abs=1e-6)
    assert metrics["robustness/t/test_top1"] == pytest.approx(expected, abs=1e-6)
    probe = (metrics["robustness/t/linear_probe_reference_top1"],
             metrics["robustness/t/test_linear_probe_top1"])  # the probe covers the set
    informative = all(0 < p < 1 for p in probe)  # a saturated probe has no logit line
    assert ("robustness/t/test_effective_robustness" in metrics) == informative


def test_a_shifted_table_index_beyond_the_reference_classes_names_both(folder, model,
                                                                       tmp_path, monkeypatch):
    """A shifted table of bare class indices takes the reference's 3 classes: its index 3
    fails before any image is embedded, naming the table and the reference whose classes
    they are (the user gave no class names)."""
    from clip_jax.evaluation.embedding import Embedder

    module, variables = model
    index_tables(folder, tmp_path)
    frame = pd.read_csv(tmp_path / "test.csv")
    frame.loc[4, "label"] = len(COLOURS)
    frame.to_csv(tmp_path / "test.csv", index=False)
    monkeypatch.setattr(Embedder, "embed_split", lambda *a, **k: pytest.fail("embedded"))
    config = config_for(robustness=evaluate.robustness_task(
        str(folder), shifted=str(tmp_path / "test.csv"), shifts="", baseline=""))
    with pytest.raises(ConfigError, match=(
            rf"^config.eval.robustness.t: table {tmp_path}/test.csv has label 3 but the "
            rf"reference image folder {folder}/test has 3 classes \(0-2\)")):
        evaluate.evaluate_model(config, module, variables)


def test_a_built_table_keeps_its_label_column(folder, model, tmp_path):
    """Issue 11, item 4: the label column survives the build (indices here, an index outside
    the classes skipped and reported) and zero-shot reads it; without labels, one clear
    error. (A column mixing names and indices is refused since trial G: its numbers may be
    names.)"""
    module, variables = model
    test = labelled_data.read(str(folder), "test")
    cells = [str(y) for y in test.labels]
    cells[3] = "7"
    pd.DataFrame({"filepath": test.files, "title": "a photo", "class": cells}).to_csv(
        tmp_path / "t.csv", index=False)
    config = config_for(zero_shot=evaluate.zero_shot_task(templates="simple"))
    config.data.dataset = "image_text_table"
    config.data.data_dir = str(tmp_path / "tfds")
    config.data.eval_split = "test"
    config.data.table.update(name="colours", test_path=str(tmp_path / "t.csv"),
                             label_column="class", class_names=",".join(COLOURS))
    metrics, evaluation = evaluate.evaluate_model(config, module, variables)
    built = tfds.builder_from_directory(
        sources.prepare(config.data).data_dir).as_data_source("test")
    keep = [i for i in range(len(cells)) if i != 3]
    got = sorted((e["key"].decode(), int(e["label"])) for e in built)
    assert got == sorted((test.files[i], int(test.labels[i])) for i in keep)
    report = json.load(open(os.path.join(sources.prepare(config.data).data_dir,
                                         "bad_records.json")))
    assert "unknown_label" in json.dumps(report)
    images = embed(module, variables, images=preprocess(
        [Image.open(test.files[i]).convert("RGB") for i in keep], module.config))
    classes = class_embeddings(module, variables, list(COLOURS), ("a photo of a {}.",))
    assert metrics["zero_shot/t/top1"] == pytest.approx(
        np.mean((images @ classes.T).argmax(1) == test.labels[keep]))
    config.data.label_key = ""
    with pytest.raises(ValueError, match=r"^config.eval.zero_shot.t: classification on "
                                         r"image_text_table \(test\) needs labels but its "
                                         r"label_key is '' .*--evaluators retrieval"):
        evaluate.evaluate_model(config, module, variables)
    # A split the table config does not build is said first, for every evaluator: it read as
    # a lack of labels alone, and the advice (retrieval) then failed on the split (trial R).
    retrieval = config_for(retrieval=evaluate.retrieval_task())
    retrieval.data = config.data
    for case in (config, retrieval):
        case.data.eval_split = "validation"
        with pytest.raises(ConfigError, match=r": image_text_table has no 'validation' split: "
                                              r"data.table.validation_path is empty; set it"):
            evaluate.evaluate_model(case, module, variables)


def test_few_shot_refuses_a_class_without_training_images_before_embedding(
        folder, model, tmp_path, monkeypatch):
    """The folder listing already shows the empty class: the error comes before any image is
    embedded (the embedding step here fails the test if it is reached)."""
    import shutil

    from clip_jax.evaluation.embedding import Embedder

    module, variables = model
    root = tmp_path / "colours"
    shutil.copytree(folder, root)
    for split in ("train", "test"):
        (root / split / "purple").mkdir()
    Image.open(root / "test" / "red" / "0.png").save(root / "test" / "purple" / "0.png")
    monkeypatch.setattr(Embedder, "embed_split", lambda *a, **k: pytest.fail("embedded"))
    config = config_for(few_shot=evaluate.few_shot_task(str(root), shots="1", seeds=1))
    with pytest.raises(ConfigError, match=r"these have none: purple \(0\)"):
        evaluate.evaluate_model(config, module, variables)
    # Empty in both splits, the class has nothing to score: it needs no shots, and the run
    # goes on to embed (trial BF: one stray empty folder stopped the whole few-shot run).
    (root / "test" / "purple" / "0.png").unlink()
    with pytest.raises(pytest.fail.Exception, match="embedded"):
        evaluate.evaluate_model(config, module, variables)
    # A class short of k images is named as its prompts, results and plots name it (it was
    # 'dark_red' there, 'dark red' everywhere else: trial CE).
    os.rename(root / "train" / "red", root / "train" / "dark_red")
    os.rename(root / "test" / "red", root / "test" / "dark_red")
    config = config_for(few_shot=evaluate.few_shot_task(str(root), shots="8", seeds=1))
    with pytest.raises(ConfigError, match=r"8-shot probes need 8 training images per class; "
                                          r"these classes have fewer: .*dark red \(6\)"):
        evaluate.evaluate_model(config, module, variables)


def test_a_probe_on_folders_with_other_classes_names_them(folder, model, tmp_path, monkeypatch,
                                                         capsys, caplog):
    """A test split with a class folder the training split lacks was refused with advice for
    tables only. Few-shot probes (k training images of every class) refuse it naming the
    classes each side alone has, before anything is embedded; the linear probe scores it, the
    class's images as misses (scikit-learn's score), and names the class in a warning."""
    import shutil

    from clip_jax.evaluation.embedding import Embedder

    module, variables = model
    root = tmp_path / "colours"
    shutil.copytree(folder, root)
    (root / "test" / "purple").mkdir()
    Image.open(root / "test" / "red" / "0.png").save(root / "test" / "purple" / "0.png")
    monkeypatch.setattr(Embedder, "embed_split", lambda *a, **k: pytest.fail("embedded"))
    config = config_for(few_shot=evaluate.few_shot_task(str(root), shots="1", seeds=1))
    with pytest.raises(ConfigError, match=r"have test classes the training data lacks \(only in "
                                          r"the test data: 'purple' \(1 class\)\); .*folders: the "
                                          r"same class folders"):
        evaluate.evaluate_model(config, module, variables)
    # From the command line the task is named by the flag that made it, not a config path.
    from clip_jax.convert.hf_export import export_hf

    export_hf(module.config, variables, tmp_path / "hf")
    assert cli.main(["eval", str(tmp_path / "hf"), "--few-shot", f"{root}@train",
                     str(root), "--shots", "1", "--batch-size", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --few-shot {root}@train {root}: the training data ") and \
        "config.eval" not in err
    monkeypatch.undo()
    config = config_for(linear_probe=evaluate.linear_probe_task(str(root), l2="0.01"))
    with caplog.at_level("WARNING"):
        metrics, evaluation = evaluate.evaluate_model(config, module, variables)
    assert "linear_probe/t: 1 test class(es) have no training images, so their 1 of 16 " \
        "test images can never be predicted right" in caplog.text
    assert evaluation.provenance["linear_probe/t"]["images"] == 16
    assert metrics["linear_probe/t/accuracy"] <= 15 / 16


def test_an_empty_test_class_folder_the_training_split_lacks_is_not_refused(folder, model,
                                                                           tmp_path):
    """An empty class folder in test/ alone was refused as a class the training data lacks,
    whose advice (the same class folders in train/) met few-shot's refusal of a training
    class without images. It has no image to score: the probes run, on the other classes."""
    import shutil

    module, variables = model
    root = tmp_path / "colours"
    shutil.copytree(folder, root)
    (root / "test" / "purple").mkdir()
    config = config_for(few_shot=evaluate.few_shot_task(str(root), shots="1", seeds=1))
    metrics, evaluation = evaluate.evaluate_model(config, module, variables)
    assert 0 <= metrics["few_shot/t/1shot_top1"] <= 1
    assert evaluation.provenance["few_shot/t"]["images"] == 5 * len(COLOURS)


def smallnorb_source(self, split, decoders=None, deserialize_method=None, **kwargs):
    """Mock random access: 10 greyscale smallnorb examples, whose labels sit in
    `label_category` and four other ClassLabels, none named `label`."""
    del split, decoders, deserialize_method, kwargs
    rng = np.random.default_rng(5)
    features = self.info.features
    return [features.serialize_example({
        "image": rng.integers(0, 256, (96, 96, 1), dtype=np.uint8),
        "image2": rng.integers(0, 256, (96, 96, 1), dtype=np.uint8),
        **{key: int(rng.integers(0, features[key].num_classes))
           for key in ("label_category", "instance", "label_elevation", "label_azimuth",
                       "label_lighting")}}) for _ in range(10)]


def test_eval_cli_names_the_label_feature_of_a_tfds_dataset(model, folder, tmp_path, capsys):
    """smallnorb has no `label`: `clip-jax eval --zero-shot smallnorb@test` could not be run
    from the command line (the error asked for data.label_key, which no flag sets).
    `--label-key` names the ClassLabel; without it the error lists the dataset's ClassLabels."""
    module, variables = model
    clip_jax.save(module, variables, str(tmp_path / "m"))
    run = ["eval", str(tmp_path / "m"), "--zero-shot", "smallnorb@test", "--templates", "simple"]
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_data_source_fn=smallnorb_source):
        assert cli.main(run) == 2
        features = tfds.builder("smallnorb").info.features
        class_labels = [k for k in features.keys()
                        if isinstance(features[k], tfds.features.ClassLabel)]
        error = capsys.readouterr().err
        assert "--label-key (not given, so 'label') is not a feature" in error
        assert f"({', '.join(class_labels)})" in error
        # A default the user never passed was said as if passed (`--caption-key 'captions'`).
        assert cli.main(["eval", str(tmp_path / "m"), "--retrieval", "smallnorb@test"]) == 2
        error = capsys.readouterr().err
        assert "--caption-key (not given, so 'captions') is not a feature of smallnorb" in error
        assert "has no text feature" in error
        assert cli.main(run + ["--label-key", "label_category"]) == 0
        out = capsys.readouterr().out
        examples = [features.deserialize_example_np(r)
                    for r in smallnorb_source(tfds.builder("smallnorb"), "test")]
    names = features["label_category"].names
    images = embed(module, variables, images=preprocess(
        [Image.fromarray(e["image"][..., 0]).convert("RGB") for e in examples], module.config))
    classes = class_embeddings(module, variables, names, ("a photo of a {}.",))
    labels = np.array([e["label_category"] for e in examples])
    expected = np.mean((images @ classes.T).argmax(1) == labels)
    row = next(line for line in out.splitlines() if line.startswith("| zero_shot | ")
               and "| top1 |" in line)
    cells = [c.strip() for c in row.split("|")]
    assert float(cells[4]) == pytest.approx(expected, abs=5e-5)
    assert cells[8] == "5"  # label_category's classes, not instance's 10
    # A folder has no features to name: the flag would be ignored, so it is refused.
    assert cli.main(["eval", str(tmp_path / "m"), "--zero-shot", str(folder),
                     "--label-key", "label_category"]) == 2
    assert "and every source here is an image folder or webdataset" in capsys.readouterr().err


def test_a_tables_columns_are_named_by_the_key_flags(model, folder, tmp_path, capsys):
    """A labelled CSV whose header holds neither a known image nor a known label column
    (`picture,species`) could not be evaluated without renaming its header; `--image-key` /
    `--label-key` name them, as they name a TFDS dataset's features."""
    module, variables = model
    clip_jax.save(module, variables, str(tmp_path / "m"))
    files = sorted((folder / "test").glob("*/*.png"))
    species = [f.parent.name for f in files]
    pd.DataFrame({"picture": [str(f) for f in files], "species": species}).to_csv(
        tmp_path / "pets.csv", index=False)
    run = ["eval", str(tmp_path / "m"), "--zero-shot", str(tmp_path / "pets.csv"),
           "--templates", "simple"]
    assert cli.main(run) == 2
    error = capsys.readouterr().err
    assert "has no image column" in error and "set --image-key" in error
    assert cli.main(run + ["--image-key", "picture", "--label-key", "species"]) == 0
    out = capsys.readouterr().out
    names = sorted(set(species))
    images = embed(module, variables, images=preprocess([Image.open(f) for f in files],
                                                        module.config))
    classes = class_embeddings(module, variables, names, ("a photo of a {}.",))
    expected = np.mean((images @ classes.T).argmax(1) == [names.index(s) for s in species])
    row = next(line for line in out.splitlines() if "| top1 |" in line)
    assert float(row.split("|")[4]) == pytest.approx(expected, abs=5e-5)
    assert cli.main(run + ["--image-key", "picture", "--label-key", "breed"]) == 2  # named
    assert "label column 'breed' is not in" in capsys.readouterr().err


def test_retrieval_on_a_tfds_caption_dataset_names_its_features(model, tmp_path, capsys):
    """`--retrieval coco_captions@val` (its `captions` a dict of id and text) ran into a
    TensorFlow TypeError; the text inside is read, and `--caption-key` names another
    feature, in flag terms when it is missing."""
    from test_data_tfds_any import coco_example, fake_source

    module, variables = model
    clip_jax.save(module, variables, str(tmp_path / "m"))
    run = ["eval", str(tmp_path / "m"), "--retrieval", "coco_captions@val", "--batch-size", "8"]
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_data_source_fn=fake_source):
        assert cli.main(run + ["--output", str(tmp_path / "out")]) == 0
        assert cli.main(run + ["--caption-key", "title", "--image-key", "image"]) == 2
        assert "--caption-key 'title' is not a feature of coco_captions" in capsys.readouterr().err
        # A text feature as the image ran into a TensorFlow shape error in the JPEG decoder.
        for key, what in (("captions/text", "text inside the sequence 'captions'"),
                          ("captions", "a sequence"), ("image/id", "a Tensor of int64")):
            assert cli.main(run + ["--image-key", key]) == 2
            assert (f"--image-key {key!r} of coco_captions/2014/1.1.0 is not an image ({what}); "
                    "name an image feature (image)") in capsys.readouterr().err
    (record,) = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl")]
    builder = tfds.builder("coco_captions")  # the images as stored: JPEG-encoded by TFDS
    stored = [builder.info.features.deserialize_example_np(r)
              for r in fake_source(builder, "val")]
    images = embed(module, variables, images=preprocess(
        [Image.fromarray(e["image"]) for e in stored], module.config))
    texts = [t for n in range(24) for t in coco_example(n)["captions"]["text"]]
    owners = np.repeat(np.arange(24), [len(coco_example(n)["captions"]["text"])
                                       for n in range(24)])
    captions = embed(module, variables, tokens=tokenize(texts, module.config.context_length))
    sims = images @ captions.T  # recall@k by numpy: the right caption / image in the top k
    for k in (1, 5, 10):
        i2t = np.mean([np.any(owners[np.argsort(-row)[:k]] == i) for i, row in enumerate(sims)])
        t2i = np.mean([j in np.argsort(-col)[:k] for j, col in zip(owners, sims.T)])
        assert record[f"retrieval/coco_captions_val/i2t_r{k}"] == pytest.approx(i2t, abs=1e-6)
        assert record[f"retrieval/coco_captions_val/t2i_r{k}"] == pytest.approx(t2i, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# A split with no readable image, task-named warnings, probe test classes, table provenance,
# robustness sets scored among fewer classes.


def colour_subset(folder, root, classes, split="test"):
    """A copy of the folder's `split` holding only the class folders `classes`."""
    import shutil

    for name in classes:
        shutil.copytree(folder / split / name, root / name)
    return root


def prepared(module, variables, files):
    return embed(module, variables, images=preprocess(
        [Image.open(f).convert("RGB") for f in files], module.config))


def test_a_split_with_no_readable_image_is_refused_by_every_evaluator(model, folder, tmp_path,
                                                                       capsys, caplog):
    """`clip-jax eval --zero-shot bad/` on a folder of two unreadable files reported top1 nan
    over 0 images (numpy's "Mean of empty slice"), wrote NaN to results.json and exited 0.
    Every evaluator now refuses such a split in one line naming it and the count (exit 2 at
    the command line), and retrieval refuses a split without captions, where every recall was
    NaN too."""
    from test_data_tfds_any import coco_example

    module, variables = model
    bad = tmp_path / "bad"
    for name in ("cat", "dog"):
        (bad / name).mkdir(parents=True)
    (bad / "cat" / "a.jpg").write_text("hello\n")
    (bad / "dog" / "b.png").write_bytes(b"")
    said = rf"^image folder {bad}: none of its 2 image\(s\) could be read "
    for kind, task in (
            ("zero_shot", evaluate.zero_shot_task(str(bad), templates="simple")),
            ("linear_probe", evaluate.linear_probe_task(str(bad), "", "", l2="0.01")),
            ("few_shot", evaluate.few_shot_task(str(bad), "", "", shots="1", seeds=1)),
            ("robustness", evaluate.robustness_task(str(bad), shifts="greyscale", baseline="",
                                                    templates="simple"))):
        with pytest.raises(ConfigError, match=said):
            evaluate.evaluate_model(config_for(**{kind: task}), module, variables)
    clip_jax.save(module, variables, str(tmp_path / "m"))
    out = tmp_path / "out"
    assert cli.main(["eval", str(tmp_path / "m"), "--zero-shot", str(bad), "--output",
                     str(out)]) == 2
    captured = capsys.readouterr()
    error = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and error[0].startswith(f"error: image folder {bad}: none of its 2 ")
    assert "nan" not in captured.out and not (out / "results.json").exists()

    def captionless(self, split, decoders=None, deserialize_method=None, **kwargs):
        examples = [coco_example(n) for n in range(6)]
        for e in examples:
            e["captions"] = {"id": [], "text": []}
        return [self.info.features.serialize_example(e) for e in examples]

    config = config_for(retrieval=evaluate.retrieval_task("coco_captions", "val",
                                                          caption_key="captions/text"))
    config.data.data_dir = str(tmp_path / "tfds")
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_data_source_fn=captionless):
        with pytest.raises(ConfigError, match=r"^config.eval.retrieval.t: coco_captions \(val\) "
                                              r"has 6 image\(s\) but no caption"):
            evaluate.evaluate_model(config, module, variables)

    def two_captionless(self, split, decoders=None, deserialize_method=None, **kwargs):
        examples = [coco_example(n) for n in range(6)]
        for e in examples[1:3]:
            e["captions"] = {"id": [], "text": []}
        return [self.info.features.serialize_example(e) for e in examples]

    # Images without a caption leave image->text recall, which the table's image count
    # does not say: a warning does (trial CO).
    from clip_jax.data import eval_pipeline

    eval_pipeline._CAPTION_COUNTS.clear()  # the mock's split changed under its own name
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_data_source_fn=two_captionless), \
            caplog.at_level("WARNING", logger="clip_jax.evaluation"):
        evaluate.evaluate_model(config, module, variables)
    assert "config.eval.retrieval.t: 2 of 6 images of coco_captions have no caption, so " \
           "image->text recall is over the other 4 (text->image still ranks all 6)" in \
           caplog.text


def test_every_evaluators_warnings_name_their_task(model, folder, tmp_path, monkeypatch,
                                                  caplog):
    """Two few-shot tasks in one run both warned `Few-shot: ...` (which one?), as did the
    linear probe (`Linear probe: ...`) and a robustness task's probe baseline. Every warning an
    evaluator gives now begins with its task, `few_shot/hard: ...`."""
    from clip_jax.evaluation import linear_probe

    module, variables = model
    monkeypatch.setattr(few_shot, "MAX_ITER", 1)  # every fit stops short: a warning each
    monkeypatch.setattr(linear_probe, "MAX_ITER", 1)
    sub = colour_subset(folder, tmp_path / "sub", ["green", "red"])
    config = config_for()
    config.eval.evaluators = "linear_probe,few_shot,robustness"
    config.eval.few_shot = {
        # 6 training images per class: 4-shot probes validate on fewer than 4 of them.
        "hard": evaluate.few_shot_task(str(folder), "train", "test", shots="1,4", seeds=1,
                                       l2="0.01,0.1", templates="simple"),
        "easy": evaluate.few_shot_task(str(folder), "train", "test", shots="4", seeds=1,
                                       l2="0.01", templates="simple")}
    config.eval.linear_probe = {"lp": evaluate.linear_probe_task(str(folder), "train", "test",
                                                                 l2="0.01,0.1")}
    config.eval.robustness = {"rob": evaluate.robustness_task(
        str(folder), shifts="greyscale", shifted=str(sub), baseline="linear_probe",
        templates="simple")}
    with caplog.at_level("WARNING"):
        evaluate.evaluate_model(config, module, variables)
    said = [r.getMessage() for r in caplog.records if r.name.startswith("clip_jax.evaluation")]
    tasks = ("few_shot/hard", "few_shot/easy", "linear_probe/lp", "robustness/rob")
    assert said and all(m.startswith(tasks) for m in said), said
    for task in tasks:
        assert any(m.startswith(f"{task}: ") or m.startswith(f"{task} (") for m in said), task
    for task in ("few_shot/hard", "few_shot/easy"):
        assert any(m.startswith(f"{task}: some classes have fewer than 2 x k training images "
                              "for k = 4") for m in said)
        assert any(m.startswith(f"{task}: ") and "L-BFGS fit" in m for m in said)
    assert any(m.startswith("robustness/rob (linear-probe baseline): ") and "L-BFGS" in m
               for m in said)
    assert any(m.startswith("robustness/rob: sub has no linear-probe baseline") for m in said)


def test_probes_score_a_test_split_lacking_some_training_classes(model, folder, tmp_path):
    """`--linear-probe data/hard@train data/hard@val` with a val folder lacking some classes
    was refused ('different classes'). The test classes are matched by name and scored among
    all the training classes, as scikit-learn's LogisticRegression fit on the training split
    and scored on the test split; few-shot scores zero-shot among the training classes too."""
    module, variables = model
    val = colour_subset(folder, tmp_path / "val", ["green", "red"])  # no 'blue'
    config = config_for(
        linear_probe=evaluate.linear_probe_task(str(folder), "train", "", l2="0.01",
                                                test_dataset=str(val)),
        few_shot=evaluate.few_shot_task(str(folder), "train", "", test_dataset=str(val),
                                        shots="1,2", seeds=2, l2="0.01", zero_shot_init=False,
                                        templates="simple"))
    metrics, evaluation = evaluate.evaluate_model(config, module, variables)
    train, test = labelled_data.read(str(folder), "train"), labelled_data.read(str(val))
    x_train, x_test = (prepared(module, variables, t.files) for t in (train, test))
    # The test labels as training classes, by name.
    y_test = np.array([list(train.class_names).index(test.class_names[y]) for y in test.labels])
    assert sorted(set(y_test)) != list(range(len(train.class_names)))  # a true subset
    mean, std = x_train.mean(0), np.maximum(x_train.std(0), 1e-6)
    probe = LogisticRegression(C=1 / (0.01 * len(x_train)), tol=1e-10, max_iter=10_000)
    probe.fit((x_train - mean) / std, train.labels)
    assert metrics["linear_probe/t/accuracy"] == pytest.approx(
        probe.score((x_test - mean) / std, y_test), abs=1.01 / len(x_test))
    assert evaluation.provenance["linear_probe/t"]["classes"] == 3
    classes = class_embeddings(module, variables, list(train.class_names),
                               templates.TEMPLATE_SETS["simple"])
    assert metrics["few_shot/t/zero_shot_top1"] == pytest.approx(
        np.mean((x_test @ classes.T).argmax(1) == y_test), abs=1e-6)
    for k in (1, 2):
        accs = []
        for seed in range(2):
            fit = few_shot.sample_shots(train.labels, k, np.random.default_rng(seed))
            clf = LogisticRegression(C=1 / (0.01 * len(fit)), tol=1e-10, max_iter=10_000)
            clf.fit(x_train[fit].astype(np.float64), train.labels[fit])
            accs.append(np.mean(clf.predict(x_test) == y_test))
        assert metrics[f"few_shot/t/{k}shot_top1"] == pytest.approx(np.mean(accs),
                                                                     abs=1.01 / len(x_test))


def test_a_probe_fit_on_its_test_data_is_warned_about(model, folder, caplog):
    """`--linear-probe DIR DIR` (or `--few-shot`) fit the probe on the images it was scored
    on, without a word (0.97 in a trial), where --robustness warns the same; both probes now
    say so, naming the data; distinct splits of one folder say nothing."""
    module, variables = model
    test = str(folder / "test")
    for flag, extra in (("--linear-probe", ()), ("--few-shot", ("--shots", "1", "--seeds",
                                                                 "1", "--templates", "simple"))):
        for train, warned in ((test, True), (f"{folder}@train", False)):
            config = eval_args(flag, train, f"{folder}/./test", *extra)
            caplog.clear()
            with caplog.at_level("WARNING"):
                evaluate.evaluate_model(config, module, variables)
            said = f"the probe is fit on the test data itself (image folder {test})"
            assert (said in caplog.text) == warned, (flag, train, caplog.text)


def test_a_linear_probe_test_class_without_training_images_is_warned_about(model, folder,
                                                                         tmp_path, caplog):
    """`--linear-probe train.csv test_extra.csv --class-names ...,magenta`: the test images of
    a class with no training images were scored, always wrong, without a word (few-shot
    refuses the same inputs). They count as misses, as in scikit-learn's score, and one
    warning names the class and how many test images cannot be right; a test folder with a
    class folder the training folder lacks is scored alike."""
    module, variables = model
    train_files = sorted(str(f) for f in (folder / "train").glob("*/*.png")
                         if f.parent.name != "blue")
    test_files = sorted(str(f) for f in (folder / "test").glob("*/*.png"))
    for name, files in (("train", train_files), ("test", test_files)):
        pd.DataFrame({"filepath": files, "label": [os.path.basename(os.path.dirname(f))
                                                   for f in files]}).to_csv(
            tmp_path / f"{name}.csv", index=False)
    names = ",".join(COLOURS)  # red, green, blue: 'blue' has test images only
    config = eval_args("--linear-probe", str(tmp_path / "train.csv"),
                       str(tmp_path / "test.csv"), "--class-names", names)
    config.eval.linear_probe.test.l2 = "0.01"
    with caplog.at_level("WARNING"):
        metrics, _ = evaluate.evaluate_model(config, module, variables)
    y_train = np.array([os.path.basename(os.path.dirname(f)) for f in train_files])
    y_test = np.array([os.path.basename(os.path.dirname(f)) for f in test_files])
    x_train, x_test = (prepared(module, variables, f) for f in (train_files, test_files))
    mean, std = x_train.mean(0), np.maximum(x_train.std(0), 1e-6)
    probe = LogisticRegression(C=1 / (0.01 * len(x_train)), tol=1e-10, max_iter=10_000)
    probe.fit((x_train - mean) / std, y_train)  # two classes: it never predicts 'blue'
    assert metrics["linear_probe/test/accuracy"] == pytest.approx(
        probe.score((x_test - mean) / std, y_test), abs=1.01 / len(x_test))
    # Mean per-class recall, 'blue' at 0 among the test classes (trial A: top-1 only was
    # reported on an unbalanced test set).
    fewest = min(np.sum(y_test == c) for c in set(y_test))
    assert metrics["linear_probe/test/mean_per_class_recall"] == pytest.approx(
        balanced_accuracy_score(y_test, probe.predict((x_test - mean) / std)),
        abs=1.01 / fewest / len(set(y_test)))
    blue = int(np.sum(y_test == "blue"))
    assert (f"linear_probe/test: 1 test class(es) have no training images, so their {blue} of "
            f"{len(y_test)} test images can never be predicted right and count as misses"
            in caplog.text), caplog.text
    assert f": blue ({blue}); add training images" in caplog.text
    with pytest.raises(ConfigError, match=r"these have none: blue \(0\)"):  # few-shot refuses
        evaluate.evaluate_model(eval_args(
            "--few-shot", str(tmp_path / "train.csv"), str(tmp_path / "test.csv"),
            "--class-names", names, "--shots", "1"), module, variables)


def test_a_probe_with_no_test_class_among_the_training_classes_is_refused(model, folder,
                                                                         tmp_path, monkeypatch):
    """Test data sharing no class with the training data (a table of bare indices against a
    named folder) would be all misses: refused before any image is embedded."""
    from clip_jax.evaluation.embedding import Embedder

    module, variables = model
    index_tables(folder, tmp_path)
    monkeypatch.setattr(Embedder, "embed_split", lambda *a, **k: pytest.fail("embedded"))
    config = config_for(linear_probe=evaluate.linear_probe_task(
        str(folder), "train", "", test_dataset=str(tmp_path / "test.csv")))
    with pytest.raises(ConfigError, match=r"have no class in common \(only in the training "
                                          r"data: 'blue', 'green', 'red' \(3 classes\); only "
                                          r"in the test data: '0', '1', '2' \(3 classes\)\)"):
        evaluate.evaluate_model(config, module, variables)


def test_retrieval_results_name_the_caption_table_by_its_file(model, folder, tmp_path,
                                                              monkeypatch):
    """`clip-jax eval RUN --retrieval caps.csv` named its data `image_text_table` (the
    builder) in the table and results.csv; it is `table caps.csv`, as a labelled table is
    `table data/x.csv`. A webdataset_shards split is named by its shards likewise."""
    from clip_jax.cli import eval_sources
    from clip_jax.evaluation import passes

    module, variables = model
    monkeypatch.chdir(tmp_path)
    files = sorted((folder / "test").glob("*/*.png"))
    pd.DataFrame({"filepath": [str(f) for f in files],
                  "title": [f"a {f.parent.name} square" for f in files]}).to_csv(
        "caps.csv", index=False)
    config = config_for()
    config.data.data_dir = str(tmp_path / "tfds")
    eval_sources.apply(config, cli.parser().parse_args(["eval", "m", "--retrieval",
                                                        "caps.csv"]))
    metrics, evaluation = evaluate.evaluate_model(config, module, variables)
    assert evaluation.provenance["retrieval/caps"]["data"] == "table caps.csv"
    table = pd.DataFrame(eval_report.rows(metrics, evaluation.provenance, "m"))
    assert set(table.dataset) == {"table caps.csv"}
    data = data_options.default_config()
    data.dataset, data.webdataset.test_shards = "webdataset_shards", "/x/{0..3}.tar"
    assert passes.built_description(data, "test[:10]") == "webdataset shards /x/{0..3}.tar"
    assert passes.built_description(data, "train") == "webdataset_shards"  # no train shards


def test_robustness_compares_a_set_among_fewer_classes_like_with_like(model, folder, tmp_path,
                                                                      caplog):
    """A shifted folder holding 2 of the reference's 3 classes is scored among those 2 (an
    easier task): its drop compared that with the reference's 3-way top-1, and
    mean_shifted_top1 averaged it with 3-way sets. Its drop is now measured from the
    reference's top-1 among the same 2 classes (on the reference's images of them), the means
    leave it out, and one warning (and the mean's provenance) says so; numbers by numpy."""
    module, variables = model
    sub = colour_subset(folder, tmp_path / "sub", ["green", "red"])
    config = config_for(robustness=evaluate.robustness_task(
        str(folder), shifts="greyscale", shifted=str(sub), baseline="0.6:0.5",
        templates="simple"))
    with caplog.at_level("WARNING"):
        metrics, evaluation = evaluate.evaluate_model(config, module, variables)
    test = labelled_data.read(str(folder), "test")
    names = list(test.class_names)
    classes = class_embeddings(module, variables, names, templates.TEMPLATE_SETS["simple"])
    images = prepared(module, variables, test.files)
    grey = embed(module, variables, images=preprocess(
        [Image.open(f).convert("L").convert("RGB") for f in test.files], module.config))
    reference = np.mean((images @ classes.T).argmax(1) == test.labels)
    subset = labelled_data.read(str(sub))
    ids = np.array([names.index(n) for n in subset.class_names])
    sub_top1 = np.mean((prepared(module, variables, subset.files) @ classes[ids].T).argmax(1)
                       == subset.labels)
    keep = np.isin(test.labels, ids)
    own = np.searchsorted(ids, test.labels[keep])  # ids are sorted: green, red
    reference_among = np.mean((images[keep] @ classes[ids].T).argmax(1) == own)
    grey_top1 = np.mean((grey @ classes.T).argmax(1) == test.labels)
    assert metrics["robustness/t/sub_top1"] == pytest.approx(sub_top1, abs=1e-6)
    assert metrics["robustness/t/sub_drop"] == pytest.approx(reference_among - sub_top1,
                                                             abs=1e-6)
    assert metrics["robustness/t/greyscale_drop"] == pytest.approx(reference - grey_top1,
                                                                   abs=1e-6)
    assert metrics["robustness/t/mean_shifted_top1"] == pytest.approx(grey_top1, abs=1e-6)
    assert metrics["robustness/t/mean_effective_robustness"] == pytest.approx(
        metrics["robustness/t/greyscale_effective_robustness"])
    assert caplog.text.count("scored among fewer classes than the reference") == 1
    assert "robustness/t: sub (2 of 3 classes) is scored among fewer classes" in caplog.text
    rows = pd.DataFrame(eval_report.rows(metrics, evaluation.provenance, "m")).set_index(
        "metric")
    assert rows.loc["mean_shifted_top1", "dataset"] == (
        "mean over greyscale (left out, scored among fewer classes: sub)")
    assert rows.loc["sub_drop", "classes"] == 2
    assert rows.loc["sub_drop", "dataset"].endswith("vs the reference among the same 2 classes")
