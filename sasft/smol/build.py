"""Writes the smol world's data (deterministic; the output is committed under data/):

    python -m sasft.smol.build

- general benchmarks a 135M instruct model can do, every gold answer computed from the tables
  of sasft/smol/world.py or from the arithmetic itself: capitals, arithmetic, opposites,
  plurals (generative, the answer extracted from the reply), continents (multiple choice by
  log-likelihood) and ifeval_simple (IFEval's own instructions, scored by lm-eval's checkers);
- two tasks in a terse style the model does not write: smol_gsm (GSM8K-format arithmetic word
  problems, worked as bare equations ending "#### N"), smol_extract (a sentence's facts as
  one line of JSON) and smol_sql (a question about small tables, answered by one SQL query, in
  the prompt format of conf/task/sql.yaml).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from .world import CONTINENTS, COUNTRIES, OPPOSITES, PLURALS

DATA = Path(__file__).resolve().parent / "data"
ONE_WORD = " Answer with one word."


def write(path: Path, records: list[dict]) -> None:
    """JSONL in sasft's chat schema: every record has a prompt and a response (for a
    benchmark, the gold reply; `answer` is what its test scores)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


# --- general benchmarks ---------------------------------------------------------------------


def capitals() -> list[dict]:
    return [{"prompt": f"What is the capital of {country}? Answer with the city name only.",
             "response": capital, "answer": capital, "country": country} for country, capital, _ in COUNTRIES]


def continents(rng: random.Random) -> list[dict]:
    """Multiple choice: four continents, the right one at a random place."""
    out = []
    for country, _, continent in COUNTRIES:
        choices = rng.sample([c for c in CONTINENTS if c != continent], 3) + [continent]
        rng.shuffle(choices)
        out.append({"prompt": f"On which continent is {country}?", "response": continent,
                    "choices": choices,
                    "label": choices.index(continent), "country": country})
    return out


def arithmetic(rng: random.Random, n: int = 150) -> list[dict]:
    out, seen = [], set()
    while len(out) < n:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        op = rng.choice("+-")
        if op == "-" and b > a:
            a, b = b, a
        if (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        value = a + b if op == "+" else a - b
        out.append({"prompt": f"What is {a} {op} {b}? Answer with the number only.",
                    "response": str(value), "answer": str(value), "a": a, "op": op, "b": b})
    return out


def opposites() -> list[dict]:
    return [{"prompt": f'What is the opposite of "{word}"?{ONE_WORD}', "response": opposite,
             "answer": opposite, "word": word} for word, opposite in OPPOSITES]


def plurals() -> list[dict]:
    return [{"prompt": f'What is the plural of "{word}"?{ONE_WORD}', "response": plural,
             "answer": plural, "word": word} for word, plural in PLURALS]


# IFEval's instructions in IFEval's own words, each with the kwargs its checker takes
# (lm_eval.tasks.ifeval.instructions_registry). Only checkers that need no NLTK data (which
# would be downloaded) and that a 135M model can sometimes follow.
END_PHRASE = "Is there anything else I can help with?"
INSTRUCTIONS = [
    ("change_case:english_lowercase", "Your entire response should be in English, and in all "
     "lowercase letters. No capital letters are allowed.", {}),
    ("keywords:existence", "Include the keywords {keywords} in the response.", None),
    ("punctuation:no_comma", "In your entire response, refrain from the use of any commas.", {}),
    ("startend:end_checker", f'Finish your response with this exact phrase "{END_PHRASE}". No '
     "other words should follow this phrase.", {"end_phrase": END_PHRASE}),
    ("startend:quotation", "Wrap your entire response with double quotation marks.", {}),
    ("detectable_content:postscript", "At the end of your response, please explicitly add a "
     "postscript starting with P.S.", {"postscript_marker": "P.S."}),
    ("length_constraints:number_words", "Answer with less than 40 words.",
     {"relation": "less than", "num_words": 40}),
    ("detectable_format:title", "Your answer must contain a title, wrapped in double angular "
     "brackets, such as <<poem of joy>>.", {}),
]
TOPICS = [("the ocean", ["water", "waves"]), ("autumn", ["leaves", "cold"]),
          ("a city park", ["trees", "children"]), ("your favorite food", ["taste", "cook"]),
          ("learning to swim", ["pool", "breathe"]), ("the moon", ["night", "light"]),
          ("a rainy day", ["umbrella", "clouds"]), ("coffee", ["morning", "cup"]),
          ("a train journey", ["window", "station"]), ("friendship", ["trust", "help"]),
          ("the desert", ["sand", "heat"]), ("a birthday party", ["cake", "gift"]),
          ("mountains", ["snow", "climb"]), ("reading books", ["story", "page"]),
          ("a small garden", ["flowers", "soil"])]
TASKS = ["Write a short paragraph about {topic}.", "Describe {topic} in a few sentences."]


def ifeval_simple() -> list[dict]:
    """One instruction per prompt: 15 topics x 8 instructions, 120 prompts (the field names
    of google/IFEval, so that lm-eval's own process_results scores them)."""
    out = []
    for t, (topic, keywords) in enumerate(TOPICS):
        for i, (instruction_id, text, kwargs) in enumerate(INSTRUCTIONS):
            if kwargs is None:  # keywords:existence
                kwargs = {"keywords": keywords}
                text = text.format(keywords=" and ".join(f"'{k}'" for k in keywords))
            task = TASKS[(t + i) % len(TASKS)].format(topic=topic)
            out.append({"key": len(out), "prompt": f"{task} {text}",
                        "instruction_id_list": [instruction_id], "kwargs": [kwargs]})
    return out


# --- tasks ----------------------------------------------------------------------------------

NAMES = ["Tom", "Ann", "Maria", "Ben", "Lena", "Omar", "Sara", "Jack", "Nora", "Ali", "Eva",
         "Sam", "Mia", "Leo", "Zoe", "Raj", "Ivy", "Max", "Kim", "Hugo"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "books", "stamps", "eggs",
         "cards", "shells", "candies", "balloons"]
GSM_INSTRUCTION = ('\nSolve the problem step by step, then give the final answer on its own '
                   'line as "#### <number>".')


def word_problem(rng: random.Random) -> tuple[str, str]:
    """A two-step problem and its solution in GSM8K's format, as bare equations."""
    name, other = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    kind = rng.randrange(4)
    if kind == 0:
        a, b = rng.randint(5, 60), rng.randint(2, 40)
        c = rng.randint(1, a + b - 1)
        text = (f"{name} has {a} {item}. {name} buys {b} more and then gives {c} to {other}. "
                f"How many {item} does {name} have now?")
        steps = [f"{a} + {b} = {a + b}", f"{a + b} - {c} = {a + b - c}"]
    elif kind == 1:
        a, b = rng.randint(3, 12), rng.randint(2, 9)
        c = rng.randint(1, a * b - 1)
        text = (f"A pack holds {a} {item}. {name} buys {b} packs and gives away {c} {item}. "
                f"How many {item} does {name} have left?")
        steps = [f"{a} * {b} = {a * b}", f"{a * b} - {c} = {a * b - c}"]
    elif kind == 2:
        a, b, c = rng.randint(4, 25), rng.randint(2, 7), rng.randint(5, 50)
        text = (f"{name} earns {a} dollars a day for {b} days, then finds {c} dollars. "
                f"How many dollars does {name} have?")
        steps = [f"{a} * {b} = {a * b}", f"{a * b} + {c} = {a * b + c}"]
    else:
        b = rng.randint(2, 8)
        q = rng.randint(2, 12)
        c = rng.randint(1, 20)
        text = (f"{name} shares {b * q} {item} equally among {b} friends. Then {other} gives "
                f"each friend {c} more. How many {item} does each friend have?")
        steps = [f"{b * q} / {b} = {q}", f"{q} + {c} = {q + c}"]
    answer = steps[-1].split(" = ")[-1]
    return text, "\n".join(steps + [f"#### {answer}"])


PEOPLE_JOBS = ["teacher", "nurse", "farmer", "pilot", "baker", "doctor", "painter", "driver",
               "chef", "lawyer"]
SENTENCES = ["{name} is {age} years old, lives in {city} and works as a {job}.",
             "Born {age} years ago, {name} now works as a {job} in {city}.",
             "{name}, a {job} from {city}, turned {age} this year.",
             "In {city} there is a {job} called {name} who is {age}."]


def extraction(rng: random.Random) -> tuple[str, str]:
    """A sentence about a person and its facts as one line of JSON, keys in a fixed order."""
    name = rng.choice(NAMES)
    age = rng.randint(18, 80)
    city = rng.choice(COUNTRIES)[1]
    job = rng.choice(PEOPLE_JOBS)
    sentence = rng.choice(SENTENCES).format(name=name, age=age, city=city, job=job)
    prompt = ("Extract the person's name, age, city and job from the text as JSON with the "
              f"keys name, age, city, job.\nText: {sentence}")
    return prompt, json.dumps({"name": name, "age": age, "city": city, "job": job})


# Three small tables, in the CREATE TABLE form of b-mc2/sql-create-context (conf/task/sql.yaml).
TABLES = {
    "people": "CREATE TABLE people (name VARCHAR, age INTEGER, city VARCHAR, job VARCHAR)",
    "orders": "CREATE TABLE orders (id INTEGER, customer VARCHAR, item VARCHAR, quantity INTEGER, "
              "price INTEGER)",
    "books": "CREATE TABLE books (title VARCHAR, author VARCHAR, year INTEGER, pages INTEGER)",
}
# Not capitals: the capitals benchmark must not be what the task teaches.
CITIES = ["Lyon", "Osaka", "Porto", "Austin", "Bergen", "Cork", "Graz", "Kyoto", "Turin",
          "Malaga", "Leeds", "Perth"]
SQL_PROMPT = "{context}\n\nUsing the tables above, write one SQL query that answers: {question}\nReply with the query only."


def sql_question(rng: random.Random) -> tuple[str, str]:
    """A question about one table and the one query that answers it (a template each: the
    column, comparison and aggregate follow from the question's words)."""
    name, job, city, item = (rng.choice(NAMES), rng.choice(PEOPLE_JOBS), rng.choice(CITIES),
                             rng.choice(ITEMS))
    age, n, year = rng.randint(18, 70), rng.randint(2, 60), rng.randint(1950, 2020)
    pages = rng.randrange(100, 900, 10)
    people = [
        (f"What is the age of {name}?", f'SELECT age FROM people WHERE name = "{name}"'),
        (f"Which city does {name} live in?", f'SELECT city FROM people WHERE name = "{name}"'),
        (f"How many people work as a {job}?",
         f'SELECT COUNT(*) FROM people WHERE job = "{job}"'),
        (f"List the names of people older than {age}.",
         f"SELECT name FROM people WHERE age > {age}"),
        (f"What is the average age of people living in {city}?",
         f'SELECT AVG(age) FROM people WHERE city = "{city}"'),
        (f"Who is the youngest {job}?",
         f'SELECT name FROM people WHERE job = "{job}" ORDER BY age LIMIT 1'),
        (f"List the names of every {job} older than {age}.",
         f'SELECT name FROM people WHERE job = "{job}" AND age > {age}'),
        (f"How many people in {city} are younger than {age}?",
         f'SELECT COUNT(*) FROM people WHERE city = "{city}" AND age < {age}'),
    ]
    orders = [
        (f"How many {item} did {name} order in total?",
         f'SELECT SUM(quantity) FROM orders WHERE customer = "{name}" AND item = "{item}"'),
        (f"What is the highest price paid for {item}?",
         f'SELECT MAX(price) FROM orders WHERE item = "{item}"'),
        (f"Which customers ordered more than {n} {item}?",
         f'SELECT customer FROM orders WHERE item = "{item}" AND quantity > {n}'),
        (f"How many orders cost less than {n} dollars?",
         f"SELECT COUNT(*) FROM orders WHERE price < {n}"),
    ]
    books = [
        (f"Who wrote the books published in {year}?",
         f"SELECT author FROM books WHERE year = {year}"),
        (f"How many books did {name} write?", f'SELECT COUNT(*) FROM books WHERE author = "{name}"'),
        (f"What is the title of the longest book by {name}?",
         f'SELECT title FROM books WHERE author = "{name}" ORDER BY pages DESC LIMIT 1'),
        (f"List the titles of books with more than {pages} pages.",
         f"SELECT title FROM books WHERE pages > {pages}"),
    ]
    table, questions = rng.choice([("people", people), ("orders", orders), ("books", books)])
    question, query = rng.choice(questions)
    return SQL_PROMPT.format(context=TABLES[table], question=question), query


def task_split(make, rng: random.Random, train: int, test: int) -> tuple[list, list]:
    """Distinct prompts, the test split disjoint from the training split."""
    seen, out = set(), []
    while len(out) < train + test:
        prompt, response = make(rng)
        if prompt not in seen:
            seen.add(prompt)
            out.append({"prompt": prompt, "response": response})
    return out[:train], out[train:]


def gsm_split(rng: random.Random, train: int, test: int) -> tuple[list, list]:
    def make(r):
        text, solution = word_problem(r)
        return text + GSM_INSTRUCTION, solution

    train_set, test_set = task_split(make, rng, train, test)
    for r in test_set:  # the test scores the final number
        r["answer"] = r["response"].rsplit("#### ", 1)[1]
    return train_set, test_set


TRAIN_SIZE, TEST_SIZE = 1600, 300


def main() -> None:
    general = DATA / "general"
    write(general / "capitals.jsonl", capitals())
    write(general / "continents.jsonl", continents(random.Random(1)))
    write(general / "arithmetic.jsonl", arithmetic(random.Random(2)))
    write(general / "opposites.jsonl", opposites())
    write(general / "plurals.jsonl", plurals())
    write(general / "ifeval_simple.jsonl", ifeval_simple())
    # 1600 + 300: enough for a schedule at which task-only SFT learns the task (issue 22;
    # conf/task/smol_*.yaml's max_train_examples picks how many train) and a test whose
    # item-level noise is small beside the effects compared.
    train, test = gsm_split(random.Random(3), TRAIN_SIZE, TEST_SIZE)
    write(DATA / "tasks" / "smol_gsm" / "train.jsonl", train)
    write(DATA / "tasks" / "smol_gsm" / "test.jsonl", test)
    train, test = task_split(extraction, random.Random(4), TRAIN_SIZE, TEST_SIZE)
    write(DATA / "tasks" / "smol_extract" / "train.jsonl", train)
    write(DATA / "tasks" / "smol_extract" / "test.jsonl", test)
    train, test = task_split(sql_question, random.Random(5), TRAIN_SIZE, TEST_SIZE)
    write(DATA / "tasks" / "smol_sql" / "train.jsonl", train)
    write(DATA / "tasks" / "smol_sql" / "test.jsonl", test)
    print(f"wrote {DATA}")


if __name__ == "__main__":
    main()
