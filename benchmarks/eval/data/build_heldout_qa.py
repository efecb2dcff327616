"""Builds evidence_qa_heldout.jsonl, a held-out token-attribution set (written for heta_fast, Apache-2.0).

Each example is a short passage (5-7 sentences) about one invented entity, written fresh for this set: no entity,
relation or sentence is taken from evidence_qa.jsonl. Exactly one sentence (the support) states the answer, and it
always sits in the middle of the passage: at least two distractor sentences come before it and at least one after
it. The distractors are about the same entity, and at least one of them names a competing value of the same kind
as the answer; the answer itself never occurs in the distractors or in the question. The question follows the
passage, and the cue repeats the support's words up to the answer, so a small model can complete it by copying
from the evidence. Segments are stored as character spans ``[start, end)`` of ``text``: support_span (the support
sentence), distractor_spans (the distractor sentences before it, then those after it, one span each) and
important_spans (the answer inside the support).

Run: python benchmarks/eval/data/build_heldout_qa.py  (rewrites evidence_qa_heldout.jsonl beside this script).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

# (id, distractor sentences before the support, support sentence, distractor sentences after it, question,
#  cue after "Answer:", answer, a competing value named in the distractors)
EXAMPLES = [
    ("ho01", ["The Saltwren is a small fishing boat moored in a quiet harbour on the east coast.",
              "Its narrow cabin has orange curtains and a brass lamp that hangs above the table."],
     "The hull of the Saltwren is painted purple.",
     ["Its owner takes it out before dawn to catch crabs near the rocks.",
      "In stormy weather the boat stays tied to the old stone pier with two thick ropes."],
     "What colour is the hull of the Saltwren?", "The hull of the Saltwren is painted", "purple", "orange"),
    ("ho02", ["Wendell Pike lives in a narrow flat above a shoe shop.",
              "He works nights at a printing press and sleeps until noon.",
              "His downstairs neighbour keeps a noisy goat in the yard behind the building."],
     "The only pet in Wendell's flat is a rabbit.",
     ["Wendell brings it fresh carrots from the market every Saturday morning.",
      "It sleeps in a cardboard box under his desk."],
     "What pet does Wendell have?", "The only pet in Wendell's flat is a", "rabbit", "goat"),
    ("ho03", ["Colette Ambery grew up in a house beside a railway line.",
              "Her mother was a tailor, and her older cousin became a sailor on cargo ships."],
     "Colette earns her living as a farmer.",
     ["She wakes before sunrise and drives an old tractor across the wet fields.",
      "In the evenings she plays cards with her neighbours.",
      "She has not taken a holiday in eleven years."],
     "How does Colette earn her living?", "Colette earns her living as a", "farmer", "tailor"),
    ("ho04", ["The Quillon Circus was founded by two brothers who trained horses.",
              "During its first summer it toured through Rome and Athens.",
              "Its great tent is striped in gold and white and can seat a thousand people."],
     "The Quillon Circus spends every winter in Madrid.",
     ["There the performers rest, sew new costumes and teach the young acrobats.",
      "In spring the wagons set off again along the coast."],
     "Where does the Quillon Circus spend the winter?", "The Quillon Circus spends every winter in", "Madrid",
     "Rome"),
    ("ho05", ["Rufus Tallow teaches maths at a school near the docks.",
              "As a boy he took drum lessons, and his aunt still plays the piano at weddings."],
     "The instrument Rufus plays in the town band is the flute.",
     ["He practises in the garden shed so that the neighbours are not disturbed.",
      "Twice a year he performs at the harbour festival.",
      "Afterwards he buys everyone in the band a hot pie."],
     "Which instrument does Rufus play in the town band?", "The instrument Rufus plays in the town band is the",
     "flute", "piano"),
    ("ho06", ["Barnaby is a shaggy sheepdog who lives on a hill farm with three cats.",
              "He sleeps in a wooden kennel next to the barn.",
              "The farmer's children give him crackers when they come home from school.",
              "His bowl is usually filled with rice and chicken."],
     "The treat Barnaby loves most is cheese.",
     ["He will sit perfectly still for a single slice."],
     "Which treat does Barnaby love most?", "The treat Barnaby loves most is", "cheese", "crackers"),
    ("ho07", ["The windmill at Ashby Cross was built by a family of millers long ago.",
              "Its sails are covered in white canvas, and its heavy door is made of oak."],
     "The great wheel inside the windmill is made of iron.",
     ["The wheel turns the millstones that grind wheat into flour.",
      "Visitors may climb a ladder to watch it move.",
      "On windy days the whole tower creaks and shakes."],
     "What is the great wheel inside the windmill made of?", "The great wheel inside the windmill is made of",
     "iron", "oak"),
    ("ho08", ["Imogen Castell works in a second-hand bookshop near the old cathedral.",
              "On weekdays she goes cycling along the river, and her brothers are keen golf players."],
     "The sport Imogen plays every Saturday is rugby.",
     ["Her team trains on a muddy field behind the brewery on Tuesday evenings.",
      "She broke her nose in a match last year but played again a month later."],
     "Which sport does Imogen play every Saturday?", "The sport Imogen plays every Saturday is", "rugby", "golf"),
    ("ho09", ["Alaric Dunmore has delivered the post in the hill village of Fennick for twenty years.",
              "He owns a small van, but it rarely leaves the garage behind his stone cottage near the chapel.",
              "His wife rides a bicycle to her job at the bank."],
     "Alaric carries the letters up the hill on a motorcycle.",
     ["In deep snow he walks instead and arrives late."],
     "How does Alaric carry the letters up the hill?", "Alaric carries the letters up the hill on a",
     "motorcycle", "van"),
    ("ho10", ["A House of Sparrows is a long novel about a family of clockmakers.",
              "It was translated into Dutch and Swedish soon after it appeared.",
              "The cover shows a small brown bird sitting on a clock."],
     "The novel was first written in Italian.",
     ["Its author spent ten years working on the book in a cold attic.",
      "Many schools now ask their pupils to read it."],
     "In which language was A House of Sparrows first written?", "The novel was first written in", "Italian",
     "Dutch"),
    ("ho11", ["The Pelican Inn stands at a crossroads outside the town of Harwick.",
              "Its dining room has five long tables and a wide fireplace."],
     "The Pelican Inn has eight bedrooms for guests.",
     ["Each room looks out over the apple orchard.",
      "Breakfast is served from seven until ten.",
      "The landlord keeps a parrot in the hall.",
      "On Fridays a fiddler plays in the bar."],
     "How many bedrooms does the Pelican Inn have?", "The Pelican Inn has", "eight", "five"),
    ("ho12", ["The flea market in Corvin Square began as a few tables of old books.",
              "Today it fills the whole square with stalls selling lamps, records and rugs.",
              "The fish market beside it opens on Tuesday mornings."],
     "The flea market is held every Sunday.",
     ["Most sellers arrive before dawn to set up their stalls.",
      "By noon the best bargains have usually gone."],
     "On which day is the flea market held?", "The flea market is held every", "Sunday", "Tuesday"),
    ("ho13", ["Hartley Park lies on the edge of an old mining town.",
              "Its main path is lined with tall pine trees, and a row of birches grows by the tennis courts."],
     "The tree in the centre of Hartley Park is an oak.",
     ["Couples often meet beneath it on summer evenings.",
      "A small wooden bench has been placed among its roots.",
      "The park gates are locked at nine every night."],
     "What kind of tree stands in the centre of Hartley Park?", "The tree in the centre of Hartley Park is an",
     "oak", "pine"),
    ("ho14", ["Cornelius Hatch keeps the lighthouse on Gannet Rock.",
              "He has lived there alone since his wife died.",
              "His brother sends him bottles of wine at Christmas, but he rarely opens them.",
              "He climbs the spiral stairs many times each night."],
     "Before bed, Cornelius always drinks a glass of milk.",
     ["A supply boat brings it to him from the mainland every Thursday."],
     "What does Cornelius drink before bed?", "Before bed, Cornelius always drinks a glass of", "milk", "wine"),
    ("ho15", ["The Crooked Spoon is a small restaurant beside the canal lock.",
              "Its menu changes with the seasons, and its desserts include plum tart and rice pudding."],
     "The Crooked Spoon is best known for its curry.",
     ["Customers often wait an hour for a table.",
      "The cook learned the recipe from her grandmother.",
      "She still writes the whole menu by hand each morning."],
     "What is the Crooked Spoon best known for?", "The Crooked Spoon is best known for its", "curry", "tart"),
    ("ho16", ["Otto Ferrand is a singer known for his deep voice.",
              "He recorded his first album in Prague and gave his largest concert in Lyon.",
              "He travels everywhere with a band of four musicians."],
     "Otto was raised in Berlin by his grandparents.",
     ["He still returns there each December to visit old friends.",
      "His latest songs are about the streets of his childhood."],
     "Where was Otto raised?", "Otto was raised in", "Berlin", "Prague"),
    ("ho17", ["The hat shop on Quarry Lane has been run by the same family for a century.",
              "Its windows display straw bonnets and caps of green felt.",
              "Behind the counter hangs a portrait of the founder."],
     "Every hat sold in the shop is lined with silk.",
     ["The lining is sewn by hand in a room upstairs.",
      "Each hat comes home in a round box tied with ribbon."],
     "What is every hat in the shop lined with?", "Every hat sold in the shop is lined with", "silk", "felt"),
    ("ho18", ["Stanmore Rovers is a football club from a small mill town.",
              "Its players wear yellow shirts, and its stadium has a statue of an owl above the gate."],
     "The mascot of Stanmore Rovers is a fox.",
     ["A volunteer in a costume dances on the pitch before each match.",
      "Children queue to have their photo taken with it.",
      "The club has not won a cup for thirty years."],
     "What animal is the mascot of Stanmore Rovers?", "The mascot of Stanmore Rovers is a", "fox", "owl"),
    ("ho19", ["A small railway carries walkers to the top of Mount Corran.",
              "Its carriages have brown leather seats and large windows.",
              "The little station at the bottom of the mountain is painted grey."],
     "The engine that pulls the carriages is bright pink.",
     ["It makes the climb four times a day in summer.",
      "In winter it stays in a shed near the station."],
     "What colour is the engine that pulls the carriages?", "The engine that pulls the carriages is bright",
     "pink", "grey"),
    ("ho20", ["Gideon Rask lives in a flat above a laundry.",
              "His father drove a bus for forty years, and his sister is a lawyer in the capital.",
              "At weekends Gideon plays darts at the local pub.",
              "He once hoped to become a singer."],
     "Gideon found work as a chef at a hotel by the sea.",
     ["He starts early so that breakfast is ready by seven.",
      "In the afternoons he walks along the beach."],
     "What work did Gideon find at the hotel?", "Gideon found work as a", "chef", "lawyer"),
    ("ho21", ["Castle Dunmarrow stands on a cliff above a grey sea.",
              "It was built by a duke who had three sons.",
              "Visitors enter through two heavy gates."],
     "Castle Dunmarrow has seven towers, each with a flag.",
     ["The tallest one holds a library of old maps.",
      "A narrow bridge links the castle to the village.",
      "Guides say that a ghost walks the walls at night."],
     "How many towers does Castle Dunmarrow have?", "Castle Dunmarrow has", "seven", "three"),
    ("ho22", ["The mobile library of Thornbury is an old bus filled with shelves.",
              "Its driver, a retired teacher, also mends the torn books.",
              "On Monday it parks outside the hospital."],
     "The bus visits the village school every Wednesday.",
     ["The pupils each borrow two books and return them a week later.",
      "In August the bus is closed while its old engine is repaired."],
     "On which day does the bus visit the village school?", "The bus visits the village school every",
     "Wednesday", "Monday"),
    ("ho23", ["The Kite Festival of Brackwater began when a fisherman flew a kite from his roof.",
              "Now hundreds of people come to fly kites over the dunes.",
              "A smaller music fair is held in the town each summer.",
              "Both events raise money for the lifeboat."],
     "The Kite Festival is held each spring.",
     ["The winds on the beach are strongest at that time of year."],
     "In which season does the Kite Festival take place?", "The Kite Festival is held each", "spring", "summer"),
    ("ho24", ["Pernell is a grey parrot that lives in the lobby of a seaside hotel.",
              "The owner of the hotel speaks Greek, and most guests talk to the bird in English."],
     "Pernell can sing three songs in French.",
     ["He sings them loudest when the dinner bell rings.",
      "He also whistles at anyone who wears a hat.",
      "At night a cloth is placed over his cage."],
     "In which language can Pernell sing songs?", "Pernell can sing three songs in", "French", "Greek"),
]


def _contains(haystack: str, word: str) -> bool:
    return re.search(re.escape(word), haystack, flags=re.IGNORECASE) is not None


def _build(eid, before, support, after, question, cue, answer, competitor) -> dict:
    assert len(before) >= 2 and len(after) >= 1, f"{eid}: the support must sit in the middle"
    assert 5 <= len(before) + 1 + len(after) <= 7, f"{eid}: a passage has 5-7 sentences"
    pre, post = " ".join(before), " ".join(after)
    passage = f"{pre} {support} {post}"
    assert 60 <= len(passage.split()) <= 110, f"{eid}: the passage has {len(passage.split())} words"
    text = f"{passage}\nQuestion: {question}"
    s0 = len(pre) + 1
    p0 = s0 + len(support) + 1
    spans = [(0, len(pre)), (s0, s0 + len(support)), (p0, p0 + len(post))]
    for (a, b), piece in zip(spans, (pre, support, post)):
        assert text[a:b] == piece, f"{eid}: a span does not cover its piece"
    assert all(b1 <= a2 for (_a1, b1), (a2, _b2) in zip(spans, spans[1:])), f"{eid}: spans overlap"
    # The cue repeats the support word for word up to the answer; the answer follows after one space.
    assert support.startswith(cue + " " + answer), f"{eid}: the cue is not the support's words up to the answer"
    assert re.fullmatch(r"[A-Za-z]+", answer), f"{eid}: the answer must be one word"
    assert len(re.findall(re.escape(answer), support)) == 1, f"{eid}: the answer must occur once in the support"
    for name, piece in (("distractors", pre + " " + post), ("question", question)):
        assert not _contains(piece, answer), f"{eid}: the answer occurs in the {name}"
    assert _contains(pre + " " + post, competitor), f"{eid}: the distractors name no competing value"
    a0 = s0 + support.index(cue + " " + answer) + len(cue) + 1
    assert text[a0 : a0 + len(answer)] == answer
    return {"id": eid, "text": text, "cue": f"\nAnswer: {cue}", "answer": answer,
            "support_span": list(spans[1]), "distractor_spans": [list(spans[0]), list(spans[2])],
            "important_spans": [[a0, a0 + len(answer)]], "support_position": "middle"}


def main() -> None:
    here = Path(__file__).resolve().parent
    rows = [_build(*e) for e in EXAMPLES]
    assert len({r["id"] for r in rows}) == len(rows) == 24
    out = here / "evidence_qa_heldout.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} examples to {out}")


if __name__ == "__main__":
    main()
