"""Does a caption mention a concept? Word lists for the 80 MS COCO 2017 categories and the 8 shapes-world shapes.

Matching rule (one pass over the caption, the same for every concept):

1. Normalise: lower-case; every character that is not a letter or digit becomes a space (so ``"Hot-dog"``
   -> ``hot dog``, ``"dog's"`` -> ``dog s``); split into words.
2. Every surface form of every concept (``SYNONYMS`` plus generated plurals) and every entry of
   ``COMPOUNDS`` is a word sequence. Scanning left to right, at each word take the **longest** sequence that
   starts there, credit its concepts, and continue after it; a word no sequence starts at is skipped.
3. ``mentions(text, concept)`` is true when some matched sequence credits ``concept``.

Consequences: matching is on whole words only ("cart" and "carrot" do not mention car, "scar" nothing);
plurals count ("stars" -> star, "buses" -> bus, "knives" -> knife, "people" -> person); and a longer name
hides the shorter names inside it: **"hot dog" mentions hot dog, not dog**; "teddy bear" mentions teddy bear,
not bear; "baseball bat" mentions baseball bat, not sports ball; "microwave oven" mentions microwave, not
oven. ``COMPOUNDS`` lists phrases whose head word is not the object: "baseball player" mentions person (not
sports ball), "baseball cap" nothing, "baby elephant" elephant (not person), "toilet paper" nothing.

Known limits: no part-of-speech or sense disambiguation ("an orange cat" mentions orange, "a tie game"
mentions tie); negation is not detected ("no dogs" mentions dog). The bare words "glove" and "glass" are
not counted (baseball glove / wine glass need "mitt", "baseball glove", "wine glass", ...), nor is "pitcher"
(a water jug as often as a person; "baseball pitcher" does count for person).

A concept that is not in ``SYNONYMS`` is matched by its own name and its plural (the same rule applies).
"""
from __future__ import annotations

import unicodedata
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from functools import lru_cache

from kneuron.engine.errors import KneuronError

#: captions whose mentions an index keeps (least recently used out)
SEEN_TEXTS = 65536

# Surface forms in the singular (plurals are generated; irregular ones are in IRREGULAR_PLURALS).
# The first entry is the COCO / shapes-world category name itself.
COCO_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("person", "people", "man", "woman", "boy", "girl", "child", "kid", "player", "guy", "lady",
               "baby", "toddler", "teenager", "teen", "adult", "gentleman", "human", "someone", "somebody",
               "skier", "snowboarder", "surfer", "skateboarder", "rider", "cyclist", "biker", "pedestrian",
               "crowd", "chef", "cook", "worker", "policeman", "policewoman", "officer", "soldier", "batter",
               "catcher", "umpire", "spectator", "passenger", "tourist", "student", "youngster"),
    "bicycle": ("bicycle", "bike", "tandem bike"),
    "car": ("car", "automobile", "sedan", "suv", "taxi", "taxicab", "van", "minivan", "jeep"),
    "motorcycle": ("motorcycle", "motorbike", "motor bike", "motor cycle", "scooter", "moped", "dirt bike",
                   "dirtbike"),
    "airplane": ("airplane", "aeroplane", "air plane", "plane", "jet", "aircraft", "airliner", "jetliner",
                 "jumbo jet"),
    "bus": ("bus", "double decker", "double decker bus", "trolley bus"),
    "train": ("train", "locomotive", "tram", "streetcar", "train car"),
    "truck": ("truck", "lorry", "pickup", "pickup truck", "semi truck", "firetruck"),
    "boat": ("boat", "ship", "sailboat", "yacht", "kayak", "canoe", "ferry", "raft", "rowboat", "motorboat",
             "speedboat", "gondola"),
    "traffic light": ("traffic light", "stop light", "stoplight", "traffic signal"),
    "fire hydrant": ("fire hydrant", "hydrant", "fireplug"),
    "stop sign": ("stop sign",),
    "parking meter": ("parking meter",),
    "bench": ("bench",),
    "bird": ("bird", "pigeon", "seagull", "gull", "duck", "goose", "swan", "parrot", "owl", "eagle", "hawk",
             "crow", "sparrow", "robin", "pelican", "heron", "flamingo", "penguin", "rooster", "hen"),
    "cat": ("cat", "kitten", "kitty"),
    "dog": ("dog", "puppy", "pup", "doggy", "doggie"),
    "horse": ("horse", "pony", "foal", "stallion", "mare", "colt"),
    "sheep": ("sheep", "lamb", "ram", "ewe"),
    "cow": ("cow", "cattle", "bull", "calf", "ox"),
    "elephant": ("elephant",),
    "bear": ("bear", "grizzly"),
    "zebra": ("zebra",),
    "giraffe": ("giraffe",),
    "backpack": ("backpack", "back pack", "rucksack", "knapsack"),
    "umbrella": ("umbrella", "parasol"),
    "handbag": ("handbag", "hand bag", "purse", "pocketbook"),
    "tie": ("tie", "necktie", "bow tie", "bowtie"),
    "suitcase": ("suitcase", "suit case", "luggage"),
    "frisbee": ("frisbee", "flying disc"),
    "skis": ("skis", "ski"),
    "snowboard": ("snowboard", "snow board"),
    "sports ball": ("sports ball", "ball", "soccer ball", "tennis ball", "baseball", "football", "basketball",
                    "volleyball", "softball"),
    "kite": ("kite",),
    "baseball bat": ("baseball bat", "bat"),
    "baseball glove": ("baseball glove", "baseball mitt", "mitt", "catcher s mitt", "catchers mitt"),
    "skateboard": ("skateboard", "skate board"),
    "surfboard": ("surfboard", "surf board", "boogie board", "bodyboard", "body board"),
    "tennis racket": ("tennis racket", "racket", "racquet", "tennis racquet"),
    "bottle": ("bottle",),
    "wine glass": ("wine glass", "wineglass"),
    "cup": ("cup", "mug", "teacup", "tea cup", "coffee cup"),
    "fork": ("fork",),
    "knife": ("knife",),
    "spoon": ("spoon",),
    "bowl": ("bowl",),
    "banana": ("banana",),
    "apple": ("apple",),
    "sandwich": ("sandwich", "burger", "hamburger", "cheeseburger", "sub sandwich", "panini"),
    "orange": ("orange",),
    "broccoli": ("broccoli",),
    "carrot": ("carrot",),
    "hot dog": ("hot dog", "hotdog", "frankfurter", "corn dog", "chili dog"),
    "pizza": ("pizza",),
    "donut": ("donut", "doughnut"),
    "cake": ("cake", "cupcake", "cup cake", "cheesecake"),
    "chair": ("chair", "armchair", "stool", "high chair", "highchair"),
    "couch": ("couch", "sofa", "loveseat", "love seat", "settee"),
    "potted plant": ("potted plant", "plant", "houseplant", "house plant", "flowerpot", "flower pot",
                     "planter"),
    "bed": ("bed",),
    "dining table": ("dining table", "table", "dinner table", "kitchen table"),
    "toilet": ("toilet", "urinal"),
    "tv": ("tv", "television", "television set", "tv set", "monitor", "computer monitor", "flat screen"),
    "laptop": ("laptop", "laptop computer", "notebook computer", "macbook"),
    "mouse": ("mouse", "computer mouse"),
    "remote": ("remote", "remote control", "controller", "game controller", "wii remote"),
    "keyboard": ("keyboard",),
    "cell phone": ("cell phone", "cellphone", "phone", "mobile phone", "smartphone", "smart phone", "iphone",
                   "telephone"),
    "microwave": ("microwave", "microwave oven"),
    "oven": ("oven", "stove", "stovetop"),
    "toaster": ("toaster", "toaster oven"),
    "sink": ("sink",),
    "refrigerator": ("refrigerator", "fridge", "freezer", "refridgerator"),
    "book": ("book",),
    "clock": ("clock",),
    "vase": ("vase",),
    "scissors": ("scissors", "scissor", "shears"),
    "teddy bear": ("teddy bear", "teddybear", "teddy", "stuffed bear", "stuffed animal"),
    "hair drier": ("hair drier", "hair dryer", "hairdryer", "hairdrier", "blow dryer", "blow drier"),
    "toothbrush": ("toothbrush", "tooth brush"),
}

SHAPES_SYNONYMS: dict[str, tuple[str, ...]] = {
    shape: (shape,) for shape in ("circle", "square", "triangle", "star", "cross", "heart", "hexagon", "diamond")
}

SYNONYMS: dict[str, tuple[str, ...]] = {**COCO_SYNONYMS, **SHAPES_SYNONYMS}

IRREGULAR_PLURALS: dict[str, tuple[str, ...]] = {
    "person": ("persons",), "people": (), "man": ("men",), "woman": ("women",), "child": ("children",),
    "gentleman": ("gentlemen",), "policeman": ("policemen",), "policewoman": ("policewomen",),
    "human": ("humans",), "crowd": ("crowds",), "someone": (), "somebody": (),
    "mouse": ("mice",), "knife": ("knives",), "goose": ("geese",), "ox": ("oxen",),
    "calf": ("calves",), "sheep": (), "cattle": (), "aircraft": (), "luggage": (), "broccoli": (),
    "skis": (), "scissors": (), "shears": (), "bus": ("buses", "busses"),
}

# Phrases whose words would otherwise be read as a different object: phrase -> concepts it mentions.
_SPORT_BALLS = ("baseball", "football", "basketball", "volleyball", "softball")
_SPORT_PEOPLE = ("player", "players", "pitcher", "pitchers", "batter", "batters", "catcher", "catchers",
                 "coach", "coaches", "fan", "fans", "fielder", "fielders")
_SPORT_PLACES = ("field", "fields", "court", "courts", "game", "games", "match", "team", "teams", "uniform",
                 "uniforms", "stadium", "pitch", "diamond", "hoop", "hoops", "net", "jersey", "jerseys", "cap",
                 "caps", "hat", "hats", "helmet", "helmets", "practice", "league", "park", "shoes")
_SKI_NOT_SKIS = ("slope", "slopes", "lift", "lifts", "resort", "resorts", "lodge", "trail", "trails", "run",
                 "runs", "area", "hill", "hills", "course", "jacket", "jackets", "suit", "suits", "gear",
                 "boots", "goggles", "mask", "masks", "pole", "poles", "glove", "gloves")
_ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe")

COMPOUNDS: dict[str, tuple[str, ...]] = {
    **{f"{ball} {noun}": ("person",) for ball in _SPORT_BALLS for noun in _SPORT_PEOPLE},
    **{f"{ball} {noun}": () for ball in _SPORT_BALLS for noun in _SPORT_PLACES},
    **{f"ski {noun}": () for noun in _SKI_NOT_SKIS},
    "ski instructor": ("person",), "ski instructors": ("person",),
    **{f"baby {form}": (animal,) for animal in _ANIMALS
       for form in (animal, *IRREGULAR_PLURALS.get(animal, (animal + "s",)))},
    "jet ski": ("boat",), "jet skis": ("boat",), "toilet paper": (), "toilet brush": (), "bus stop": (),
    "flower bed": (), "table cloth": ("dining table",), "tablecloth": ("dining table",),
}


def normalise(text: str) -> list[str]:
    """Case-folded words of ``text`` (NFKC, then casefold): runs of letters, marks and digits of any script;
    every other character (punctuation, space, underscore) separates words. ``"Café"`` -> ``["café"]``."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch if unicodedata.category(ch)[0] in "LMN" else " " for ch in folded).split()


def plurals(form: str) -> tuple[str, ...]:
    """Plural forms of a (possibly multi-word) surface form; the last word is inflected."""
    if form in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[form]
    head, _, last = form.rpartition(" ")
    prefix = f"{head} " if head else ""
    if last in IRREGULAR_PLURALS:
        return tuple(prefix + p for p in IRREGULAR_PLURALS[last])
    if last.endswith(("s", "x", "z", "ch", "sh")):
        return (f"{prefix}{last}es",)
    if len(last) > 1 and last.endswith("y") and last[-2] not in "aeiou":
        return (f"{prefix}{last[:-1]}ies",)
    return (f"{prefix}{last}s",)


def _concept_key(concept: str) -> str:
    return " ".join(normalise(concept.replace("_", " ")))


class MentionIndex:
    """Longest-match phrase index over the surface forms of a set of concepts.

    ``concepts_in(text)`` returns the set of concepts a caption mentions (rule in the module docstring).
    """

    def __init__(self, synonyms: Mapping[str, Iterable[str]], compounds: Mapping[str, Iterable[str]]) -> None:
        self.phrases: dict[tuple[str, ...], frozenset[str]] = {}
        for concept, forms in synonyms.items():
            key = _concept_key(concept)
            for form in forms:
                for surface in (form, *plurals(form)):
                    words = tuple(normalise(surface))
                    self.phrases[words] = self.phrases.get(words, frozenset()) | {key}
        for phrase, concepts in compounds.items():
            self.phrases[tuple(normalise(phrase))] = frozenset(_concept_key(c) for c in concepts)
        self.max_len = max((len(p) for p in self.phrases), default=0)
        self.concepts = frozenset(_concept_key(c) for c in synonyms)
        self._seen: OrderedDict[str, frozenset[str]] = OrderedDict()  # text -> concepts, `SEEN_TEXTS` at most

    def concepts_in(self, text: str) -> set[str]:
        """The concepts ``text`` mentions (longest phrase first, left to right); a text seen before is looked up
        (an evaluation asks about the same caption once per concept and per metric)."""
        found = self._seen.get(text)
        if found is None:
            found = self._seen[text] = frozenset(self._scan(text))
            if len(self._seen) > SEEN_TEXTS:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(text)
        return set(found)

    def _scan(self, text: str) -> set[str]:
        words = normalise(text)
        found: set[str] = set()
        i = 0
        while i < len(words):
            for length in range(min(self.max_len, len(words) - i), 0, -1):
                hit = self.phrases.get(tuple(words[i:i + length]))
                if hit is not None:
                    found |= hit
                    i += length
                    break
            else:
                i += 1
        return found


@lru_cache(maxsize=64)
def _index_for(extra_concept: str | None) -> MentionIndex:
    synonyms: dict[str, tuple[str, ...]] = dict(SYNONYMS)
    if extra_concept is not None:
        synonyms[extra_concept] = (extra_concept,)
    return MentionIndex(synonyms, COMPOUNDS)


def _index_and_key(concept: str) -> tuple[MentionIndex, str]:
    key = _concept_key(concept)
    if not key:
        raise KneuronError(f"empty concept name {concept!r}")
    known = key in _index_for(None).concepts
    return _index_for(None if known else key), key


def concepts_mentioned(text: str) -> set[str]:
    """All known concepts (keys of ``SYNONYMS``) that ``text`` mentions."""
    return _index_for(None).concepts_in(text)


def mentions(text: str, concept: str) -> bool:
    """True when caption ``text`` mentions ``concept`` (a COCO or shapes-world name, ``_``/``-`` = space)."""
    index, key = _index_and_key(concept)
    return key in index.concepts_in(text)


def mention_rate(texts: Iterable[str], concept: str) -> float:
    """Fraction of ``texts`` that mention ``concept``; NaN for no texts."""
    index, key = _index_and_key(concept)
    hits = [key in index.concepts_in(text) for text in texts]
    return float(sum(hits) / len(hits)) if hits else float("nan")
