"""Bad input at scale: a corpus of malformed data files and configs, each with its expected outcome.

Data: ``tests/fixtures/bad_input/manifest.json`` lists (spec, kind, expected outcome with on_error raise / skip);
the files are committed there, except the huge and binary ones, which the generators below write once per module.
Every case must end in a one-line DataError naming the file (and row for a record problem) or in counted skips with
``read == kept + sum(skipped)``: never another exception, a traceback or a silent drop.

Configs: bad overrides and bad recipe YAML for the train entry point; each must give exactly one line naming the key
(in-process through load_config / validate / format_config_error, a few through the real CLI).

Known defects are marked ``xfail(strict=True)`` with the reason, so that they stay visible until fixed.
"""

from __future__ import annotations

import bz2
import gzip
import json
import random
import shutil
import signal
import string
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import safe_rlhf.train as train_module
from safe_rlhf.config import validate
from safe_rlhf.data import DataError, load_samples
from safe_rlhf.train import format_config_error, load_config
from tests.conftest import run_cli

pytestmark = pytest.mark.unit

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "bad_input"
MANIFEST: dict[str, Any] = json.loads((CORPUS / "manifest.json").read_text(encoding="utf-8"))
CASES: dict[str, dict[str, Any]] = {case["id"]: case for case in MANIFEST["cases"]}
MAX_ERROR_CHARS = 600  # a message that dumps a huge bad value is a defect too
HANG_SECONDS = 60  # per test; in-process cases are small, subprocesses have their own timeouts
CLI_TIMEOUT = 50

GOOD_PKU = {
    "prompt": "How do I bake bread?",
    "response_0": "Mix, knead, let it rise, bake.",
    "response_1": "Buy some.",
    "better_response_id": 0,
}


# ----------------------------------------------------------------------------------------------- generated files
def _jsonl(*records: Any) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def _write_parquet(path: Path, columns: dict[str, list[Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)


def _random_words(count: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(count))


def _generate(name: str, path: Path) -> None:
    """Write the generated corpus file ``name`` at ``path`` (huge fields, binary formats, damaged streams)."""
    if name == "huge_response.jsonl":
        path.write_text(_jsonl({"prompt": "Say hi.", "response": "Hi!"}, {"prompt": "Talk.", "response": "a" * 2**21}))
    elif name == "huge_prompt.jsonl":
        path.write_text(_jsonl(GOOD_PKU | {"prompt": _random_words(100_000)}))
    elif name == "huge_bad_value.jsonl":
        path.write_text(_jsonl(GOOD_PKU, GOOD_PKU | {"response_0": ["x" * 8] * 200_000}))
    elif name == "huge_truncated_line.jsonl":
        path.write_text(
            _jsonl({"prompt": "Say hi.", "response": "Hi!"}) + '{"prompt": "Talk.", "response": "' + "a" * 2**21
        )
    elif name == "deep_nesting.jsonl":
        nested = "[" * 100_000 + "]" * 100_000
        path.write_text(_jsonl({"prompt": "Hi."}) + '{"prompt": "Hi.", "extra": ' + nested + "}\n")
    elif name == "big_int.jsonl":
        path.write_text(_jsonl(GOOD_PKU) + json.dumps(GOOD_PKU)[:-1] + ', "better_response_id": ' + "9" * 5000 + "}\n")
    elif name == "big_int_list.json":
        path.write_text("[" + json.dumps(GOOD_PKU) + ', {"better_response_id": ' + "9" * 5000 + "}]")
    elif name == "wrong_column_types.parquet":
        rows = 3
        _write_parquet(
            path,
            {
                "prompt": ["How do I bake bread?"] * rows,
                "response_0": ["Mix."] * rows,
                "response_1": ["Buy."] * rows,
                "better_response_id": ["0", "1", "0"],
                "is_response_0_safe": [1, 0, 1],
            },
        )
    elif name == "int_prompt.parquet":
        _write_parquet(path, {"prompt": [7, 8], "response": ["Hi!", "Hello!"]})
    elif name == "not_parquet.parquet":
        path.write_text("prompt,response_0,response_1,better_response_id\nHi,Hello,Go away,0\n")
    elif name == "truncated.parquet":
        _write_parquet(path, {key: [value] * 50 for key, value in GOOD_PKU.items()})
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif name == "truncated.jsonl.gz":
        records = [GOOD_PKU | {"prompt": _random_words(25, seed)} for seed in range(400)]
        data = gzip.compress(_jsonl(*records).encode())
        path.write_bytes(data[: len(data) * 2 // 3])
    elif name == "not_gzip.jsonl.gz":
        path.write_text(_jsonl(GOOD_PKU))
    elif name == "corrupt_saved_dataset":
        path.mkdir()
        (path / "state.json").write_text('{"_data_files": [{"filename": "data-00000-of-00001.arrow"}')
    else:
        raise AssertionError(f"no generator for {name}")


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory ``{tmp}`` of the manifest, with every generated file written once."""
    directory = tmp_path_factory.mktemp("bad_input")
    for case in MANIFEST["cases"]:
        if "generate" in case:
            _generate(case["generate"], directory / case["generate"])
    return directory


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    """Fail a test that runs past HANG_SECONDS (pytest has no timeout plugin here): SIGALRM raises in the test."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"hang: still running after {HANG_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(HANG_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------------------------------------ data: helpers
def _spec(case: dict[str, Any], generated: Path | None) -> str:
    spec = case["spec"].replace("{corpus}", str(CORPUS))
    if "{tmp}" in spec:
        assert generated is not None
        spec = spec.replace("{tmp}", str(generated))
    return spec


def _source_path(spec: str) -> str:
    """The file / directory a one-component spec names (what an error line has to name)."""
    return spec.split(":", 1)[1]


def _check_error_line(line: str, source: str, must_contain: str, row: int | None) -> None:
    assert "\n" not in line and "\r" not in line, f"more than one line: {line!r}"
    assert "Traceback" not in line
    assert len(line) <= MAX_ERROR_CHARS, f"{len(line)} characters: {line[:200]!r}..."
    assert source in line, f"the file is not named: {line!r}"
    if row is not None:
        assert f"{source}:{row}: " in line, f"row {row} is not named: {line!r}"
    assert must_contain in line, f"{must_contain!r} not in {line!r}"


def _load_error(spec: str, kind: str, on_error: str) -> DataError:
    """The DataError that loading raises; any other exception type propagates and fails the test."""
    try:
        result = load_samples(spec, kind, on_error=on_error)
    except DataError as error:
        return error
    pytest.fail(f"loaded without an error: read {result.stats.read}, kept {result.stats.kept}, {result.stats.skipped}")


def _check_outcome(spec: str, kind: str, on_error: str, expected: list[Any]) -> None:
    outcome = expected[0]
    if outcome == "error":
        _, must_contain, row = expected
        error = _load_error(spec, kind, on_error)
        _check_error_line(str(error), _source_path(spec), must_contain, row)
        assert error.row == row
        return
    result = load_samples(spec, kind, on_error=on_error)
    stats = result.stats
    skipped = expected[1] if outcome == "skip" else {}
    kept = expected[2] if outcome == "skip" else expected[1]
    assert stats.skipped == skipped
    assert stats.kept == len(result.samples) == kept
    assert stats.read == stats.kept + sum(stats.skipped.values()), "records silently dropped"
    for source in stats.sources:
        assert source.read == source.valid + sum(source.skipped.values()), "records silently dropped"


# ------------------------------------------------------------------------------------------- data: the manifest
def test_manifest_names_every_corpus_file():
    named = {Path(_spec(case, None).split(":", 1)[1]) for case in MANIFEST["cases"] if "generate" not in case}
    files = {path for path in CORPUS.rglob("*") if path.is_file() and path.name != "manifest.json"}
    unnamed = {path for path in files if not any(path == n or n in path.parents for n in named)}
    assert not unnamed, f"corpus files no case reads: {sorted(map(str, unnamed))}"
    for case in MANIFEST["cases"]:
        assert {"id", "why", "spec", "kind", "raise", "skip"} <= set(case), case.get("id")
        assert case["raise"][0] in ("error", "ok") and case["skip"][0] in ("error", "skip", "ok"), case["id"]
    assert len(CASES) == len(MANIFEST["cases"]), "duplicate case ids"
    assert sum(path.stat().st_size for path in files) < 50_000


@pytest.mark.parametrize("case_id", sorted(CASES))
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_corpus_case(case_id, on_error, generated):
    case = CASES[case_id]
    _check_outcome(_spec(case, generated), case["kind"], on_error, case[on_error])


ROW_CASES = sorted((case_id, int(row)) for case_id, case in CASES.items() for row in case.get("rows", {}))


@pytest.mark.parametrize(("case_id", "row"), ROW_CASES)
def test_each_bad_row_alone_names_its_row_and_field(case_id, row, tmp_path):
    """Each bad line of a multi-problem file, with the other lines blanked (row numbers kept), fails on its own."""
    case = CASES[case_id]
    reader, source = case["spec"].split(":", 1)
    lines = Path(source.replace("{corpus}", str(CORPUS))).read_bytes().split(b"\n")
    alone = tmp_path / Path(source).name
    alone.write_bytes(b"\n".join(line if number == row else b"" for number, line in enumerate(lines, start=1)))
    error = _load_error(f"{reader}:{alone}", case["kind"], "raise")
    _check_error_line(str(error), str(alone), case["rows"][str(row)], row)


def test_rows_not_listed_load(tmp_path):
    """The lines a case does not list under ``rows`` are good records (so ``rows`` covers every bad line)."""
    for case_id, case in CASES.items():
        if "rows" not in case:
            continue
        reader, source = case["spec"].split(":", 1)
        lines = Path(source.replace("{corpus}", str(CORPUS))).read_bytes().split(b"\n")
        good = [line for number, line in enumerate(lines, start=1) if str(number) not in case["rows"]]
        path = tmp_path / f"{case_id}.jsonl"
        path.write_bytes(b"\n".join(good) + b"\n")
        result = load_samples(f"{reader}:{path}", case["kind"])
        assert result.stats.kept == (case["skip"][2] if case["skip"][0] == "skip" else case["skip"][1]), case_id


DESCRIBE_CASES = sorted(case_id for case_id, case in CASES.items() if case.get("describe"))


@pytest.mark.parametrize("case_id", DESCRIBE_CASES)
def test_describe_cli_prints_one_line_and_exits_2(case_id, generated):
    case = CASES[case_id]
    spec = _spec(case, generated)
    result = run_cli(
        [sys.executable, "-m", "safe_rlhf.data", "describe", spec, "--kind", case["kind"]], timeout=CLI_TIMEOUT
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    _, must_contain, row = case["raise"]
    _check_error_line(lines[0], _source_path(spec), must_contain, row)


def test_describe_cli_counts_skips():
    case = CASES["hh_rlhf_bad_transcripts"]
    spec = _spec(case, None)
    command = [sys.executable, "-m", "safe_rlhf.data", "describe", spec, "--on-error", "skip", "--json"]
    result = run_cli(command, timeout=CLI_TIMEOUT)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    _, skipped, kept = case["skip"]
    assert (report["skipped"], report["kept"]) == (skipped, kept)
    assert report["read"] == kept + sum(skipped.values())


# ------------------------------------------------------------------------------------ data: specific decisions
def test_duplicate_key_keeps_the_last_value():
    result = load_samples(_spec(CASES["pku_duplicate_key"], None), "preference")
    assert result.samples[0].better_id == 1


def test_utf8_bom_is_not_part_of_the_data():
    for case_id, kind in (("pku_utf8_bom", "preference"), ("alpaca_list_with_utf8_bom", "sft")):
        result = load_samples(_spec(CASES[case_id], None), kind)
        assert not result.samples[0].prompt.startswith("\ufeff"), case_id


def test_extra_keys_are_kept_as_prompt_meta():
    result = load_samples(_spec(CASES["prompts_bad_records"], None), "prompt", on_error="skip")
    assert result.samples[0].meta == {
        "prompt_source": "toy",
        "risky": False,
        "topic": "space",
        "nested": {"a": [1, None]},
    }
    assert result.samples[1].meta == {"id": "0001"}  # a string id stays a string


def test_surrogate_pair_escape_is_decoded():
    result = load_samples(_spec(CASES["pku_lone_surrogate_escape"], None), "preference", on_error="skip")
    assert result.samples[1].responses[1] == "Buy some. \U0001f600"


def test_huge_fields_load_whole(generated):
    (_, huge) = load_samples(_spec(CASES["sft_huge_response"], generated), "sft").samples
    assert huge.response == "a" * 2**21
    (sample,) = load_samples(_spec(CASES["pku_huge_prompt"], generated), "preference").samples
    assert len(sample.prompt.split()) == 100_000


def test_truncated_gzip_names_the_last_row_read(generated):
    spec = _spec(CASES["pku_truncated_gzip"], generated)
    error = _load_error(spec, "preference", "skip")
    assert "unreadable file after row " in str(error)
    assert int(str(error).split("after row ")[1].split()[0]) > 0  # the records before the cut were read


def test_truncated_bz2_is_one_line(tmp_path):
    path = tmp_path / "cut.jsonl.bz2"
    data = bz2.compress(_jsonl(*[GOOD_PKU | {"prompt": _random_words(25, seed)} for seed in range(200)]).encode())
    path.write_bytes(data[: len(data) // 2])
    error = _load_error(f"pku-safe-rlhf:{path}", "preference", "skip")
    _check_error_line(str(error), str(path), "unreadable file", None)


# ------------------------------------------------------------------------------------------------------ configs
DEFECT_KEYLESS = "defect in safe_rlhf/train.py: format_config_error() drops the override / key from this message"

# (recipe, overrides, text the one line must contain: the key)
BAD_OVERRIDES: list[Any] = [
    # unknown keys at several depths
    ("sft", ["lerning_rate=1"], "'lerning_rate'"),
    ("sft", ["model.foo.bar=1"], "'model.foo'"),
    ("reward_model", ["score.normaliser=ema"], "'score.normaliser'"),
    ("sft", ["+new_key="], "'new_key'"),
    ("sft", ["+data.deep.new=1"], "'data.deep'"),
    ("cost_model", ["+score.extra=1"], "'score.extra'"),
    ("score_model", ["train.batch_size=1"], "'train'"),
    ("sft", ["optim.betas.x=1"], "optim.betas"),
    # wrong types
    ("sft", ["train.epochs=two"], "train.epochs"),
    ("sft", ["train.batch_size=1.5"], "train.batch_size"),
    ("sft", ["train.micro_batch_size=[1,2]"], "train.micro_batch_size"),
    ("sft", ["model.name_or_path=[a,b]"], "model.name_or_path"),
    ("sft", ["data.train={a:1}"], "data.train"),
    ("sft", ["optim.lr={a:1}"], "optim.lr"),
    ("sft", ["optim.weight_decay=abc"], "optim.weight_decay"),
    ("sft", ["model.trust_remote_code=maybe"], "model.trust_remote_code"),
    ("sft", ["optim.betas=0.9"], "optim.betas"),
    ("sft", ["optim.betas=[a,b]"], "optim.betas"),
    ("sft", ["logger.backends=console"], "logger.backends"),
    ("sft", ["seed=abc"], "seed"),
    ("sft", ["optim.lr=null"], "optim.lr"),
    # out of range
    ("sft", ["optim.warmup_ratio=1.5"], "optim.warmup_ratio"),
    ("sft", ["optim.warmup_ratio=nan"], "optim.warmup_ratio"),
    ("sft", ["data.eval_fraction=1"], "data.eval_fraction"),
    ("sft", ["data.max_length=-5"], "data.max_length"),
    ("sft", ["train.micro_batch_size=0"], "train.micro_batch_size"),
    ("sft", ["train.max_steps=-2"], "train.max_steps"),
    ("sft", ["optim.betas=[0.9]"], "optim.betas"),
    ("sft", ["deepspeed.gradient_clipping=-1"], "deepspeed.gradient_clipping"),
    ("reward_model", ["score.severity_weights=[1,2]"], "score.severity_weights"),
    ("cost_model", ["score.score_dim=0"], "score.score_dim"),
    ("score_model", ["batch_size=0"], "batch_size"),
    ("score_model", ["score_type=x"], "score_type"),
    # learning rate
    ("sft", ["optim.lr=-1e-3"], "optim.lr"),
    ("sft", ["optim.lr=0"], "optim.lr"),
    ("sft", ["optim.lr=nan"], "optim.lr"),
    ("sft", ["optim.lr=inf"], "optim.lr"),
    # unknown group options and recipes
    ("sft", ["logger=nosuch"], "logger/nosuch"),
    ("sft", ["model=nosuch"], "model/nosuch"),
    ("reward_model", ["data=nosuch"], "data/nosuch"),
    ("sft", ["nosuchgroup=x"], "'nosuchgroup'"),
    ("nosuch", [], "'nosuch'"),
    ("sft", ["recipe=nosuch"], "recipe='nosuch'"),
    # malformed override syntax
    ("sft", ["train.batch_size==3"], "train.batch_size"),
    ("sft", ["train.batch_size=[1,"], "train.batch_size"),
    ("sft", ["train.batch_size"], "train.batch_size"),
    ("sft", ["train..batch_size=3"], "train..batch_size"),
    ("sft", ["train.batch_size='3"], "train.batch_size"),
    ("sft", ["train.batch_size=${oops}"], "train.batch_size"),
    # dataset specs
    ("reward_model", ["data.eval=nosuch:/x"], "data.eval"),
    ("sft", ["data.train=null"], "data.train"),
    ("sft", ["data.train=' '"], "data.train"),
    ("sft", ["data.train=sft"], "data.train"),
    ("sft", ["data.train=toyworld:sft+"], "data.train"),
    ("sft", ["data.train=toyworld:sft*0"], "data.train"),
    ("sft", ["data.train="], "data.train"),
]


def _config_error_line(recipe: str, overrides: list[str]) -> str:
    with pytest.raises(Exception) as caught:  # any exception: _precheck turns every one into the line
        validate(load_config(recipe, overrides), world_size=1)
    line = format_config_error(caught.value)
    assert "\n" not in line and "\r" not in line, f"more than one line: {line!r}"
    assert "Traceback" not in line and line.strip()
    return line


@pytest.mark.parametrize(("recipe", "overrides", "must_contain"), BAD_OVERRIDES)
def test_bad_override_is_one_line_naming_the_key(recipe, overrides, must_contain):
    line = _config_error_line(recipe, overrides)
    assert must_contain in line, line


_HEAD = (
    "defaults:\n  - sft_schema\n  - runtime: default\n  - model: tiny\n  - data: toyworld_sft\n"
    "  - deepspeed: zero0\n  - logger: console\n  - _self_\nrecipe: sft\n"
)
# recipe file name -> (its content, text the one line must contain)
BAD_YAML: list[Any] = [
    ("indent", _HEAD + "train:\n  epochs: 1\n    batch_size: 3\n", "indent.yaml"),
    ("tab", _HEAD + "train:\n\tepochs: 1\n", "tab.yaml"),
    ("unclosed", _HEAD + "train: {epochs: 1\n", "unclosed.yaml"),
    ("duplicate", _HEAD + "seed: 1\nseed: 2\n", "duplicate key seed"),
    ("bad_type", _HEAD + "train:\n  batch_size: abc\n", "train.batch_size"),
    ("unknown_key", _HEAD + "trian:\n  epochs: 1\n", "trian"),
    ("nested_unknown_key", _HEAD + "optim:\n  schedule: cosine\n", "optim.schedule"),
    ("null_train", _HEAD + "data:\n  train: null\n", "data.train"),
    ("missing_option", _HEAD.replace("zero0", "zero9"), "deepspeed/zero9"),
    ("missing_schema", _HEAD.replace("sft_schema", "nosuch_schema"), "nosuch_schema"),
    ("empty", "", "recipe"),
    ("top_level_list", "- a\n- b\n", "top_level_list"),
    pytest.param(
        "latin1",
        (_HEAD + "output_dir: caf\xe9\n").encode("latin-1"),
        "latin1.yaml",
        marks=pytest.mark.xfail(strict=True, reason=DEFECT_KEYLESS + " (the file of a UnicodeDecodeError)"),
    ),
    ("nan_lr", _HEAD + "optim:\n  lr: .nan\n", "optim.lr"),
]


@pytest.fixture(scope="module")
def conf_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of conf/ to drop broken recipe files into."""
    directory = tmp_path_factory.mktemp("conf") / "conf"
    shutil.copytree(train_module.CONF_DIR, directory)
    return directory


@pytest.mark.parametrize(("name", "content", "must_contain"), BAD_YAML)
def test_bad_recipe_yaml_is_one_line(name, content, must_contain, conf_copy, monkeypatch):
    path = conf_copy / f"{name}.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    monkeypatch.setattr(train_module, "CONF_DIR", conf_copy)
    line = _config_error_line(name, [])
    assert must_contain in line, line


# (overrides after --config-name, text the line must contain); all invalid at start-up, so no training starts
CLI_CASES = [
    (["--config-name", "nosuch"], "'nosuch'"),
    (["--config-name", "sft", "train.batch_size==3"], "train.batch_size"),
    (["--config-name", "sft", "model.name_or_path=[a,b]"], "model.name_or_path"),
    (["--config-name", "sft", "optim.lr=-1e-3"], "optim.lr"),
    (["--config-name", "sft", "+data.deep.new=1"], "data.deep"),
]


@pytest.mark.parametrize(("args", "must_contain"), CLI_CASES)
def test_train_cli_bad_config_is_one_line_and_exit_2(args, must_contain, tmp_path):
    # Guard rails should a case ever pass validation: a private output_dir, one step, and a timeout.
    guard = [f"output_dir={tmp_path / 'run'}", "train.max_steps=1"]
    result = run_cli([sys.executable, "-m", "safe_rlhf.train", *args, *guard], timeout=CLI_TIMEOUT)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error: "), result.stderr[-2000:]
    assert must_contain in lines[0], lines[0]
    assert not (tmp_path / "run").exists()
