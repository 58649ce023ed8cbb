"""finetune_seqcls.py and absa/seqcls_data.py on tiny offline encoders.

Each task type learns a small keyword task; its metrics are recomputed with scikit-learn / SciPy from the
predictions the run wrote; the README's `transformers.pipeline` snippet, run on the saved folder, must predict the
same; bad data is refused before training with file, row and field; 2 processes give the metrics of 1.
"""

import csv
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from scipy import stats
from sklearn import metrics as skm

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # plain `pytest` (not `python -m pytest`) does not put the checkout on sys.path
    sys.path.insert(0, str(REPO))

import finetune_seqcls as script  # noqa: E402
from absa.files import DataError  # noqa: E402
from absa.seqcls_data import load_text_data  # noqa: E402

FILLER = ["the", "food", "screen", "battery", "service", "was", "is", "and", "price", "keyboard", "pasta", "wine",
          "drive", "fan", "system", "quality"]
EMOTIONS = {"anger": "awful", "joy": "excellent", "fear": "cramped"}
TOPICS = {"food": "noodles", "music": "music", "tech": "processor"}
# Every launcher variable, cleared so that in-process runs and subprocesses start as plain single processes.
LAUNCH_VARS = ["WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PMI_SIZE",
               "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "ACCELERATE_USE_CPU",
               "ACCELERATE_USE_FSDP", "ACCELERATE_DYNAMO_BACKEND", "ACCELERATE_MIXED_PRECISION"]
# Small and fast on 2 CPU cores: a hidden-32 encoder learns keyword tasks at this learning rate in a few epochs.
FAST = ["--learning_rate", "2e-3", "--warmup_steps", "0", "--per_device_batch_size", "8", "--eval_batch_size", "32",
        "--num_epochs", "6", "--early_stopping_patience", "6", "--max_length", "32"]


# ----------------------------------------------------------------------------------------------- data


def sentence(rng, keywords=(), length=(3, 5)):
    words = rng.choices(FILLER, k=rng.randint(*length))
    for keyword in keywords:
        words.insert(rng.randint(0, len(words)), keyword)
    return " ".join(words)


def binary_rows(n, seed):
    """SST-2 style: label 1 iff the sentence says 'excellent' (else 'awful')."""
    rng = random.Random(seed)
    return [{"sentence": sentence(rng, ["excellent" if y else "awful"]), "label": y}
            for y in (rng.randint(0, 1) for _ in range(n))]


def topic_rows(n, seed):
    """TTC4900 style `category,text`: the topic's keyword decides the class name."""
    rng = random.Random(seed)
    return [{"category": c, "text": sentence(rng, [TOPICS[c]])} for c in (rng.choice(sorted(TOPICS)) for _ in range(n))]


def emotion_rows(n, seed):
    """SemEval-2018 E-c style: ID, Tweet, one 0/1 column per emotion; each keyword present with p=0.4."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        present = {e: int(rng.random() < 0.4) for e in EMOTIONS}
        rows.append({"ID": f"2018-{seed}-{i}", "Tweet": sentence(rng, [EMOTIONS[e] for e in EMOTIONS if present[e]]),
                     **present})
    return rows


def pair_rows(n, seed):
    """STS-B style pairs: the score (0-5, written as a float) counts 'excellent' across BOTH sentences."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k1, k2 = rng.randint(0, 2), rng.randint(0, 2)
        rows.append({"sentence1": sentence(rng, ["excellent"] * k1), "sentence2": sentence(rng, ["excellent"] * k2),
                     "score": f"{5 * (k1 + k2) / 4:.3f}"})
    return rows


def write_table(path, rows, columns=None):
    """CSV (quoted as needed), or tab-separated for .tsv / .txt; JSONL for .jsonl."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return path
    columns = columns or list(rows[0])
    with path.open("w", newline="") as handle:
        if path.suffix == ".csv":
            writer = csv.writer(handle)
            writer.writerow(columns)
            writer.writerows([[row.get(c, "") for c in columns] for row in rows])
        else:
            handle.write("\t".join(columns) + "\n")
            handle.writelines("\t".join(str(row.get(c, "")) for c in columns) + "\n" for row in rows)
    return path


# ----------------------------------------------------------------------------------------------- running


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Two shared cores: one intra-op thread per process is faster than two fighting threads, and makes the
    # in-process runs match the 1-thread torchrun workers.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    saved = {var: os.environ.pop(var) for var in LAUNCH_VARS if var in os.environ}
    yield
    torch.set_num_threads(threads)
    os.environ.update(saved)


def run_script(args):
    """finetune_seqcls.main in this process, from command-line style arguments."""
    return script.main(script.parse_settings(script.Settings, [str(a) for a in args]))


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def run_readme_snippet(model_dir, texts) -> dict:
    """README.md's prediction snippet as a user copies it, but for the model folder and the texts; its variables."""
    readme = (REPO / "README.md").read_text()
    code = readme.split("<!-- pipeline snippet")[1].split("<!-- end of pipeline snippet")[0].split("```python\n")[1]
    code = code.split("```")[0]
    model = re.search(r'model="([^"]+)"', code)[1]
    texts_line = re.search(r"^texts = .*$", code, flags=re.M)[0]
    namespace = {}
    exec(code.replace(model, str(model_dir)).replace(texts_line, f"texts = {texts!r}"), namespace)  # noqa: S102
    return namespace


@pytest.fixture(scope="module")
def tiny_bert(tiny_model_dirs):
    return tiny_model_dirs["bert"]


@pytest.fixture(scope="module")
def binary_run(tiny_bert, tmp_path_factory):
    root = tmp_path_factory.mktemp("binary")
    write_table(root / "data" / "train.tsv", binary_rows(192, 1))
    write_table(root / "data" / "test.tsv", binary_rows(48, 2))
    out = root / "out"
    results = run_script(["--model_name_or_path", tiny_bert, "--dataset", root / "data", "--output_dir", out,
                          "--label_names", "negative", "positive", *FAST])
    return root, out, results


@pytest.fixture(scope="module")
def multiclass_run(tiny_bert, tmp_path_factory):
    root = tmp_path_factory.mktemp("multiclass")
    train = write_table(root / "ttc.csv", topic_rows(384, 1))
    test = write_table(root / "ttc_test.csv", topic_rows(48, 2))
    out = root / "out"
    results = run_script(["--model_name_or_path", tiny_bert, "--train_file", train, "--test_file", test,
                          "--label_column", "category", "--output_dir", out, "--metric_for_best_model", "macro_f1",
                          *FAST, "--num_epochs", "16", "--early_stopping_patience", "16", "--learning_rate", "3e-3",
                          "--warmup_steps", "30"])  # 3 classes: a tiny encoder can stall with two merged; seeded
    return root, out, results


@pytest.fixture(scope="module")
def multilabel_run(tiny_bert, tmp_path_factory):
    root = tmp_path_factory.mktemp("multilabel")
    write_table(root / "data" / "E-c-train.txt", emotion_rows(384, 1))
    write_table(root / "data" / "E-c-dev.txt", emotion_rows(64, 2))
    write_table(root / "data" / "E-c-test-gold.txt", emotion_rows(64, 3))
    out = root / "out"
    results = run_script(["--model_name_or_path", tiny_bert, "--dataset", root / "data", "--output_dir", out,
                          "--label_columns", *EMOTIONS, "--tune_threshold", "true", *FAST])
    return root, out, results


@pytest.fixture(scope="module")
def regression_run(tiny_bert, tmp_path_factory):
    root = tmp_path_factory.mktemp("regression")
    write_table(root / "data" / "train.tsv", pair_rows(256, 1))
    write_table(root / "data" / "dev.tsv", pair_rows(64, 3))  # as for STS-B: GLUE's dev is the test set
    out = root / "out"
    results = run_script(["--model_name_or_path", tiny_bert, "--train_file", root / "data" / "train.tsv",
                          "--test_file", root / "data" / "dev.tsv", "--output_dir", out, *FAST,
                          "--learning_rate", "5e-3", "--per_device_batch_size", "8", "--num_epochs", "4",
                          "--metric_for_best_model", "pearson"])
    return root, out, results


# ----------------------------------------------------------------------------------------------- the four tasks


def test_binary_learns_and_metrics_are_sklearns(binary_run):
    _, out, results = binary_run
    assert results["task"] == "single_label" and results["label_names"] == ["negative", "positive"]
    history = results["validation_history"]
    assert history[-1]["loss"] < history[0]["loss"] - 0.3  # it learned, not chance
    assert results["test_accuracy"] >= 0.9  # chance is 0.5
    rows = read_jsonl(out / "test_predictions.jsonl")
    assert len(rows) == results["split_sizes"]["test"] == 48
    names = results["label_names"]
    gold, predicted = [r["label"] for r in rows], [r["prediction"] for r in rows]
    probabilities = np.array([[r["scores"][n] for n in names] for r in rows], dtype=np.float64)
    probabilities /= probabilities.sum(axis=1, keepdims=True)  # float32 softmax sums to 1 within 1e-7
    test = results["test"]
    precision, recall, f1, _ = skm.precision_recall_fscore_support(gold, predicted, labels=names, average="macro",
                                                                   zero_division=0)
    assert test["accuracy"] == pytest.approx(skm.accuracy_score(gold, predicted))
    assert (test["macro_precision"], test["macro_recall"], test["macro_f1"]) == pytest.approx((precision, recall, f1))
    assert test["loss"] == pytest.approx(skm.log_loss(gold, probabilities, labels=names), rel=1e-4)
    assert test["confusion_matrix"] == skm.confusion_matrix(gold, predicted, labels=names).tolist()
    for name in ("results.json", "metrics.jsonl", "curves.png", "confusion_matrix.png", "best_model/config.json"):
        assert (out / name).is_file(), name


def test_multiclass_csv_label_names_from_data(multiclass_run):
    _, out, results = multiclass_run
    assert results["label_names"] == sorted(TOPICS)  # class names read from the data, sorted
    assert results["test_accuracy"] >= 0.8  # chance is 1/3
    assert results["best_validation"]["macro_f1"] == max(r["macro_f1"] for r in results["validation_history"])
    rows = read_jsonl(out / "test_predictions.jsonl")
    gold, predicted = [r["label"] for r in rows], [r["prediction"] for r in rows]
    assert results["test"]["macro_f1"] == pytest.approx(skm.f1_score(gold, predicted, average="macro"))
    assert results["test"]["confusion_matrix"] == skm.confusion_matrix(gold, predicted, labels=sorted(TOPICS)).tolist()
    assert (out / "confusion_matrix.png").stat().st_size > 1000


def test_multilabel_threshold_tuned_on_validation(multilabel_run):
    _, out, results = multilabel_run
    names = list(EMOTIONS)
    assert results["task"] == "multi_label" and results["label_names"] == names
    assert results["threshold_tuned"] and 0.05 <= results["threshold"] <= 0.95
    history = results["validation_history"]
    assert history[-1]["loss"] < history[0]["loss"] - 0.2 and history[0]["micro_f1"] < 0.6
    assert results["test_micro_f1"] >= 0.7 and results["test_roc_auc"] >= 0.85  # chance: AUC 0.5
    assert results["validation_at_threshold"]["threshold"] == results["threshold"]
    # The tuned threshold is saved with the model, beside the problem type the pipeline reads.
    config = json.loads((out / "best_model" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert config["multi_label_threshold"] == results["threshold"]
    rows = read_jsonl(out / "test_predictions.jsonl")
    gold = np.array([[int(n in r["label"]) for n in names] for r in rows])
    scores = np.array([[r["scores"][n] for n in names] for r in rows])
    assert scores.shape == gold.shape == (64, 3)
    predicted = (scores >= results["threshold"]).astype(int)
    assert [[n for n, p in zip(names, row) if p] for row in predicted] == [r["prediction"] for r in rows]
    test = results["test"]
    assert test["micro_f1"] == pytest.approx(skm.f1_score(gold, predicted, average="micro"))
    assert test["macro_f1"] == pytest.approx(skm.f1_score(gold, predicted, average="macro", zero_division=0))
    assert test["subset_accuracy"] == pytest.approx(skm.accuracy_score(gold, predicted))
    assert test["roc_auc"] == pytest.approx(skm.roc_auc_score(gold, scores, average="micro"), abs=1e-6)
    clipped = np.clip(scores, 1e-7, 1 - 1e-7)
    bce = -np.mean(gold * np.log(clipped) + (1 - gold) * np.log(1 - clipped))
    assert test["loss"] == pytest.approx(bce, rel=1e-3)


def test_multilabel_threshold_sees_validation_not_test(tiny_bert, tmp_path, monkeypatch):
    seen = []
    real = script.best_threshold

    def spy(logits, labels, label_names, metric="micro_f1"):
        seen.append((logits.shape, metric))
        return real(logits, labels, label_names, metric)

    monkeypatch.setattr(script, "best_threshold", spy)
    write_table(tmp_path / "train.jsonl", [{"text": r["Tweet"], "labels": [e for e in EMOTIONS if r[e]]}
                                           for r in emotion_rows(64, 1)])
    write_table(tmp_path / "dev.jsonl", [{"text": r["Tweet"], "labels": [e for e in EMOTIONS if r[e]]}
                                         for r in emotion_rows(21, 2)])
    write_table(tmp_path / "test.jsonl", [{"text": r["Tweet"], "labels": [e for e in EMOTIONS if r[e]]}
                                          for r in emotion_rows(13, 3)])
    results = run_script(["--model_name_or_path", tiny_bert, "--dataset", tmp_path, "--output_dir", tmp_path / "out",
                          "--tune_threshold", "true", "--metric_for_best_model", "macro_f1", *FAST,
                          "--num_epochs", "1"])
    assert results["task"] == "multi_label" and results["label_names"] == sorted(EMOTIONS)  # from the lists
    assert seen == [((21, 3), "macro_f1")]  # validation's 21 rows, the selection metric


def test_regression_pairs_learn_and_metrics_are_scipys(regression_run):
    _, out, results = regression_run
    assert results["task"] == "regression" and results["text_columns"] == ["sentence1", "sentence2"]
    assert results["test_split"] == "test" and results["split_sizes"]["test"] == 64
    assert results["test_pearson"] > 0.5
    rows = read_jsonl(out / "test_predictions.jsonl")
    gold = np.array([r["label"] for r in rows])
    predicted = np.array([r["prediction"] for r in rows])
    assert predicted.shape == gold.shape == (64,) and all(isinstance(p, float) for p in predicted)
    test = results["test"]
    assert test["pearson"] == pytest.approx(stats.pearsonr(predicted, gold)[0], abs=1e-5)
    assert test["spearman"] == pytest.approx(stats.spearmanr(predicted, gold)[0], abs=1e-5)
    assert test["mse"] == pytest.approx(skm.mean_squared_error(gold, predicted), rel=1e-5)
    assert test["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(gold, predicted)), rel=1e-5)
    assert test["mae"] == pytest.approx(skm.mean_absolute_error(gold, predicted), rel=1e-5)
    config = json.loads((out / "best_model" / "config.json").read_text())
    assert config["problem_type"] == "regression" and len(config["id2label"]) == 1


@pytest.mark.parametrize("run", ["binary_run", "multiclass_run", "multilabel_run", "regression_run"])
def test_readme_pipeline_snippet_predicts_what_the_run_wrote(run, request, tmp_path):
    # Prediction is transformers' pipeline over best_model, as README.md shows it: on the test texts (pairs for
    # regression) it must give the probabilities and labels of the run's own test_predictions.jsonl.
    _, out, results = request.getfixturevalue(run)
    rows = read_jsonl(out / "test_predictions.jsonl")
    texts = [{"text": r["text"], "text_pair": r["text_pair"]} if "text_pair" in r else r["text"] for r in rows]
    snippet = run_readme_snippet(out / "best_model", texts)
    config, names, task = snippet["classifier"].model.config, results["label_names"], results["task"]
    assert [config.id2label[i] for i in range(config.num_labels)] == names
    assert config.label2id == {name: i for i, name in enumerate(names)}
    assert len(rows) == results["split_sizes"][results["test_split"]] > 0
    for row, output, predicted in zip(rows, snippet["outputs"], snippet["predictions"], strict=True):
        if task == "regression":  # the pipeline applies no function: the raw score
            assert predicted["score"] == pytest.approx(row["prediction"], abs=1e-4)
            continue
        scores = {item["label"]: item["score"] for item in output}
        assert [scores[n] for n in names] == pytest.approx([row["scores"][n] for n in names], abs=1e-4)
        assert (sorted(predicted) if task == "multi_label" else predicted["label"]) == (
            sorted(row["prediction"]) if task == "multi_label" else row["prediction"])
    if task != "multi_label":
        assert snippet["threshold"] is None
        return
    # The snippet applies the threshold recorded in config.json (here the tuned one; another one moves predictions).
    assert snippet["threshold"] == results["threshold"] and results["threshold_tuned"]
    other = float(np.median([row["scores"][n] for row in rows for n in names]))
    model = shutil.copytree(out / "best_model", tmp_path / "best_model")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "multi_label_threshold": other}))
    moved = run_readme_snippet(model, texts)["predictions"]
    assert [sorted(p) for p in moved] == [sorted(n for n in names if row["scores"][n] >= other) for row in rows]
    assert moved != snippet["predictions"]


# ----------------------------------------------------------------------------------------------- task inference


def test_task_is_read_from_the_labels(tmp_path):
    cases = {
        "single_label": [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}],
        "regression": [{"text": "a", "label": 3.8}, {"text": "b", "label": 1}],
        "multi_label": [{"text": "a", "label": ["x", "y"]}, {"text": "b", "label": []}],
    }
    for task, rows in cases.items():
        data = load_text_data(str(write_table(tmp_path / f"{task}.jsonl", rows * 5)))
        assert data.task == task, task
    ints = write_table(tmp_path / "ints.csv", [{"text": "a", "label": 2}, {"text": "b", "label": 10}] * 5)
    data = load_text_data(train_file=str(ints))
    assert data.task == "single_label" and data.label_names == ["2", "10"]  # numerically sorted
    assert load_text_data(train_file=str(ints), task="regression").task == "regression"
    floats = write_table(tmp_path / "floats.csv", [{"text": "a", "label": "0.5"}, {"text": "b", "label": "1"}] * 5)
    with pytest.raises(DataError, match="--task regression"):
        load_text_data(train_file=str(floats), task="single_label")


def test_label_lists_are_read_by_the_one_label_rule(tmp_path):
    # A label in a list is read as a single label is: its name in any case; an unknown one is refused by row.
    rows = [{"text": f"a {i}", "labels": ["Anger", "JOY"]} for i in range(5)] + [{"text": f"b {i}", "labels": ["joy"]}
                                                                                 for i in range(5)]
    data = load_text_data(train_file=str(write_table(tmp_path / "train.jsonl", rows)), label_names=["anger", "joy"])
    read = {row["text"]: row["labels"] for split in data.splits.values() for row in split}
    assert read == {row["text"]: [1.0, 1.0] if row["text"].startswith("a") else [0.0, 1.0] for row in rows}
    rows[3]["labels"] = ["joy", "fear"]
    error = refused("unknown label 'fear'", train_file=str(write_table(tmp_path / "bad.jsonl", rows)),
                    label_names=["anger", "joy"])
    assert (error.row, error.field) == ("line 4", "labels")


def test_validation_carved_stratified_and_train_capped(tmp_path):
    train = write_table(tmp_path / "train.csv", topic_rows(300, 1))
    data = load_text_data(train_file=str(train), label_column="category", seed=7)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 270, "validation": 30}
    counts = np.bincount(data.splits["train"]["labels"]) / 270
    assert np.abs(np.bincount(data.splits["validation"]["labels"]) / 30 - counts).max() < 0.05  # stratified
    capped = [load_text_data(train_file=str(train), label_column="category", seed=7, max_train_samples=50)
              for _ in range(2)]
    assert len(capped[0].splits["train"]) == 45 and len(capped[0].splits["validation"]) == 5
    assert capped[0].splits["train"]["text"] == capped[1].splits["train"]["text"]  # seeded
    assert capped[0].label_names == sorted(TOPICS)


def test_hub_glue_style_test_without_labels(monkeypatch):
    import datasets

    label = datasets.ClassLabel(names=["negative", "positive"])
    features = datasets.Features({"sentence": datasets.Value("string"), "label": label})

    def split(n, labels):
        return datasets.Dataset.from_dict({"sentence": [f"s {i}" for i in range(n)], "label": labels}, features)

    hub = datasets.DatasetDict({"train": split(20, [0, 1] * 10), "validation": split(6, [1, 0] * 3),
                                "test": split(4, [-1] * 4)})
    monkeypatch.setattr("absa.seqcls_data.load_hub_dataset", lambda name, config: hub)
    data = load_text_data("glue", dataset_config="sst2", seed=0)
    assert data.label_names == ["negative", "positive"]
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 18, "test": 6, "validation": 2}
    assert data.sources["test"] == "glue/sst2 [validation]"


def test_every_parameter_gets_a_gradient(tiny_model_dirs):
    """DDP (find_unused_parameters=False) needs every parameter in the loss, for every family and task."""
    from absa.seqcls_data import TextData

    for family, folder in tiny_model_dirs.items():
        for task, names in (("single_label", ["a", "b", "c"]), ("multi_label", ["x", "y"]), ("regression", ["s"])):
            data = TextData(splits=None, task=task, label_names=names, text_columns=["sentence1", "sentence2"],
                            label_columns=["label"])
            model = script.build_model(str(folder), data, 0.5)
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
            batch = tokenizer(["the food", "a screen is"], ["was great", "bad"], padding=True, return_tensors="pt")
            labels = {"single_label": torch.tensor([0, 2]), "multi_label": torch.tensor([[1.0, 0.0], [0.0, 0.0]]),
                      "regression": torch.tensor([0.5, 4.0])}[task]
            model(**batch, labels=labels).loss.backward()
            unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
            assert not unused, (family, task, unused)


# ----------------------------------------------------------------------------------------------- bad input


def refused(match, **kwargs) -> DataError:
    with pytest.raises(DataError, match=match) as error:
        load_text_data(**kwargs)
    return error.value


def test_missing_label_column_named(tmp_path):
    train = write_table(tmp_path / "train.csv", [{"text": "good", "category": "a"}] * 4)
    error = refused("no label column", train_file=str(train))
    assert (error.file, error.row, error.field) == (str(train), "line 1 (header)", "label")
    assert str(train) in str(error) and "line 1 (header)" in str(error) and "'label'" in str(error)
    error = refused("no column 'topic'", train_file=str(train), label_column="topic")
    assert error.field == "topic"
    jsonl = write_table(tmp_path / "train.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1},
                                                   {"text": "c"}])
    error = refused("no field 'label'", train_file=str(jsonl))
    assert (error.row, error.field) == ("line 3", "label")
    # The validation / test files are checked too.
    test = write_table(tmp_path / "test.csv", [{"text": "good", "labels": "a"}] * 2)
    good = write_table(tmp_path / "good.csv", [{"text": "good", "label": "a"}] * 4)
    error = refused("no column 'label'", train_file=str(good), test_file=str(test))
    assert error.file == str(test)


def test_mixed_label_types_refused(tmp_path):
    rows = [{"text": "a", "label": "1"}, {"text": "b", "label": "0"}, {"text": "c", "label": "positive"}]
    train = write_table(tmp_path / "train.csv", rows)
    error = refused("mixed label types", train_file=str(train))
    assert (error.file, error.row, error.field) == (str(train), "line 4", "label")
    assert "'positive' is text, but this column holds numbers (first: '1' at line 2" in str(error)
    # Across files: numbers in train, a class name in test.
    good = write_table(tmp_path / "good.tsv", rows[:2] * 3)
    test = write_table(tmp_path / "test.tsv", [{"text": "a", "label": "0"}, {"text": "b", "label": "neg"}])
    error = refused("mixed label types", train_file=str(good), test_file=str(test))
    assert (error.file, error.row) == (str(test), "line 3")
    # A class the train data never saw.
    test = write_table(tmp_path / "test2.tsv", [{"text": "a", "label": "7"}])
    error = refused("unknown label 7", train_file=str(good), test_file=str(test))
    assert (error.row, error.field) == ("line 2", "label")


def test_empty_multilabel_row_refused_when_asked(tmp_path):
    rows = emotion_rows(10, 1)
    rows[4].update({e: 0 for e in EMOTIONS})
    first_empty = next(i for i, row in enumerate(rows) if not any(row[e] for e in EMOTIONS))
    train = write_table(tmp_path / "E-c-train.txt", rows)
    data = load_text_data(train_file=str(train), label_columns=list(EMOTIONS))  # kept by default (E-c has 204)
    assert data.task == "multi_label" and sum(1 for split in data.splits.values() for r in split["labels"]
                                              if not any(r)) >= 1
    error = refused("no label set", train_file=str(train), label_columns=list(EMOTIONS), allow_empty_labels=False)
    assert (error.file, error.row, error.field) == (str(train), f"line {first_empty + 2}", "anger,joy,fear")
    rows[2]["joy"] = 2  # line 4
    write_table(train, rows)
    error = refused("0 or 1", train_file=str(train), label_columns=list(EMOTIONS))
    assert (error.row, error.field) == ("line 4", "joy")
    lists = write_table(tmp_path / "lists.jsonl", [{"text": "a", "labels": ["x"]}, {"text": "b", "labels": []}])
    error = refused("no label set", train_file=str(lists), allow_empty_labels=False)
    assert (error.row, error.field) == ("line 2", "labels")


@pytest.mark.parametrize("bad", ["", "NaN", "nan"])
def test_nan_or_empty_score_refused(tmp_path, bad):
    rows = pair_rows(6, 1)
    rows[3]["score"] = bad
    train = write_table(tmp_path / "train.tsv", rows)
    error = refused("missing score", train_file=str(train))
    assert (error.file, error.row, error.field) == (str(train), "line 5", "score")
    jsonl = write_table(tmp_path / "train.jsonl", [{**r, "score": float(r["score"] or 0)} for r in pair_rows(4, 1)]
                        + [{"sentence1": "a", "sentence2": "b", "score": None}])
    error = refused("missing score", train_file=str(jsonl))
    assert (error.row, error.field) == ("line 5", "score")


def test_refused_before_any_model_is_loaded(tmp_path, run_as_main):
    rows = pair_rows(8, 1)
    train = write_table(tmp_path / "train.tsv", rows)
    missing_model = str(tmp_path / "no-such-model")  # loading it would fail differently
    with pytest.raises(SystemExit, match="'accuracy' is not one of loss, pearson"):
        run_script(["--model_name_or_path", missing_model, "--train_file", train, "--output_dir", tmp_path / "o1",
                    "--metric_for_best_model", "accuracy"])
    with pytest.raises(SystemExit, match="'pearson' is not one of loss, accuracy"):  # forced task: before the data
        run_script(["--model_name_or_path", missing_model, "--dataset", tmp_path / "nothing", "--output_dir",
                    tmp_path / "o2", "--task", "single_label", "--metric_for_best_model", "pearson"])
    rows[2]["score"] = "high"
    write_table(train, rows)
    with pytest.raises(DataError, match="mixed label types"):
        run_script(["--model_name_or_path", missing_model, "--train_file", train, "--output_dir", tmp_path / "o3"])
    assert not (tmp_path / "o3" / "best_model").exists()
    # The command line turns a DataError into one line naming file, row and field, without a traceback.
    with pytest.raises(SystemExit) as stopped:  # a string: Python prints it as one line and exits with 1
        run_as_main(REPO / "finetune_seqcls.py", "--model_name_or_path", missing_model, "--train_file", train,
                    "--output_dir", tmp_path / "o4")
    assert f"data error: {train}, line 4, field 'score': mixed label types" in stopped.value.code


# ----------------------------------------------------------------------------------------------- 2 processes


@pytest.mark.multiprocess
def test_two_processes_match_one(tiny_bert, tmp_path):
    # Without dropout, one process with batches of 16 and two with 8 each see the same examples per step
    # (the sampler's order does not depend on the batch size when not grouping by length) and DDP averages
    # the two halves' gradients: the runs must agree. Validation has 27 rows, so the 2-process gather pads
    # the last batch and gather_for_metrics must drop the duplicates.
    model = tmp_path / "bert-no-dropout"
    shutil.copytree(tiny_bert, model)
    config = json.loads((model / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(config))
    write_table(tmp_path / "data" / "train.csv", topic_rows(128, 1))
    write_table(tmp_path / "data" / "validation.csv", topic_rows(27, 2))
    write_table(tmp_path / "data" / "test.csv", topic_rows(19, 3))
    common = ["--model_name_or_path", model, "--dataset", tmp_path / "data", "--label_column", "category",
              "--group_by_length", "false", "--eval_batch_size", "4", "--learning_rate", "5e-3", "--warmup_steps", "0",
              "--num_epochs", "4", "--max_length", "32"]
    one = run_script([*common, "--output_dir", tmp_path / "one", "--per_device_batch_size", "16"])

    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(REPO / "finetune_seqcls.py"), *map(str, common), "--output_dir", str(tmp_path / "two"),
                           "--per_device_batch_size", "8"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert one["num_processes"] == 1 and two["num_processes"] == 2  # recorded from inside the run
    assert two["split_sizes"] == one["split_sizes"] == {"train": 128, "validation": 27, "test": 19}
    assert two["optimizer_steps"] == one["optimizer_steps"] == 32
    history = one["validation_history"]
    assert history[-1]["loss"] < history[0]["loss"] - 0.1  # the weights moved: a wrong shard would show
    for a, b in zip(history, two["validation_history"], strict=True):
        for key in ("loss", "accuracy", "macro_f1", "train_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), key
    assert len(read_jsonl(tmp_path / "two" / "test_predictions.jsonl")) == 19
    assert two["test"]["confusion_matrix"] == one["test"]["confusion_matrix"]
    assert two["test_loss"] == pytest.approx(one["test_loss"], rel=1e-4, abs=1e-5)


def test_test_predictions_carry_their_own_row_with_repeated_texts(tiny_bert, tmp_path):
    # Rows A, B, A' of equal length: evaluation sorted by length keeps them in order only if identical inputs are not
    # grouped (ABSA groups them to share an encoder pass; sequence classification must not reorder them).
    words = ["awful", "excellent"]
    test_rows = [{"sentence": f"the {word} wine", "label": int(word == "excellent")}
                 for word in [words[i % 2] for i in range(12)]]
    write_table(tmp_path / "data" / "train.tsv", binary_rows(96, 1))
    write_table(tmp_path / "data" / "test.tsv", test_rows)
    out = tmp_path / "out"
    run_script(["--model_name_or_path", tiny_bert, "--dataset", tmp_path / "data", "--output_dir", out,
                "--label_names", "negative", "positive", *FAST])
    rows = read_jsonl(out / "test_predictions.jsonl")
    assert [row["text"] for row in rows] == [row["sentence"] for row in test_rows]
    by_text = {}
    for row in rows:  # identical texts, identical predictions: a row paired with another row's logits would differ
        by_text.setdefault(row["text"], set()).add(tuple(round(row["scores"][n], 6) for n in ("negative", "positive")))
    assert all(len(scores) == 1 for scores in by_text.values())
    assert len({scores.pop() for scores in by_text.values()}) == 2  # the two texts get different scores


def test_tuned_threshold_replaces_config_json_whole(tiny_model_dirs, tmp_path):
    # config.json used to be rewritten in place: a kill -9 mid-write left best_model with a truncated config, and a
    # hard link to the file (a copy kept elsewhere) changed with it. Now a new file is renamed over it.
    model_dir = tmp_path / "best_model"
    shutil.copytree(tiny_model_dirs["bert"], model_dir)
    before = (model_dir / "config.json").read_text()
    os.link(model_dir / "config.json", tmp_path / "kept_config.json")
    script.save_threshold(model_dir, 0.35)
    assert json.loads((model_dir / "config.json").read_text())["multi_label_threshold"] == 0.35
    assert (tmp_path / "kept_config.json").read_text() == before
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(p.name for p in tiny_model_dirs["bert"].iterdir())


def test_whole_float_labels_with_label_names_are_classes_not_scores(tmp_path):
    # A float column of class labels (pandas writes -1.0 / 0.0 / 1.0 when a cell was empty): with --label_names
    # naming the classes it is single-label data read by the label rule, not a regression that drops the names.
    rows = [{"text": f"t{i}", "label": f"{(i % 3) - 1}.0"} for i in range(30)]
    train = write_table(tmp_path / "train.csv", rows)
    data = load_text_data(train_file=str(train), label_names=["negative", "neutral", "positive"])
    assert data.task == "single_label" and data.numeric_labels == "sentiment"
    ids = {row["text"]: row["labels"] for split in data.splits.values() for row in split}
    assert ids["t0"] == 0 and ids["t1"] == 1 and ids["t2"] == 2  # -1.0 negative, 0.0 neutral, 1.0 positive
    assert load_text_data(train_file=str(train)).task == "regression"  # no class names: scores, as documented
    scores = write_table(tmp_path / "scores.csv", [{"text": f"t{i}", "label": f"{i / 10}"} for i in range(30)])
    with pytest.raises(DataError, match="--label_names names classes, but the labels are scores"):
        load_text_data(train_file=str(scores), label_names=["low", "high"])


@pytest.mark.parametrize("args", [["--do_train", "false"], ["--predict_file", "x.csv"], ["--text=a fine film"],
                                  ["--predictions_file", "p.jsonl"], ["--text_pair", "b"]])
def test_removed_settings_say_what_replaced_them(args, tmp_path):
    from absa.settings import parse_settings

    with pytest.raises(SystemExit, match="no longer a setting of this script: predict with transformers.pipeline"):
        parse_settings(script.Settings, args)
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(f"num_epochs: 1\n{args[0].lstrip('-').split('=')[0]}: x\n")
    with pytest.raises(SystemExit, match="no longer a setting"):
        parse_settings(script.Settings, [str(settings_file)])
