"""Concept mention detection in captions: whole words, plurals, synonyms, longest-match compounds."""
from __future__ import annotations

import math

import pytest

from kneuron.engine.errors import KneuronError
from kneuron.engine.eval.mentions import (
    COCO_SYNONYMS,
    SHAPES_SYNONYMS,
    SYNONYMS,
    concepts_mentioned,
    mention_rate,
    mentions,
    plurals,
)

# The 80 MS COCO 2017 instance categories, written out independently of the module.
COCO_80 = """person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign
parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase
frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard tennis_racket bottle
wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut cake chair
couch potted_plant bed dining_table toilet tv laptop mouse remote keyboard cell_phone microwave oven toaster sink
refrigerator book clock vase scissors teddy_bear hair_drier toothbrush""".split()
SHAPES_8 = ["circle", "square", "triangle", "star", "cross", "heart", "hexagon", "diamond"]


def test_vocabulary_covers_coco_and_shapes() -> None:
    assert sorted(COCO_SYNONYMS) == sorted(name.replace("_", " ") for name in COCO_80)
    assert sorted(SHAPES_SYNONYMS) == sorted(SHAPES_8)
    assert len(SYNONYMS) == 88
    for concept in SYNONYMS:  # every category is found by its own name and its plural
        assert mentions(f"there is a {concept} here", concept), concept
        for plural in plurals(concept):
            assert mentions(f"several {plural} here", concept), plural
    for shape in SHAPES_8:  # shapes have no synonyms beyond plurals
        assert SHAPES_SYNONYMS[shape] == (shape,)


def test_no_surface_form_belongs_to_two_concepts() -> None:
    owner: dict[str, str] = {}
    for concept, forms in SYNONYMS.items():
        for form in forms:
            for surface in (form, *plurals(form)):
                assert owner.setdefault(surface, concept) == concept, (surface, owner[surface], concept)


@pytest.mark.parametrize(
    ("text", "concept", "expected"),
    [
        # whole words only
        ("A shopping cart in a parking lot", "car", False),
        ("a carrot cake", "car", False),
        ("A red car parked by the curb.", "car", True),
        ("CARS on a highway", "car", True),
        ("a scarf on a chair", "car", False),
        ("the cattle are grazing", "cat", False),
        # plurals, regular and irregular
        ("three stars and a circle", "star", True),
        ("a starfish on the sand", "star", False),
        ("two crosses", "cross", True),
        ("several buses at a depot", "bus", True),
        ("knives on a cutting board", "knife", True),
        ("a flock of geese", "bird", True),
        ("puppies in a basket", "dog", True),
        ("two wine glasses on a table", "wine glass", True),
        # synonyms
        ("Two women and a child walk down the street", "person", True),
        ("a group of people", "person", True),
        ("a man on a motorbike", "motorcycle", True),
        ("a cat sleeping on the sofa", "couch", True),
        ("a family watching television", "tv", True),
        ("a woman talking on her cellphone", "cell phone", True),
        ("a woman talking on her phone", "cell phone", True),
        ("a kitchen table with plates", "dining table", True),
        # multi-word names and the longest-match rule
        ("a hot dog with mustard", "hot dog", True),
        ("a hot dog with mustard", "dog", False),
        ("a hot-dog stand", "hot dog", True),
        ("a hotdog and a dog", "dog", True),
        ("a teddy bear on a bed", "teddy bear", True),
        ("a teddy bear on a bed", "bear", False),
        ("a brown bear in the woods", "bear", True),
        ("a traffic light at an intersection", "traffic light", True),
        ("light traffic on the highway", "traffic light", False),
        ("a boy swings a baseball bat", "baseball bat", True),
        ("a boy swings a baseball bat", "sports ball", False),
        ("a pitcher throws the baseball", "sports ball", True),
        ("a baseball player at home plate", "person", True),
        ("a baseball player at home plate", "sports ball", False),
        ("a man wearing a baseball cap", "sports ball", False),
        ("a microwave oven above the stove", "microwave", True),
        ("a microwave oven", "oven", False),
        ("a baby elephant with its mother", "elephant", True),
        ("a baby elephant with its mother", "person", False),
        ("a baby in a high chair", "person", True),
        ("a baby in a high chair", "chair", True),
        ("a skier on a ski slope", "skis", False),
        ("a pair of skis", "skis", True),
        ("the dog's ball", "dog", True),
        ("a roll of toilet paper", "toilet", False),
        # case, punctuation, concept-name spelling
        ("A STOP SIGN!", "stop sign", True),
        ("a stop-sign", "stop_sign", True),
        ("a potted plant", "Potted_Plant", True),
    ],
)
def test_mentions(text: str, concept: str, expected: bool) -> None:
    assert mentions(text, concept) is expected


def test_concepts_mentioned_and_unknown_concepts() -> None:
    assert concepts_mentioned("A man riding a motorbike past a bus stop with a hot dog stand") == {
        "person", "motorcycle", "hot dog"}
    assert concepts_mentioned("") == set()
    # a concept outside SYNONYMS is matched by its name and plural, whole words only
    assert mentions("two zebus in a field", "zebu") and not mentions("a zebulon", "zebu")
    # a name that is also a synonym of a known concept counts for both
    assert mentions("a plant in a pot", "plant") and mentions("a plant in a pot", "potted plant")
    with pytest.raises(KneuronError, match="empty concept name"):
        mentions("a cat", " _ ")


def test_mention_rate() -> None:
    texts = ["a dog on a couch", "two dogs", "a hot dog", "a cat", "DOG!"]
    assert mention_rate(texts, "dog") == pytest.approx(3 / 5)
    assert mention_rate(texts, "hot dog") == pytest.approx(1 / 5)
    assert mention_rate(iter(texts), "giraffe") == 0.0
    assert math.isnan(mention_rate([], "dog"))


def test_concepts_in_looks_up_a_seen_text_and_stays_bounded(monkeypatch) -> None:  # noqa: ANN001
    import importlib

    module = importlib.import_module("kneuron.engine.eval.mentions")
    monkeypatch.setattr(module, "SEEN_TEXTS", 2)
    index = module.MentionIndex({"cat": ("cat",), "dog": ("dog",)}, {})
    first = index.concepts_in("a cat and a dog")
    first.add("mutated")  # the caller's set is its own
    assert index.concepts_in("a cat and a dog") == {"cat", "dog"}
    for text in ("a cat", "a dog", "nothing"):
        assert index.concepts_in(text) == ({"cat"} if "cat" in text else {"dog"} if "dog" in text else set())
    assert len(index._seen) == 2
