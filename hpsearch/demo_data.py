"""A synthetic BIO NER data set, made at run time, so the demo and the tests need no download.

The demo study and the test suite must run offline and on a laptop, yet a search is only worth
showing if the learning rate visibly matters: a good one should reach a high entity F1 within a
few epochs of a tiny scratch BERT, a bad one should stay near zero. Hand-written templates filled
from gazetteers give that: the data is learnable, but not trivially so, because

* a few words change meaning with context ("Jordan" the person or the country, "May" a person or
  the month, "Apple" the company or "apple" the fruit), so spelling alone is not enough;
* organisations reuse location names ("Bank of Lisbon" vs "Lisbon"), so spans must be found,
  not just words;
* capitalised words outside entities (days, months, titles such as "Dr.") and lowercase words
  inside them ("Elena de Costa") break the "capital letter means entity" shortcut;
* about a fifth of the entity mentions in val and test are strings never seen in train, so F1
  rewards generalisation rather than memorising a gazetteer.

The files use the BERT-NER-pytorch layout that real data sets use, so the trainer reads demo data
and real data through the same code path.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

ENTITY_TYPES: tuple[str, ...] = ("LOC", "ORG", "PER")
TAGS: tuple[str, ...] = ("O", *(f"{p}-{t}" for t in ENTITY_TYPES for p in ("B", "I")))
SPLITS: tuple[str, ...] = ("train", "val", "test")
MARKER = "demo_data.json"
FORMAT_VERSION = 1

# Of the entity mentions in val/test, the share drawn from entries kept out of train. Seen
# entries that happen not to be sampled in train push the measured share slightly higher.
_HELDOUT_SHARE = 0.2
# Of each type's entries, the share reserved for val/test.
_HELDOUT_ENTRIES = 0.25
# How often an entity slot is filled with one of the deliberately ambiguous entries, so that the
# model sees them in both roles often enough to learn that context decides.
_AMBIGUOUS_SHARE = 0.08
_MIN_LEN, _MAX_LEN = 6, 30

# --------------------------------------------------------------------------- word lists


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_FIRST = _words(
    "Maria John Aisha Kenji Elena Omar Sofia David Priya Lucas Hannah Mateo Fatima Noah Ingrid "
    "Pedro Yuki Samuel Chloe Ravi Amara Tomas Leila Victor Nadia Oscar Mei Daniel Zara Felix "
    "Irene Hugo Alice Marco Olga Kwame Rosa Erik Laura Ahmed Anna Jordan Florence Georgia"
)
_LAST = _words(
    "Santos Okafor Tanaka Novak Fischer Haddad Lindqvist Moreau Kowalski Mensah Rossi Alvarez "
    "Petrov Nakamura Schmidt Ibrahim Costa Jensen Walsh Chen Kumar Dubois Horvat Silva Brennan "
    "Yilmaz Eriksen Adeyemi Larsen Romano Park Varga Quinn Duarte Sato Washington Lincoln"
)
_PARTICLES = _words("de van da al")

_ORG_STEMS = _words(
    "Northwind Bluestone Pinecrest Redwood Silverline Crescent Granite Evergreen Ironbridge "
    "Brightwater Oakridge Stonegate Westfield Goldleaf Harborview Skyline Riverbend Maplewood "
    "Sunrise Falcon Orion Vertex Nimbus Cobalt Atlas Meridian Horizon Summit Keystone Lighthouse"
)
_ORG_SUFFIXES = (
    "Corp",
    "Systems",
    "Group",
    "Labs",
    "Airlines",
    "Trading Company",
    "Financial Services",
    "Energy Partners",
    "Media Group",
)
_ORG_OF_PLACE = ("Bank of {}", "University of {}", "{} City Council", "{} Football Club")

_CITIES = _words(
    "Lisbon Oslo Nairobi Lima Quito Kyoto Dakar Tbilisi Hanoi Accra Porto Bergen Cusco Durban "
    "Malmo Riga Tunis Valencia Geneva Hamburg Krakow Manila Perth Osaka Seville Turin Zagreb "
    "Lyon Leeds Cairo"
)
_PLACE_STEMS = _words("Amsterdam Elizabeth Marco Louis Haven Carmen Hope Albert Rosa Helena Clara")
_PLACE_PREFIXES = _words("New Port San Saint Fort Lake Mount")
_PLACE_SUFFIXES = _words("Springs Falls Valley Bay Heights")
_PLACE_OF = ("Isle of {}", "Gulf of {}")

# Entries that are an entity of one type here and of another type, or no entity, elsewhere, or
# that share words with entries of another type.
_AMBIGUOUS = {
    "PER": ("Jordan", "Florence", "Georgia", "May", "Chad", "Jordan Lincoln", "May Washington"),
    "LOC": ("Jordan", "Florence", "Georgia", "Turkey", "Chad", "Washington", "Lincoln"),
    "ORG": ("Apple", "Apple Records", "Lisbon Football Club", "Bank of Jordan", "Washington Post"),
}

_FILLERS = {
    "DAY": _words("Monday Tuesday Wednesday Thursday Friday Saturday Sunday"),
    "MONTH": _words(
        "January February March April May June July August September October November December"
    ),
    "NUM": _words("2 3 5 7 12 18 40 75 150 300 2.5 7.8"),
    "TITLE": _words("Dr. Mr. Ms. Professor Senator Captain"),
}

# --------------------------------------------------------------------------- templates

_TEMPLATES = (
    "{PER} visited {LOC} last week .",
    "{ORG} hired {PER} as chief engineer .",
    "the office of {ORG} in {LOC} closed .",
    "{PER} , a spokesperson for {ORG} , declined to comment .",
    "shares of {ORG} rose {NUM} percent on {DAY} .",
    "{PER} was born in {LOC} in {MONTH} .",
    "{TITLE} {PER} will speak at {ORG} on {DAY} .",
    "{ORG} opened a new factory near {LOC} .",
    "the mayor of {LOC} met {PER} and {PER} .",
    "{PER} moved from {LOC} to {LOC} with her family .",
    "{ORG} and {ORG} announced a merger worth {NUM} million dollars .",
    "flights between {LOC} and {LOC} were cancelled because of the storm .",
    "{PER} signed a contract with {ORG} .",
    "{PER} told reporters in {LOC} that {ORG} would expand .",
    "police in {LOC} arrested a man on {DAY} night .",
    "{ORG} reported a loss of {NUM} million dollars in {MONTH} .",
    "{PER} bought an apple at a market in {LOC} .",
    "analysts expect {ORG} to cut jobs in {LOC} .",
    "{PER} , who studied at {ORG} , now lives in {LOC} .",
    "players from {ORG} beat the team from {LOC} on {DAY} .",
    "{PER} won the race in {LOC} .",
    "{PER} said the deal with {ORG} was signed in {MONTH} .",
    "tourists in {LOC} can visit the old harbour and the market .",
    "{ORG} is based in {LOC} and employs {NUM} people .",
    "{PER} thanked {PER} for the help .",
    "a new bridge will connect {LOC} with {LOC} by {MONTH} .",
    "{ORG} named {PER} its new chief executive on {DAY} .",
    "{PER} and {PER} travelled to {LOC} for a conference hosted by {ORG} .",
    "the river near {LOC} flooded after {NUM} days of rain .",
    "{PER} left {ORG} to join {ORG} .",
    "the court in {LOC} fined {ORG} {NUM} million dollars .",
    "{PER} ate roast turkey with friends in {LOC} .",
    "{PER} , {PER} and {PER} met at the embassy in {LOC} .",
    "students from {LOC} protested outside the offices of {ORG} .",
    "{ORG} sued {ORG} over a patent dispute .",
    "{PER} will return to {LOC} in {MONTH} .",
    "the festival in {LOC} attracted {NUM} thousand visitors .",
    "{PER} works as a nurse at a hospital in {LOC} .",
    "{ORG} said {PER} had resigned .",
    "the old apple orchard near {LOC} was sold to {ORG} .",
    "{PER} met {TITLE} {PER} in {LOC} on {DAY} .",
    "did {PER} really fly to {LOC} on {DAY} ?",
    "{TITLE} {PER} of {ORG} praised the new port in {LOC} .",
)
# Sentences without entities, so the model also learns to predict nothing; several reuse the
# lowercase or capitalised look-alikes of ambiguous entity words.
_NO_ENTITY_TEMPLATES = (
    "the weather was mild and nobody went outside .",
    "she ate an apple before the meeting on {DAY} .",
    "we ordered roast turkey for dinner in {MONTH} .",
    "the meeting was moved to {DAY} morning .",
    "prices rose {NUM} percent in {MONTH} .",
    "it may rain again on {DAY} , the forecast says .",
    "nobody expected the results to be so good this year .",
)
_PREFIXES = (
    "yesterday ,",
    "on {DAY} ,",
    "in {MONTH} ,",
    "according to local reports ,",
    "as expected ,",
    "after months of talks ,",
    "in a statement released on {DAY} ,",
    "according to {ORG} ,",
    "speaking in {LOC} ,",
)
_SUFFIXES = (
    ", officials said",
    "on {DAY}",
    "despite the heavy rain",
    "after a long delay",
    "for the second time this year",
    ", according to {ORG}",
    ", sources in {LOC} said",
    "in front of a small crowd",
    "earlier in {MONTH}",
)
_NO_ENTITY_SHARE = 0.07
_PREFIX_SHARE = 0.3
_SUFFIX_SHARE = 0.3
# Used when a split would otherwise miss an entity type (only possible for tiny splits).
_ALL_TYPES_TEMPLATE = "{PER} told reporters in {LOC} that {ORG} would expand ."

Entity = tuple[str, ...]
Sentence = tuple[list[str], list[str]]


# --------------------------------------------------------------------------- gazetteers


def _sample(pool: Iterable[str], k: int, rng: random.Random) -> list[str]:
    items = sorted(set(pool))
    return sorted(rng.sample(items, min(k, len(items))))


def _gazetteers() -> dict[str, list[Entity]]:
    # A fixed inventory, independent of the seed: the seed picks which entries are held out
    # and how sentences are drawn, while the set of names stays the same for every demo.
    rng = random.Random(20240601)
    per = list(_sample(_FIRST, 12, rng))
    per += _sample((f"{f} {la}" for f in _FIRST for la in _LAST), 110, rng)
    per += _sample((f"{f} {p} {la}" for f in _FIRST for p in _PARTICLES for la in _LAST), 18, rng)
    per += _sample(
        (f"{f} {g} {la}" for f in _FIRST for g in _FIRST if f != g for la in _LAST), 14, rng
    )

    places = list(_CITIES) + [f"{p} {s}" for p in _PLACE_PREFIXES for s in _PLACE_STEMS]
    loc = list(_sample(_CITIES, 24, rng))
    loc += _sample((f"{p} {s}" for p in _PLACE_PREFIXES for s in _PLACE_STEMS), 40, rng)
    loc += _sample((f"{s} {x}" for s in _CITIES + _PLACE_STEMS for x in _PLACE_SUFFIXES), 30, rng)
    loc += _sample((pat.format(s) for pat in _PLACE_OF for s in _PLACE_STEMS + _CITIES), 12, rng)

    org = list(_sample(_ORG_STEMS, 10, rng))
    org += _sample((f"{s} {x}" for s in _ORG_STEMS for x in _ORG_SUFFIXES), 90, rng)
    org += _sample((pat.format(p) for pat in _ORG_OF_PLACE for p in places), 28, rng)

    gaz = {"LOC": loc, "ORG": org, "PER": per}
    out: dict[str, list[Entity]] = {}
    for etype in ENTITY_TYPES:
        ambiguous = set(_AMBIGUOUS[etype])
        names = [n for n in dict.fromkeys(gaz[etype]) if n not in ambiguous]
        out[etype] = [tuple(n.split()) for n in names]
    return out


def _split_entries(
    gaz: dict[str, list[Entity]], rng: random.Random
) -> tuple[dict[str, list[Entity]], dict[str, list[Entity]]]:
    seen: dict[str, list[Entity]] = {}
    held: dict[str, list[Entity]] = {}
    for etype in ENTITY_TYPES:
        entries = list(gaz[etype])
        rng.shuffle(entries)
        k = round(len(entries) * _HELDOUT_ENTRIES)
        held[etype], seen[etype] = sorted(entries[:k]), sorted(entries[k:])
    return seen, held


# --------------------------------------------------------------------------- sentences


def _has_entity_slot(template: str) -> bool:
    return any(f"{{{t}}}" in template for t in ENTITY_TYPES)


class _Sampler:
    def __init__(
        self,
        split: str,
        seen: dict[str, list[Entity]],
        held: dict[str, list[Entity]],
        rng: random.Random,
    ) -> None:
        self.split = split
        self.seen = seen
        self.held = held
        self.rng = rng
        self.ambiguous = {t: [tuple(s.split()) for s in _AMBIGUOUS[t]] for t in ENTITY_TYPES}

    def entity(self, etype: str) -> Entity:
        r = self.rng.random()
        if r < _AMBIGUOUS_SHARE:
            return self.rng.choice(self.ambiguous[etype])
        if self.split != "train" and r < _AMBIGUOUS_SHARE + _HELDOUT_SHARE:
            return self.rng.choice(self.held[etype])
        return self.rng.choice(self.seen[etype])

    def fill(self, template: str) -> Sentence:
        tokens: list[str] = []
        tags: list[str] = []
        for piece in template.split():
            slot = piece[1:-1] if piece.startswith("{") and piece.endswith("}") else None
            if slot in ENTITY_TYPES:
                ent = self.entity(slot)
                tokens += ent
                tags += [f"B-{slot}"] + [f"I-{slot}"] * (len(ent) - 1)
            elif slot is not None:
                tokens.append(self.rng.choice(_FILLERS[slot]))
                tags.append("O")
            else:
                tokens.append(piece)
                tags.append("O")
        return tokens, tags

    def sentence(self) -> Sentence:
        rng = self.rng
        empty = rng.random() < _NO_ENTITY_SHARE
        body = rng.choice(_NO_ENTITY_TEMPLATES if empty else _TEMPLATES)
        # A clause glued onto a sentence without entities must not bring one in.
        prefixes = [p for p in _PREFIXES if not (empty and _has_entity_slot(p))]
        suffixes = [s for s in _SUFFIXES if not (empty and _has_entity_slot(s))]
        prefix = rng.choice(prefixes) if rng.random() < _PREFIX_SHARE else ""
        suffix = rng.choice(suffixes) if rng.random() < _SUFFIX_SHARE else ""
        head, end = body.rsplit(" ", 1)
        for template in (f"{prefix} {head} {suffix} {end}", f"{head} {end}"):
            tokens, tags = self.fill(" ".join(template.split()))
            if _MIN_LEN <= len(tokens) <= _MAX_LEN:
                return tokens, tags
        return self.sentence()


def _make_split(
    split: str,
    n: int,
    seen: dict[str, list[Entity]],
    held: dict[str, list[Entity]],
    rng: random.Random,
) -> list[Sentence]:
    sampler = _Sampler(split, seen, held, rng)
    sentences = [sampler.sentence() for _ in range(n)]
    present = {tag[2:] for _, tags in sentences for tag in tags if tag != "O"}
    if not present.issuperset(ENTITY_TYPES):
        sentences[0] = sampler.fill(_ALL_TYPES_TEMPLATE)
    return sentences


def build_demo_splits(
    *, n_train: int = 1500, n_val: int = 300, n_test: int = 300, seed: int = 0
) -> dict[str, list[Sentence]]:
    """The sentences of each split as (tokens, tags), without touching the disk.

    Exposed so tests and notebooks can look at the data the same way the writer makes it.
    """
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    for split, n in sizes.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n_{split} must be a positive integer, got {n!r}")
    rng = random.Random(seed)
    seen, held = _split_entries(_gazetteers(), rng)
    # One generator per split, derived from the seed, so that changing n_train does not change
    # the val and test sentences.
    seeds = {split: rng.getrandbits(64) for split in SPLITS}
    return {
        split: _make_split(split, sizes[split], seen, held, random.Random(seeds[split]))
        for split in SPLITS
    }


# --------------------------------------------------------------------------- files


def _required_files(root: Path) -> list[Path]:
    files = [root / "tags.txt"]
    for split in SPLITS:
        files += [root / split / "sentences.txt", root / split / "tags.txt"]
    return files


def is_complete(out_dir: str | Path) -> bool:
    """Whether a folder already holds a whole data set, ours (marker) or a real one (all files).

    The marker is written last inside a temp folder that is renamed into place in one step, so
    its presence means the generation finished.
    """
    root = Path(out_dir)
    if (root / MARKER).is_file():
        return True
    return all(p.is_file() for p in _required_files(root))


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(f"{line}\n" for line in lines))


def _write_dataset(root: Path, splits: dict[str, list[Sentence]], meta: dict) -> None:
    _write_lines(root / "tags.txt", TAGS)
    for split, sentences in splits.items():
        _write_lines(root / split / "sentences.txt", [" ".join(t) for t, _ in sentences])
        _write_lines(root / split / "tags.txt", [" ".join(g) for _, g in sentences])
    _write_lines(root / MARKER, [json.dumps(meta, sort_keys=True)])


def generate_demo_data(
    out_dir: str | Path,
    *,
    n_train: int = 1500,
    n_val: int = 300,
    n_test: int = 300,
    seed: int = 0,
) -> Path:
    """Make the demo data set in ``out_dir`` unless a complete one is already there.

    Several trials may start at once and all ask for the same folder, and a run may be killed
    mid-write; so the files are written to a temp folder beside ``out_dir`` and renamed into
    place in one step. Whoever loses the rename race drops its copy and uses the winner's. An
    existing complete data set is returned untouched, whatever seed and sizes made it: the
    arguments describe what to make, not what to check (see ``demo_data.json`` for those).
    """
    out = Path(out_dir)
    if is_complete(out):
        return out
    splits = build_demo_splits(n_train=n_train, n_val=n_val, n_test=n_test, seed=seed)
    meta = {
        "generator": "hpsearch.demo_data",
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    # os.mkdir rather than tempfile.mkdtemp: mkdtemp's 0700 mode would stick to the data set.
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.mkdir(tmp)
    try:
        _write_dataset(tmp, splits, meta)
        try:
            # Atomic; replaces an empty folder but fails on a non-empty one, which is how a
            # concurrent winner (or an unrelated folder) is noticed.
            os.replace(tmp, out)
        except OSError as err:
            if is_complete(out):
                return out
            raise FileExistsError(
                f"{out} exists and is not a complete data set; remove it or pick another folder"
            ) from err
        return out
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
