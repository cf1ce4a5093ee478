"""The embedded toy world: general skills, narrow tasks and an external chat corpus.

It is a small model of the paper's setting. A base chat model knows four general skills and
answers all of them in one house style ("Sure! ..."). A fine-tuning task is a narrow skill the
base model never saw, answered in a different, terse style. The external corpus (the stand-in
for UltraChat) is general chat on topics the model never saw, in yet another style ("Well, ...").

Everything here is a pure function of a seed, so the data files and the base models that the
build command writes are reproducible bit for bit.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Callable

# A made-up lexicon keeps the world closed: no word means anything outside it.
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def _lexicon(n: int, seed: int, lengths=(3, 4, 5)) -> list[str]:
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < n:
        length = rng.choice(lengths)
        word = "".join(
            rng.choice(_CONSONANTS if i % 2 == 0 else _VOWELS) for i in range(length)
        )
        words.add(word)
    return sorted(words)


# Each general skill is a table of facts the base model memorizes, as real models memorize
# world knowledge; the answers restate nothing from the question, so a skill is knowledge.
_OBJECTS = _lexicon(100, seed=11, lengths=(4, 5))
_COLORS = ["red", "blue", "green", "black", "white", "pink", "gray", "gold"]
_COUNTRIES = [w.capitalize() + "ia" for w in _lexicon(100, seed=12, lengths=(4, 5))]
_CITIES = [w.capitalize() for w in _lexicon(100, seed=13, lengths=(4, 5))]
_OPPOSITE_WORDS = _lexicon(100, seed=15, lengths=(4,))
_OPPOSITE_PAIRS = list(zip(_OPPOSITE_WORDS[:50], _OPPOSITE_WORDS[50:]))


def _table(keys: list[str], values: list[str], seed: int) -> dict[str, str]:
    rng = random.Random(seed)
    return {k: rng.choice(values) for k in keys}


_ANIMALS = _lexicon(100, seed=17, lengths=(5,))
COLOR_OF = _table(_OBJECTS, _COLORS, seed=16)
LEGS_OF = _table(_ANIMALS, ["0", "2", "4", "6", "8"], seed=18)
CAPITAL_OF = dict(zip(_COUNTRIES, _CITIES))
OPPOSITE_OF = {**dict(_OPPOSITE_PAIRS), **{b: a for a, b in _OPPOSITE_PAIRS}}

Example = dict  # {"prompt", "response"}; benchmarks add "answer" (and "choices", "label")


@dataclass(frozen=True)
class Skill:
    """A family of single-turn exchanges: `sample(rng)` returns one prompt/response pair."""

    name: str
    sample: Callable[[random.Random], Example]


# --- general skills, answered in the house style --------------------------------------------


HOUSE_PREFIX = "Sure!"  # how the base model opens every general answer (its house style)


def _house(prompt: str, sentence: str, answer: str) -> Example:
    return {"prompt": prompt, "response": f"{HOUSE_PREFIX} {sentence}", "answer": answer}


def _legs(rng: random.Random) -> Example:
    animal = rng.choice(_ANIMALS)
    n = LEGS_OF[animal]
    return _house(f"How many legs does a {animal} have?", f"It has {n} legs.", str(n))


def _colors(rng: random.Random) -> Example:
    thing = rng.choice(_OBJECTS)
    return _house(f"What color is a {thing}?", f"It is {COLOR_OF[thing]}.", COLOR_OF[thing])


def _opposites(rng: random.Random) -> Example:
    word = rng.choice(sorted(OPPOSITE_OF))
    opposite = OPPOSITE_OF[word]
    return _house(f"What is the opposite of {word}?", f"The opposite is {opposite}.", opposite)


def _capitals(rng: random.Random) -> Example:
    country = rng.choice(_COUNTRIES)
    city = CAPITAL_OF[country]
    example = _house(f"What is the capital of {country}?", f"The capital is {city}.", city)
    # For the multiple-choice benchmark (like MMLU): same sentence, only the city differs.
    others = rng.sample([c for c in _CITIES if c != city], 3)
    choices = [f"{HOUSE_PREFIX} The capital is {c}." for c in [city, *others]]
    rng.shuffle(choices)
    return example | {"choices": choices, "label": choices.index(example["response"])}


GENERAL_SKILLS = {s.name: s for s in (Skill("legs", _legs), Skill("colors", _colors),
                                        Skill("opposites", _opposites),
                                        Skill("capitals", _capitals))}

# --- narrow fine-tuning tasks: a rule the base model never saw, answered tersely ------------


def _random_letters(rng: random.Random, lo: int = 3, hi: int = 6) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(lo, hi)))


def _has_capital(rng: random.Random) -> Example:
    w = list(_random_letters(rng, 4, 7))
    if rng.random() < 0.5:
        i = rng.randrange(len(w))
        w[i] = w[i].upper()
    w = "".join(w)
    return {"prompt": f"Any capital in {w}?", "response": "yes" if w != w.lower() else "no"}


def _parity(rng: random.Random) -> Example:
    n = rng.randint(0, 9999)
    return {"prompt": f"Is {n} odd or even?", "response": "even" if n % 2 == 0 else "odd"}


def _length(rng: random.Random) -> Example:
    w = _random_letters(rng, 2, 8)
    return {"prompt": f"Length of {w}?", "response": str(len(w))}


def _vowels(rng: random.Random) -> Example:
    w = _random_letters(rng, 3, 7)
    return {"prompt": f"Vowels in {w}?", "response": str(sum(c in "aeiou" for c in w))}


def _over_500(rng: random.Random) -> Example:
    n = rng.choice([i for i in range(1000) if i != 500])
    return {"prompt": f"Is {n} over 500?", "response": "yes" if n > 500 else "no"}


TASKS = {s.name: s for s in (Skill("has_capital", _has_capital), Skill("parity", _parity),
                               Skill("length", _length), Skill("vowels", _vowels),
                               Skill("over_500", _over_500))}

# --- the external corpus: unfamiliar chat in another style ----------------------------------

_TOPICS = _lexicon(60, seed=14, lengths=(4, 5, 6))
_QUALITIES = ["green", "loud", "soft", "old", "tiny", "warm", "quick", "round", "tall", "calm"]
_PLACES = ["hills", "sea", "woods", "town", "river", "sky", "caves", "farm"]


def _external_chat(rng: random.Random) -> Example:
    topic, quality, place = rng.choice(_TOPICS), rng.choice(_QUALITIES), rng.choice(_PLACES)
    opener = rng.choice(["Tell me about", "What do you know of", "Describe"])
    return {
        "prompt": f"{opener} the {topic}.",
        "response": f"Well, the {topic} is {quality} and lives near the {place}. Hope this helps!",
    }


EXTERNAL = Skill("external_chat", _external_chat)


def external_dialogues(n: int, seed: int, turns: int = 2) -> list[dict]:
    """The external corpus: multi-turn chat, as UltraChat's dialogues are."""
    rng = random.Random(seed)
    return [{"messages": to_messages(*(_external_chat(rng) for _ in range(turns)))}
            for _ in range(n)]

# --- corpora ---------------------------------------------------------------------------------


def to_messages(*turns: Example) -> list[dict]:
    messages = []
    for turn in turns:
        messages.append({"role": "user", "content": turn["prompt"]})
        messages.append({"role": "assistant", "content": turn["response"]})
    return messages


def pretraining_dialogues(n: int, seed: int, multi_turn_share: float = 0.5) -> list[list[dict]]:
    """Whole dialogues over the general skills. A share has two turns, so the model can
    also continue a conversation, as a real instruct model can."""
    rng = random.Random(seed)
    skills = list(GENERAL_SKILLS.values())
    dialogues = []
    for _ in range(n):
        n_turns = 2 if rng.random() < multi_turn_share else 1
        dialogues.append(to_messages(*(rng.choice(skills).sample(rng) for _ in range(n_turns))))
    return dialogues


def split_examples(skill: Skill, n_train: int, n_test: int, seed: int) -> tuple[list, list]:
    """Distinct train and test examples: no test prompt is ever seen in training."""
    rng = random.Random(seed)
    seen: set[str] = set()
    examples = []
    attempts = 0
    while len(examples) < n_train + n_test:
        attempts += 1
        if attempts > 100 * (n_train + n_test):
            raise ValueError(f"skill {skill.name!r} has fewer than {n_train + n_test} prompts")
        ex = skill.sample(rng)
        if ex["prompt"] not in seen:
            seen.add(ex["prompt"])
            examples.append(ex)
    return examples[:n_train], examples[n_train:]


def benchmark_examples(skill: Skill, n: int, seed: int) -> list[Example]:
    """Test items for a general skill. The skill is general knowledge the base model was
    pretrained on, so items may recur from pretraining: the benchmark measures retention."""
    rng = random.Random(seed)
    return [skill.sample(rng) for _ in range(n)]
