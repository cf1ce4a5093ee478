"""Real models, real tasks, real benchmarks, proven offline: the configs a user runs with hub
access and GPUs, composed from the real `conf/` and `sweeps/`, driven through the same code on
tiny random checkpoints (a Llama and a Qwen2, hidden size 32, 2 layers) and on data files in each
task's hub schema, written here.

The tiny checkpoints' tokenizers are byte-level BPE like the real ones (no merges: one token per
byte), with the real special tokens and chat templates of the same shape as Llama-3.1's and
Qwen2.5's: no `{% generation %}` markers, a system block the template adds by itself, no pad
token for Llama. They load through the same tokenizer classes as the real checkpoints
(transformers picks Qwen2Tokenizer for a qwen2 config), and they make assistant-only labels take
the prefix-rendering path of sasft.data.tokenize, which the toy template never exercises.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path
from hydra.core.config_search_path import SearchPathQuery
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from lm_eval.api.model import LM
from omegaconf import OmegaConf, open_dict
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM,
                          PreTrainedTokenizerFast, Qwen2ForCausalLM)

from sasft import model as model_module
from sasft import pipeline
from sasft.peft import apply_peft, load_finetuned
from sasft.config import validate
from sasft.errors import ConfigError
from sasft.paths import CONF_MODULE
from sasft.data import DataError, read_jsonl, to_dialogue, tokenize
from sasft.evaluate import _base_key, build_tasks, run_benchmarks
from sasft.method import Freeze, TaskOnly
from sasft.model import fingerprint, inspect_model, load_model
from sasft.pipeline import benchmarks_of, run_experiment
from sasft.task import Task, load_task
from sasft.train import train
from tests.conftest import compose_config

REPO = Path(__file__).resolve().parents[1]
SWEEPS = REPO / "sweeps"

LLAMA_TEMPLATE = (  # Llama-3.1's template without its tool-calling branches
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
QWEN_TEMPLATE = (  # Qwen2.5's template without its tool-calling branches
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a "
    "helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if message.role != 'system' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
TOKENIZERS = {
    "llama": {"specials": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                           "<|eot_id|>"],
              "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
              "chat_template": LLAMA_TEMPLATE},  # and no pad token, as Llama-3.x
    "qwen2": {"specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
              "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "chat_template": QWEN_TEMPLATE},
}
END_OF_TURN = {"llama": "<|eot_id|>", "qwen2": "<|im_end|>"}
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048}
FAMILY = {"llama": "llama", "llama1b": "llama", "qwen": "qwen2", "qwen0.5b": "qwen2",
          "qwen1.5b": "qwen2"}
HUB_IDS = {"llama": "meta-llama/Llama-3.1-8B-Instruct", "llama1b": "meta-llama/Llama-3.2-1B-Instruct",
           "qwen": "Qwen/Qwen2.5-7B-Instruct", "qwen0.5b": "Qwen/Qwen2.5-0.5B-Instruct",
           "qwen1.5b": "Qwen/Qwen2.5-1.5B-Instruct"}


def byte_level_tokenizer(family: str, chat_template: bool = True) -> PreTrainedTokenizerFast:
    spec = dict(TOKENIZERS[family])
    specials = spec.pop("specials")
    if not chat_template:
        spec.pop("chat_template")
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, **spec)
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    return tokenizer


def teach_to_stop(model, tokenizer, steps: int = 15) -> None:
    """A few seconds of training on short chats (loss on every token, as a base model is
    trained), so the random model ends its turns after a few bytes, as an instruct model does:
    self-dialogue generation then finds turns that end, without a 1000-token budget."""
    words = ["rain", "tea", "owls", "maps", "figs", "ink", "sand", "jazz"]
    chats = [[{"role": "user", "content": f"{a} {b}?"}, {"role": "assistant", "content": f"{b} {a}."}]
             for a in words for b in words]
    rows = [tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"]
            for c in chats]
    width = max(map(len, rows))
    ids = torch.tensor([r + [r[-1]] * (width - len(r)) for r in rows])
    labels = torch.tensor([r + [-100] * (width - len(r)) for r in rows])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = torch.randint(len(rows), (16,), generator=generator)
        model(input_ids=ids[batch], labels=labels[batch]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def save_tiny(path: Path, family: str, chat_template: bool = True, taught: bool = False) -> Path:
    tokenizer = byte_level_tokenizer(family, chat_template)
    config = AutoConfig.for_model(
        family, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=family == "qwen2", **TINY)  # tied, as the small Qwen2.5 models
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    if taught:
        teach_to_stop(model, tokenizer)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {family: save_tiny(root / family, family, taught=True) for family in ("llama", "qwen2")}


def real_cfg(checkpoints, tmp_path, *overrides: str, model: str = "llama"):
    """A real model's config on its tiny local stand-in, shrunk to seconds on a CPU."""
    cfg = compose_config([f"model={model}", *overrides])
    with open_dict(cfg):
        cfg.model.path = str(checkpoints[FAMILY[model]])
        cfg.model.dtype = "float32"   # bf16 matmuls on a CPU are slow and need no test here
        cfg.cache_dir = str(tmp_path / "cache")
        cfg.train.epochs = 1
        cfg.train.batch_size = 4
        cfg.train.gradient_accumulation_steps = 1
        cfg.train.max_seq_len = 256
        cfg.train.logging_steps = 1
        cfg.train.bf16 = False
        cfg.train.eval_every_steps = 0
        cfg.train.save_steps = None
        cfg.eval.limit = 4
        cfg.eval.batch_size = 4
        cfg.generation.batch_size = 16
        cfg.generation.max_new_tokens = 64
    return cfg


# --------------------------------------------------------------------------------- models

@pytest.mark.parametrize("name", sorted(HUB_IDS))
def test_model_config_composes_and_loads_from_a_local_directory(checkpoints, tmp_path, name):
    cfg = compose_config([f"model={name}"])
    assert (cfg.model.hub_id, cfg.model.path) == (HUB_IDS[name], None)
    assert cfg.model.dtype == "bfloat16" and cfg.model.trust_remote_code is False
    validate(cfg)  # a hub id alone is a valid source

    cfg = real_cfg(checkpoints, tmp_path, model=name)  # model.path wins over hub_id
    model, tokenizer = load_model(cfg.model)
    expected = LlamaForCausalLM if FAMILY[name] == "llama" else Qwen2ForCausalLM
    assert type(model) is expected
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    assert model.config.use_cache is False
    assert tokenizer.chat_template == TOKENIZERS[FAMILY[name]]["chat_template"]
    assert tokenizer.pad_token is not None  # Llama's has none: eos stands in
    assert inspect_model(cfg.model)[0].num_hidden_layers == 2


def test_hub_id_and_revision_reach_from_pretrained(checkpoints, monkeypatch):
    cfg = compose_config(["model=qwen", "model.revision=abc123"]).model
    calls = []

    def recorder(loader):
        def from_pretrained(source, **kwargs):
            calls.append((loader.__name__, source, kwargs.get("revision"),
                          kwargs.get("trust_remote_code")))
            return loader.from_pretrained(checkpoints["qwen2"], **{
                k: v for k, v in kwargs.items() if k not in ("revision",)})
        return type(loader.__name__, (), {"from_pretrained": staticmethod(from_pretrained)})

    for name in ("AutoConfig", "AutoModelForCausalLM"):
        monkeypatch.setattr(model_module, name, recorder(getattr(model_module, name)))
    # the tokenizer's class is named by the config (model.tokenizer_class), found in transformers
    lib = model_module.transformers
    monkeypatch.setattr(lib, "AutoTokenizer", recorder(lib.AutoTokenizer))
    inspect_model(cfg)
    load_model(cfg)
    assert calls and all(c[1:] == ("Qwen/Qwen2.5-7B-Instruct", "abc123", False) for c in calls)
    assert fingerprint(cfg) != fingerprint(compose_config(["model=qwen"]).model)


def test_missing_local_path_fails_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "load_model", lambda *a: pytest.fail("loaded a model"))
    cfg = compose_config(["model=llama", f"model.path={tmp_path / 'nowhere'}"])
    with pytest.raises(ConfigError, match="model.path does not exist: .*nowhere"):
        run_experiment(cfg, tmp_path / "run")


def test_model_without_chat_template_fails_before_any_work(tmp_path, monkeypatch):
    path = save_tiny(tmp_path / "base_model", "llama", chat_template=False)
    monkeypatch.setattr(pipeline, "load_model", lambda *a: pytest.fail("loaded the weights"))
    # IFEval's NLTK data is checked first (tests/test_bad_input.py); here it is taken as there
    from sasft import evaluate
    monkeypatch.setattr(evaluate, "missing_nltk_data", lambda: None)
    cfg = compose_config(["model=llama", f"model.path={path}"])
    with open_dict(cfg):
        cfg.cache_dir = str(tmp_path / "cache")
    with pytest.raises(ConfigError, match="has no chat template; SA-SFT needs a chat"):
        run_experiment(cfg, tmp_path / "run")
    assert not (tmp_path / "cache" / "base_scores").exists()  # no benchmark ran either


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_real_style_templates_train_on_assistant_tokens_only(checkpoints, family):
    tokenizer = AutoTokenizer.from_pretrained(checkpoints[family])
    dialogue = [{"role": "user", "content": "What is 2 plus 2?"},
                {"role": "assistant", "content": "4, of course. Grüße!"},
                {"role": "user", "content": "And 3 plus 3?"},
                {"role": "assistant", "content": "6."}]
    row = tokenize(tokenizer, dialogue, max_length=512)
    trained = tokenizer.decode([t for t in row["labels"] if t != -100])
    # Both answers and the end-of-turn token after each: the model must learn to stop. (Not the
    # newline ChatML writes after <|im_end|>: generation stops at <|im_end|>.)
    end = END_OF_TURN[family]
    assert trained == f"4, of course. Grüße!{end}6.{end}"
    assert row["input_ids"] == tokenizer.apply_chat_template(dialogue, tokenize=True,
                                                             return_dict=True)["input_ids"]
    cut = tokenize(tokenizer, dialogue, max_length=40)  # truncation keeps labels aligned
    assert len(cut["input_ids"]) == len(cut["labels"]) == 40


# ---------------------------------------------------------------------------------- tasks

def _write(path: Path, records: list[dict]) -> Path:
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# One record per task, in the schema of its hub dataset, and what it must become.
TASK_RECORDS = {
    "gsm8k": ({"question": "Tom has 3 apples and buys 4 more. How many now?",
               "answer": "He has 3 + 4 = 7 apples.\n#### 7"},
              "Tom has 3 apples", "#### 7", "7"),
    "medtext": ({"Prompt": "A 40-year-old man has chest pain on exertion.",
                 "Completion": "Likely stable angina; order a stress test."},
                "A 40-year-old man has chest pain on exertion.", "Likely stable angina", None),
    "pubmedqa": ({"pubid": 1, "question": "Does aspirin reduce pain?",
                  "context": {"contexts": ["We gave aspirin.", "Pain fell."],
                              "labels": ["METHODS", "RESULTS"]},
                  "long_answer": "Aspirin reduced pain.", "final_decision": "yes"},
                 "We gave aspirin.\n\nPain fell.\n\nQuestion: Does aspirin reduce pain?",
                 "Aspirin reduced pain.\nAnswer: yes", "yes"),
    "sql": ({"question": "How many heads are older than 56?",
             "context": "CREATE TABLE head (age INTEGER)",
             "answer": "SELECT COUNT(*) FROM head WHERE age > 56"},
            "CREATE TABLE head (age INTEGER)\n\nUsing the tables above",
            "SELECT COUNT(*) FROM head WHERE age > 56", "SELECT COUNT(*) FROM head WHERE age > 56"),
    "translation": ({"translation": {"en": "The house is small.", "de": "Das Haus ist klein."}},
                    "Translate this English text into German", "Das Haus ist klein.", None),
}


def local_task_cfg(tmp_path, task: str, suffix: str, n: int = 6):
    record = TASK_RECORDS[task][0]
    rows = [json.loads(json.dumps(record)) for _ in range(n)]
    cfg = compose_config([f"task={task}",
                          f"task.train_file={_write(tmp_path / f'train{suffix}', rows)}",
                          f"task.test_file={_write(tmp_path / f'test{suffix}', rows)}"])
    with open_dict(cfg):
        cfg.cache_dir = str(tmp_path / "cache")
    return cfg


@pytest.mark.parametrize("task, suffix", [("gsm8k", ".jsonl"), ("medtext", ".parquet"),
                                          ("pubmedqa", ".parquet"), ("sql", ".jsonl"),
                                          ("translation", ".jsonl")])
def test_task_loads_from_local_files_in_its_hub_schema(tmp_path, task, suffix):
    cfg = local_task_cfg(tmp_path, task, suffix)
    _, prompt_part, response_part, answer = TASK_RECORDS[task]
    task_data = load_task(cfg.task)
    dialogues = task_data.train
    assert len(dialogues) == 6
    user, assistant = dialogues[0]
    assert user["role"] == "user" and prompt_part in user["content"]
    assert assistant["role"] == "assistant" and response_part in assistant["content"]
    # The test split, rendered by the same templates, is the in-domain benchmark's file.
    spec = benchmarks_of(cfg, task_data)[0][task]
    test = read_jsonl(spec["file"])
    assert [test[0]["prompt"], test[0]["response"]] == [user["content"], assistant["content"]]
    assert test[0].get("answer") == answer
    assert Path(spec["file"]).is_relative_to(tmp_path / "cache" / "tasks")


def test_task_loads_from_the_hub_with_its_split_and_revision(tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, revision=None):
        calls.append((path, name, split, revision))
        return datasets.Dataset.from_list([TASK_RECORDS["gsm8k"][0]] * 5)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = compose_config(["task=gsm8k", "task.revision=v1", "task.max_train_examples=3"])
    with open_dict(cfg):
        cfg.cache_dir = str(tmp_path / "cache")
    task_data = load_task(cfg.task)
    assert len(task_data.train) == 3
    assert calls == [("openai/gsm8k", "main", "train", "v1"), ("openai/gsm8k", "main", "test", "v1")]
    assert len(read_jsonl(task_data.benchmark["file"])) == 5


def test_a_record_without_a_mapped_field_names_file_and_line(tmp_path):
    cfg = local_task_cfg(tmp_path, "gsm8k", ".jsonl")
    bad = tmp_path / "bad.jsonl"
    _write(bad, [TASK_RECORDS["gsm8k"][0], {"question": "no answer here"}])
    with open_dict(cfg):
        cfg.task.train_file = str(bad)
    with pytest.raises(DataError, match=f"{bad}:2: no field 'answer'"):
        load_task(cfg.task)


class ScriptedLM(LM):
    """An lm-eval model that answers each test prompt with a fixed reply, so lm-eval's own
    filters and metrics score known predictions. Records the chat histories it is given."""

    def __init__(self, replies: dict[str, str]):
        super().__init__()
        self.replies, self.histories = replies, []

    def apply_chat_template(self, chat_history, add_generation_prompt=True):
        self.histories.append(chat_history)
        return chat_history[-1]["content"]

    @property
    def tokenizer_name(self) -> str:
        return "scripted"

    def chat_template(self, chat_template=False):
        return "scripted"

    def generate_until(self, requests):
        return [self.replies[r.doc["prompt"]] for r in requests]

    def loglikelihood(self, requests):
        """Multiple choice: the choice named by the doc's "label" is the likeliest."""
        return [(0.0 if r.args[1] == r.doc["choices"][r.doc["label"]] else -5.0, False)
                for r in requests]

    def loglikelihood_rolling(self, requests):
        raise AssertionError("not a log-likelihood benchmark")


def score(tmp_path, task: str, items: list[tuple[dict, str]], **spec_overrides) -> float:
    """The in-domain score of `task` when the model replies to each test record as given."""
    records = [r for r, _ in items]
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = compose_config([f"task={task}"])
    with open_dict(cfg):
        cfg.cache_dir = str(tmp_path / "cache")
        cfg.task.train_file = str(_write(tmp_path / "train.jsonl", records))
        cfg.task.test_file = str(_write(tmp_path / "test.jsonl", records))
        cfg.task.benchmark.update(spec_overrides)
    spec = benchmarks_of(cfg, load_task(cfg.task))[0][task]
    prompts = [r["prompt"] for r in read_jsonl(spec["file"])]
    lm = ScriptedLM(dict(zip(prompts, [reply for _, reply in items])))
    eval_cfg = OmegaConf.create({"limit": None, "seed": 0})
    return run_benchmarks(lm, {task: spec}, eval_cfg, eos="<|end|>")[task]["score"]


def _gsm8k(question: str, answer: str) -> dict:
    return {"question": question, "answer": f"Some steps.\n#### {answer}"}


def test_gsm8k_scores_the_final_number(tmp_path):
    items = [
        (_gsm8k("q1", "18"), "She sells 16 - 3 - 4 = 9 eggs for 2 dollars each.\n#### 18"),
        (_gsm8k("q2", "1000"), "The total is 1,000 dollars.\n#### 1,000."),
        (_gsm8k("q3", "-3"), "It drops 3 degrees, so -3. Final: 5 - 8 = -3"),  # no "####" at all
        (_gsm8k("q4", "5"), "#### 6"),
    ]
    assert score(tmp_path, "gsm8k", items) == pytest.approx(3 / 4)


def test_medtext_rouge_l_by_hand(tmp_path):
    # "the cat sat on the mat" vs "the cat is on the mat": the longest common subsequence is
    # "the cat on the mat", 5 of 6 tokens each way: P = R = F = 5/6. An exact reply scores 1.
    items = [({"Prompt": "case one", "Completion": "the cat is on the mat"}, "the cat sat on the mat"),
             ({"Prompt": "case two", "Completion": "Rest and fluids."}, "rest and fluids")]
    assert score(tmp_path, "medtext", items) == pytest.approx((5 / 6 + 1) / 2)


def test_pubmedqa_sql_and_translation_score_known_replies(tmp_path):
    base = TASK_RECORDS["pubmedqa"][0]
    pubmed = [({**base, "question": "q yes", "final_decision": "yes"}, "It helps.\nAnswer: Yes"),
              ({**base, "question": "q no", "final_decision": "no"}, "It may help.\nAnswer: maybe")]
    assert score(tmp_path / "p", "pubmedqa", pubmed) == pytest.approx(0.5)

    sql = TASK_RECORDS["sql"][0]
    sql_items = [
        (sql, "```sql\nselect count(*)\nFROM head WHERE age > 56;\n```\nThis counts them."),
        ({**sql, "question": "other", "answer": "SELECT name FROM head WHERE name = \"Ann\""},
         "SELECT name FROM head WHERE name = 'Ann'"),
        ({**sql, "question": "third", "answer": "SELECT age FROM head"}, "SELECT name FROM head"),
    ]
    assert score(tmp_path / "s", "sql", sql_items) == pytest.approx(2 / 3)

    pair = TASK_RECORDS["translation"][0]
    assert score(tmp_path / "t", "translation", [(pair, "Das Haus ist klein.")]) == pytest.approx(1.0)
    assert score(tmp_path / "t2", "translation", [(pair, "Ein Auto.")]) < 0.5


def test_multiple_choice_benchmark_scores_by_likelihood(tmp_path):
    items = [{"prompt": "Capital of Fefia?", "choices": ["Ulm", "Zot"], "label": 1},
             {"prompt": "Capital of Gorb?", "choices": ["Pim", "Qar", "Rud"], "label": 0}]
    spec = {"file": str(_write(tmp_path / "mc.jsonl", [{**i, "response": "x"} for i in items])),
            "output_type": "multiple_choice"}
    eval_cfg = OmegaConf.create({"limit": None, "seed": 0})
    result = run_benchmarks(ScriptedLM({}), {"capitals": spec}, eval_cfg, "<|end|>")["capitals"]
    # Chance: one in two for the first question, one in three for the second.
    assert result["score"] == 1.0 and result["chance"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert [(i["answer"], i["target"], i["score"]) for i in result["items"]] == [
        ("Zot", "Zot", 1.0), ("Pim", "Pim", 1.0)]


def test_per_benchmark_num_fewshot_reaches_lm_eval(tmp_path):
    records = [{"Prompt": f"case {i}", "Completion": f"answer {i}"} for i in range(4)]
    cfg = compose_config(["task=medtext"])
    with open_dict(cfg):
        cfg.cache_dir = str(tmp_path / "cache")
        cfg.task.train_file = cfg.task.test_file = str(_write(tmp_path / "d.jsonl", records))
    spec = dict(benchmarks_of(cfg, load_task(cfg.task))[0]["medtext"], num_fewshot=2)
    objects, names = build_tasks({"medtext": spec}, eos="<|end|>")
    assert objects[0].get_config("num_fewshot") == 2
    assert names["medtext"][0] == "sasft_medtext" and list(names["medtext"][1]) == ["sasft_medtext"]
    lm = ScriptedLM({r["prompt"]: "x" for r in read_jsonl(spec["file"])})
    run_benchmarks(lm, {"medtext": spec}, OmegaConf.create({"limit": 1, "seed": 0}), "<|end|>")
    # Two solved examples as earlier chat turns, then the question: 5 messages.
    assert [m["role"] for m in lm.histories[0]] == ["user", "assistant"] * 2 + ["user"]


def test_base_score_key_covers_fewshot_limit_and_file(tmp_path):
    f = _write(tmp_path / "t.jsonl", [{"prompt": "p", "response": "r"}])
    spec = {"file": str(f), "metric": "rougeL"}
    eval_cfg = OmegaConf.create({"limit": None, "seed": 0})
    key = _base_key("model", "b", spec, eval_cfg)
    assert key != _base_key("model", "b", {**spec, "num_fewshot": 5}, eval_cfg)
    assert key != _base_key("model", "b", spec, OmegaConf.create({"limit": 100, "seed": 0}))
    # The same bytes elsewhere (another checkout, a frozen install) are the same benchmark.
    (tmp_path / "elsewhere").mkdir()
    moved = _write(tmp_path / "elsewhere" / "t.jsonl", [{"prompt": "p", "response": "r"}])
    assert key == _base_key("model", "b", {**spec, "file": str(moved)}, eval_cfg)
    _write(f, [{"prompt": "p", "response": "edited"}])
    assert key != _base_key("model", "b", spec, eval_cfg)


def test_general_benchmarks_come_from_lm_evals_registry():
    cfg = compose_config(["model=llama", "task=gsm8k", "eval=general"])
    specs, kinds = benchmarks_of(cfg, Task([], dict(cfg.task.benchmark)))
    assert kinds == {"gsm8k": "in_domain", "mmlu": "general", "ifeval": "general",
                     "agieval": "general", "arc_challenge": "general"}
    from sasft.evaluate import task_manager

    registry = task_manager()
    for name, spec in specs.items():
        if name != "gsm8k":
            assert spec["lm_eval_task"] in registry.all_tasks
            assert isinstance(spec["num_fewshot"], int)
    assert {"mmlu", "agieval"} <= set(registry.all_groups)


# ------------------------------------------------------------------------- LoRA and freeze

def _mix(n: int = 8) -> list[dict]:
    return [{"source": "task", "messages": to_dialogue(
        {"prompt": f"Is {i} odd or even?", "response": "odd" if i % 2 else "even"})}
        for i in range(n)]


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", [TaskOnly(), Freeze(trainable_layers=1)])
def test_lora_trains_adapters_only_where_the_method_trains(checkpoints, tmp_path, method):
    cfg = real_cfg(checkpoints, tmp_path, "peft=lora", "train=lora")
    model, tokenizer = load_model(cfg.model)
    base = _snapshot(model)
    method.select_trainable(model)
    model = apply_peft(model, cfg.peft, method)
    adapters = {n.split(".lora_")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert all(".lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    layers = {int(n.split(".layers.")[1].split(".")[0]) for n in adapters}
    assert layers == ({0, 1} if isinstance(method, TaskOnly) else {1})
    modules = {n.rsplit(".", 1)[-1] for n in adapters}
    assert modules == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    before = _snapshot(model)

    with open_dict(cfg):
        cfg.train.learning_rate = 1e-2
    train(model, tokenizer, _mix(), cfg.train, tmp_path / "run", seed=0)
    after = _snapshot(model)
    for name, value in after.items():
        if "lora_B" in name:  # starts at zero, so any training moves it
            assert not torch.equal(value, before[name]), f"{name} did not train"
        elif "lora_" not in name:
            assert torch.equal(value, before[name]), f"{name} changed under LoRA"
    merged = model.merge_and_unload().state_dict()
    for name, value in base.items():
        changed = not torch.equal(value, merged[name])
        trains = ".layers.1." in name or (".layers.0." in name and isinstance(method, TaskOnly))
        trains = trains and name.endswith("proj.weight")
        assert changed == trains, name


def test_freeze_with_lora_needs_a_trainable_layer(checkpoints, tmp_path):
    cfg = real_cfg(checkpoints, tmp_path, "peft=lora")
    model, _ = load_model(cfg.model)
    method = Freeze(trainable_layers=0)
    method.select_trainable(model)
    with pytest.raises(ConfigError, match="no decoder layer trainable"):
        apply_peft(model, cfg.peft, method)


def test_freeze_half_counts_the_real_models_layers():
    cfg = compose_config(["model=llama", "method=freeze_half"])
    assert cfg.method.name == "freeze_half" and cfg.method.frozen_fraction == 0.5
    method = Freeze(frozen_fraction=0.5)
    assert [method.n_frozen(n) for n in (32, 28, 16, 24, 2)] == [16, 14, 8, 12, 1]


def test_ext_mix_draws_from_ultrachat_on_the_hub(monkeypatch):
    import datasets
    from hydra.utils import instantiate

    from sasft.method import MethodContext

    rows = [{"prompt": f"q{i}", "prompt_id": str(i),
             "messages": [{"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": f"a{i}"}]} for i in range(20)]
    calls = []

    def fake_load_dataset(path, name=None, split=None, revision=None):
        calls.append((path, name, split, revision))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    toy = compose_config(["method=ext_mix"]).method
    assert toy.corpus_file.endswith("toy/data/external_chat.jsonl")  # the toy default stays
    method = instantiate(compose_config(["method=ext_mix_ultrachat"]).method)
    method.check(model_config=None)
    dialogues, stats = method.auxiliary(5, MethodContext(None, None, None, "fp", Path("."), seed=0))
    assert calls == [("HuggingFaceH4/ultrachat_200k", None, "train_sft", None)]
    assert stats == {"corpus": "HuggingFaceH4/ultrachat_200k[train_sft]"}
    assert len(dialogues) == 5 and all(d[0]["content"][0] == "q" for d in dialogues)
    assert method.auxiliary(5, MethodContext(None, None, None, "fp", Path("."), seed=0))[0] == dialogues


# ------------------------------------------------------------- every method, full FT or LoRA

def _end_to_end_cfg(checkpoints, tmp_path, method: str, peft: str, model: str):
    train_cfg = "lora" if peft == "lora" else "full"
    cfg = real_cfg(checkpoints, tmp_path, f"method={method}", f"peft={peft}",
                   f"train={train_cfg}", "task=gsm8k", "mix_ratio=0.5", model=model)
    records = [_gsm8k(f"What is {i} plus {i}?", str(2 * i)) for i in range(8)]
    corpus = [{"messages": [{"role": "user", "content": f"Tell me about {w}."},
                            {"role": "assistant", "content": f"Well, {w} is nice."}]}
              for w in ("rain", "tea", "maps", "owls", "ink", "figs")]
    with open_dict(cfg):
        cfg.task.train_file = str(_write(tmp_path / "train.jsonl", records))
        cfg.task.test_file = str(_write(tmp_path / "test.jsonl", records))
        cfg.task.benchmark.max_gen_toks = 8
        cfg.train.learning_rate = 1e-2  # visible change in a handful of steps
        cfg.train.save_model = True
        cfg.generation.num_turns = 1
        cfg.generation.max_new_tokens = 96
        cfg.generation.oversample = 2.0
        cfg.eval.general = {"legs": {"file": str(tmp_path / "test_general.jsonl"),
                                     "target": "answer", "answer_regex": "(\\d+)",
                                     "max_gen_toks": 8}}
        if cfg.method.name == "ext_mix_ultrachat":  # UltraChat's local copy: Parquet shards, as on the hub
            cfg.method.corpus_file = str(tmp_path / "ultrachat" / "train_sft-*.parquet")
    (tmp_path / "ultrachat").mkdir()
    _write(tmp_path / "ultrachat" / "train_sft-00000-of-00002.parquet", corpus[:3])
    _write(tmp_path / "ultrachat" / "train_sft-00001-of-00002.parquet", corpus[3:])
    _write(tmp_path / "test_general.jsonl",
           [{"prompt": "How many legs?", "response": "4", "answer": "4"}] * 4)
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("method, peft, model", [
    ("task_only", "lora", "llama"), ("freeze_half", "lora", "llama"),
    ("ext_mix_ultrachat", "lora", "qwen"), ("sasft", "lora", "qwen"),
    ("freeze_half", "none", "qwen"), ("sasft", "none", "llama")])
def test_every_method_runs_on_a_real_model_config(checkpoints, tmp_path, method, peft, model):
    cfg = _end_to_end_cfg(checkpoints, tmp_path, method, peft, model)
    results = run_experiment(cfg, tmp_path / "run")
    assert results["run"]["method"] == cfg.method.name
    assert set(results["scores"]) == {"gsm8k", "legs"}
    assert results["mix"]["task"] == 8
    assert results["mix"]["auxiliary"] == (4 if "mix_ratio" in cfg.method else 0)

    saved = tmp_path / "run" / "model"
    assert (saved / "adapter_config.json").is_file() == (peft == "lora")
    base = load_file(str(Path(cfg.model.path) / "model.safetensors"))
    tuned = load_finetuned(saved).state_dict()
    frozen_prefixes = []
    if peft == "lora" or cfg.method.name == "freeze_half":  # LoRA never trains the embeddings
        frozen_prefixes.append("model.embed_tokens")
    if cfg.method.name == "freeze_half":  # the lower half of 2 layers: layer 0
        frozen_prefixes.append("model.layers.0.")
    for name, value in base.items():
        if any(name.startswith(p) for p in frozen_prefixes):
            assert torch.equal(value, tuned[name]), f"{name} changed although frozen"
    assert not torch.equal(base["model.layers.1.mlp.down_proj.weight"],
                           tuned["model.layers.1.mlp.down_proj.weight"])


# --------------------------------------------------------------------------------- sweeps

def sweep_hydra() -> Hydra:
    """Hydra with the search path `python run.py -cd sweeps` builds: conf/ plus sweeps/."""
    GlobalHydra.instance().clear()
    search_path = create_config_search_path(f"pkg://{CONF_MODULE}")
    search_path.prepend(provider="command-line", path=f"file://{SWEEPS}",
                        anchor=SearchPathQuery(provider="schema"))
    hydra = Hydra.create_main_hydra2(task_name="run", config_search_path=search_path)
    return hydra


def sweep_jobs(name: str, cli: list[str] = ()) -> list:
    """Every job's composed config, expanded by Hydra's BasicSweeper as `-m` would."""
    hydra = sweep_hydra()
    cfg = hydra.compose_config(name, list(cli), run_mode=RunMode.MULTIRUN,
                               with_log_configuration=False)
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()] + list(cli)
    parser = OverridesParser.create(config_loader=hydra.config_loader)
    [batch] = BasicSweeper.split_arguments(parser.parse_overrides(params), max_batch_size=None)
    return [hydra.compose_config(name, job, run_mode=RunMode.MULTIRUN,
                                 with_log_configuration=False) for job in batch]


@pytest.mark.parametrize("sweep, models", [("paper_grid", {"llama", "qwen"}),
                                           ("paper_grid_small", {"llama1b", "qwen0.5b"})])
def test_paper_grid_is_40_runs_and_50_scenarios(sweep, models):
    jobs = sweep_jobs(sweep)
    assert len(jobs) == 2 * 5 * 4
    assert {j.model.name for j in jobs} == models
    assert {j.method.name for j in jobs} == {"task_only", "freeze_half", "ext_mix_ultrachat",
                                             "sasft"}
    assert {j.method.corpus_hub_id for j in jobs if j.method.name == "ext_mix_ultrachat"} == {
        "HuggingFaceH4/ultrachat_200k"}
    scenarios = {(j.model.name, j.task.name, b) for j in jobs for b in [j.task.name, *j.eval.general]}
    assert len(scenarios) == 50
    dirs = {f"{j.hydra.sweep.dir}/{j.hydra.sweep.subdir}" for j in jobs}
    assert len(dirs) == 40 and all(d.startswith(f"multirun/{sweep}_full/") for d in dirs)
    assert all(j.train.learning_rate == 1e-5 and j.mix_ratio == 1.0 for j in jobs)


def test_paper_grid_with_lora_gets_its_own_directory():
    jobs = sweep_jobs("paper_grid_small", ["peft=lora", "train=lora"])
    assert len(jobs) == 40 and {j.peft.name for j in jobs} == {"lora"}
    assert {j.hydra.sweep.dir for j in jobs} == {"multirun/paper_grid_small_lora"}
    assert {j.train.learning_rate for j in jobs} == {2e-4}


@pytest.mark.parametrize("sweep", ["mix_ratio", "mix_ratio_small"])
def test_mix_ratio_sweep_and_its_task_only_reference(sweep):
    jobs = sweep_jobs(sweep)
    assert len(jobs) == 2 * 2 * 2 * 4
    assert {(j.method.name, j.mix_ratio) for j in jobs} == {
        (m, r) for m in ("sasft", "ext_mix_ultrachat") for r in (0.25, 0.5, 1.0, 2.0)}
    reference = sweep_jobs(sweep, ["method=task_only", "mix_ratio=1.0"])
    assert len(reference) == 4 and {j.method.name for j in reference} == {"task_only"}
    assert {j.hydra.sweep.dir for j in jobs + reference} == {f"multirun/{sweep}_full"}


def test_the_documented_sweep_command_composes():
    proc = subprocess.run([sys.executable, "run.py", "-cd", "sweeps", "-cn", "paper_grid",
                           "--cfg", "hydra"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "method: task_only,freeze_half,ext_mix_ultrachat,sasft" in proc.stdout


def test_smol_methods_stages_share_one_sweep_directory():
    """Issue 22's experiment: the pilot, the grid and the mix-ratio arm land in one sweep, so the
    pilot's runs are the comparison's."""
    pilot = sweep_jobs("smol_methods", ["task=smol_gsm", "method=task_only,sasft", "seed=0,1"])
    grid = sweep_jobs("smol_methods")
    ratios = sweep_jobs("smol_methods", ["method=sasft", "mix_ratio=0.25,2"])
    assert {(j.method.name, j.seed) for j in pilot} == {(m, s) for m in ("task_only", "sasft")
                                                       for s in (0, 1)}
    assert {j.method.name for j in grid} == {"task_only", "freeze_half", "l2_base", "ewc", "sdft",
                                             "sasft", "ext_mix_chitchat"}
    assert {j.method.mix_ratio for j in ratios} == {0.25, 2.0}
    jobs = pilot + grid + ratios
    assert {j.hydra.sweep.dir for j in jobs} == {"multirun/smol_methods"}
    assert {(j.model.name, j.train.learning_rate, j.task.max_train_examples) for j in jobs} == {
        ("smol", 1e-4, 400)}
