"""Word lists the task templates draw from.

All words are common lowercase English words, so a byte-level BPE trained on English prose
(GPT-2's, or one trained on C4) should need only one or two tokens for each, leading space
included.
None of the items is a word the templates themselves use ("list", "bits", "question", "answer",
"number", "word", "text", "bracket" ...), so a prompt parses without ambiguity.
"""

from __future__ import annotations

# Items of List Recall / Segment Counting lists and of Copying spans: concrete nouns.
ITEMS: tuple[str, ...] = (
    "apple", "river", "chair", "stone", "horse", "cloud", "bread", "glass", "tiger", "plate",
    "window", "garden", "candle", "mirror", "pencil", "basket", "bottle", "jacket", "ladder", "rabbit",
    "button", "carpet", "dragon", "engine", "forest", "guitar", "hammer", "island", "kettle", "lemon",
    "monkey", "needle", "orange", "pillow", "rocket", "silver", "tomato", "violin", "wallet", "anchor",
    "banana", "camera", "desert", "feather", "finger", "helmet", "jungle", "kitten", "lizard", "magnet",
    "napkin", "oyster", "parrot", "pepper", "puzzle", "ribbon", "saddle", "spider", "turtle", "valley",
    "wagon", "zebra", "bridge", "castle", "cherry", "cotton", "donkey", "eagle", "flower", "goose",
    "honey", "iron", "jelly", "knife", "lamp", "maple", "nest", "ocean", "piano", "queen",
    "robot", "sugar", "table", "umbrella", "village", "whale", "yacht", "acorn", "beach", "coin",
    "daisy", "egg", "fox", "grape", "hat", "ink", "jar", "key", "leaf", "moon",
    "nut", "owl", "pear", "quilt", "rose", "salt", "tent", "van", "wolf", "bell",
    "clock", "drum", "flag", "gate", "kite", "lion", "map", "nail", "oven", "pig",
    "ring", "ship", "train", "vase", "wheel", "bear", "cake", "duck", "frog", "goat",
)

# Copying filler: short sentences from these parts (see copying.py for the templates).
PEOPLE: tuple[str, ...] = (
    "farmer", "teacher", "baker", "sailor", "doctor", "painter", "child", "driver", "singer", "writer",
    "student", "pilot", "hunter", "dancer", "miner", "nurse", "guard", "cook", "poet", "king",
)
ADJECTIVES: tuple[str, ...] = (
    "old", "young", "quiet", "tall", "small", "happy", "tired", "brave", "kind", "busy",
    "calm", "clever", "gentle", "proud", "shy", "wise", "angry", "careful", "cheerful", "patient",
)
VERBS: tuple[str, ...] = (
    "saw", "found", "carried", "painted", "washed", "moved", "opened", "cleaned", "fixed", "dropped",
    "noticed", "lifted", "pushed", "bought", "sold", "hid", "kept", "lost", "held", "watched",
)
PLACES: tuple[str, ...] = (
    "market", "harbor", "school", "station", "kitchen", "library", "square", "barn", "shop", "hill",
    "field", "road", "park", "hall", "yard", "farm", "city", "town", "shore", "camp",
)
TIMES: tuple[str, ...] = ("morning", "evening", "afternoon", "night", "spring", "summer", "autumn", "winter")

# Words the templates use; kept here so the invariant "no item is a template word" is checkable.
TEMPLATE_WORDS: frozenset[str] = frozenset(
    {
        "read", "the", "lists", "list", "below", "question", "answer", "in", "that", "contains",
        "which", "word", "is", "number", "how", "many", "times", "does", "appear", "to", "bits",
        "bit", "what", "xor", "of", "first", "text", "copy", "words", "inside", "bracket",
    }
)
