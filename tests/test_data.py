"""`ple_trl.data`: the dataset steps users need, from loading (Hub ids, local files, `save_to_disk` folders, through
TRL's `get_dataset`) and column mapping (`map_to_prompts`, as `ple-trl train` / `ple-trl eval` apply them) to the
prompt formats PLE accepts (`to_prompt_dataset`)."""

import pytest
from datasets import Dataset, DatasetDict

from ple_trl.data import dataset_format, load_split, map_to_prompts, to_prompt_dataset
from ple_trl.scripts.arguments import DataArguments


def test_prompt_only_dataset_is_kept():
    ds = to_prompt_dataset(Dataset.from_dict({"prompt": ["a", "b"], "extra": [1, 2]}))
    assert ds.column_names == ["prompt", "extra"] and ds["prompt"] == ["a", "b"]


def test_sft_conversations_become_the_turns_before_the_last_answer():
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how are you"},
        {"role": "assistant", "content": "fine"},
    ]
    ds = to_prompt_dataset(Dataset.from_dict({"messages": [messages]}))
    assert ds.column_names == ["prompt"]
    assert ds[0]["prompt"] == messages[:3]


def test_explicit_and_implicit_preference_data():
    explicit = to_prompt_dataset(Dataset.from_dict({"prompt": ["q"], "chosen": ["good"], "rejected": ["bad"]}))
    assert explicit.column_names == ["prompt"] and explicit[0]["prompt"] == "q"
    user = {"role": "user", "content": "q"}
    implicit = to_prompt_dataset(
        Dataset.from_dict(
            {
                "chosen": [[user, {"role": "assistant", "content": "good"}]],
                "rejected": [[user, {"role": "assistant", "content": "bad"}]],
            }
        )
    )
    assert implicit.column_names == ["prompt"] and implicit[0]["prompt"] == [user]


def test_dataset_without_prompt_is_a_clear_error():
    assert dataset_format(["messages"]) == "messages"
    with pytest.raises(ValueError, match=r"no usable prompt: its columns are \['question'\]"):
        to_prompt_dataset(Dataset.from_dict({"question": ["q"]}))


@pytest.mark.parametrize("extension", ["jsonl", "csv", "parquet"])
def test_local_data_files_with_column_mapping(tmp_path, extension):
    rows = {"question": ["tell me about your day", "write a review of the movie"], "id": [1, 2]}
    path = str(tmp_path / f"prompts.{extension}")
    dataset = Dataset.from_dict(rows)
    {"jsonl": dataset.to_json, "csv": dataset.to_csv, "parquet": dataset.to_parquet}[extension](path)

    loaded = load_split(path, "train")
    args = DataArguments(prompt_column="question", prompt_max_words=3)
    prepared = map_to_prompts(loaded, args)
    assert prepared["prompt"] == ["tell me about", "write a review"]
    assert "question" not in prepared.column_names and prepared["id"] == [1, 2]


def test_data_files_name_their_splits(tmp_path):
    for split in ("train", "test"):
        Dataset.from_dict({"prompt": [f"{split} prompt"]}).to_json(str(tmp_path / f"{split}.jsonl"))
    files = [f"train={tmp_path / 'train.jsonl'}", f"test={tmp_path / 'test.jsonl'}"]
    assert load_split(None, "test", data_files=files)["prompt"] == ["test prompt"]
    with pytest.raises(ValueError, match="'validation'"):
        load_split(None, "validation", data_files=files)


def test_bad_dataset_arguments_name_the_field(tmp_path):
    path = str(tmp_path / "p.jsonl")
    Dataset.from_dict({"text": ["a b c"]}).to_json(path)
    with pytest.raises(ValueError, match=r"--prompt_column question.*\['text'\]"):
        map_to_prompts(load_split(path, "train"), DataArguments(prompt_column="question"))
    with pytest.raises(ValueError, match="prompt_end_marker"):
        args = DataArguments(prompt_column="text", prompt_end_marker="Assistant:")
        map_to_prompts(load_split(path, "train"), args)
    (tmp_path / "p.txt").write_text("hello")
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_split(str(tmp_path / "p.txt"), "train")


def test_prompt_end_marker_keeps_the_whole_dialogue():
    dataset = Dataset.from_dict(
        {
            "chosen": ["\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: I am fine"],
            "rejected": ["\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: I am bad"],
        }
    )
    prepared = map_to_prompts(dataset, DataArguments(prompt_end_marker="\n\nAssistant:"))
    assert prepared["prompt"] == ["\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant:"]
    assert set(prepared.column_names) == {"prompt"}


def test_save_to_disk_folder_gives_the_named_split(tmp_path):
    DatasetDict(
        {"train": Dataset.from_dict({"prompt": ["a", "b"]}), "test": Dataset.from_dict({"prompt": ["c"]})}
    ).save_to_disk(str(tmp_path / "saved"))
    assert load_split(str(tmp_path / "saved"), "test")["prompt"] == ["c"]
    with pytest.raises(ValueError, match=r"has the splits \['test', 'train'\], not 'validation'"):
        load_split(str(tmp_path / "saved"), "validation")
    Dataset.from_dict({"prompt": ["single"]}).save_to_disk(str(tmp_path / "one"))
    assert load_split(str(tmp_path / "one"), "train")["prompt"] == ["single"]


def test_missing_local_path_and_no_dataset_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"--dataset_name ./nowhere.jsonl`: the path './nowhere.jsonl' does not"):
        load_split("./nowhere.jsonl", "train")
    with pytest.raises(ValueError, match=r"No dataset: set `--sft_dataset_name`"):
        load_split(None, "train", argument="sft_dataset_name")


def test_max_samples_keeps_the_first_rows(tmp_path):
    dataset = Dataset.from_dict({"text": ["one two", "three four", "five six"]})
    prepared = map_to_prompts(dataset, DataArguments(prompt_column="text", prompt_max_words=1), max_samples=2)
    assert prepared["prompt"] == ["one", "three"]
    with pytest.raises(ValueError, match="`--prompt_max_words 0` must be >= 1"):
        DataArguments(prompt_max_words=0)
