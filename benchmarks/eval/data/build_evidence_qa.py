"""Builds evidence_qa.jsonl and evidence_qa_paraphrase.jsonl (written for heta_fast, Apache-2.0).

Each example is a short passage about one invented entity. Exactly one sentence (the support) states the
answer; the other sentences (the distractor, one contiguous block before or after it) are about the same
entity and often name a competing value of the same kind. The question follows the passage, and the cue
repeats the support's words up to the answer, so a small model can complete it by copying from the
evidence. Segments are stored as character spans ``[start, end)`` of ``text`` (support_span,
distractor_span); the answer's words inside the support are the gold words (important_spans).

Run: python benchmarks/eval/data/build_evidence_qa.py  (rewrites both JSONL files beside this script).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

# (id, distractor sentences, support sentence, question, cue after "Answer:", answer, support first?)
EXAMPLES = [
    ("ev01", "Marta Kell grew up in a fishing town on the northern coast. She painted her kitchen yellow last spring "
     "and wears a blue coat every winter.", "Marta's favourite colour is green.",
     "What is Marta's favourite colour?", "Marta's favourite colour is", "green", False),
    ("ev02", "Tomas Hale works as a baker in a small village. He bakes rye bread on Mondays and sells apple pies at the "
     "market on Fridays.", "Tomas keeps a parrot named Biscuit.",
     "What is the name of Tomas's parrot?", "Tomas's parrot is named", "Biscuit", True),
    ("ev03", "Lena Vorst studied music at a college in the south. Her brother plays the trumpet in a brass band, and "
     "her mother taught piano for many years.", "Lena plays the cello in an orchestra.",
     "Which instrument does Lena play?", "Lena plays the", "cello", False),
    ("ev04", "The ship Morning Gull was built in a busy harbour. It once carried timber to the east and later took "
     "tourists around the bay.", "The Morning Gull has three masts.",
     "How many masts does the Morning Gull have?", "The Morning Gull has", "three", True),
    ("ev05", "Pavel Oren travels often for work. He spent a month in Lisbon last year and visits his cousin in Oslo "
     "every summer.", "Pavel lives in Vienna with his wife.",
     "Where does Pavel live?", "Pavel lives in", "Vienna", False),
    ("ev06", "Ines Marlow is known for her long walks by the river. She drinks tea in the morning and reads poetry "
     "before bed.", "Ines works as a dentist in the city hospital.",
     "What is Ines's job?", "Ines works as a", "dentist", True),
    ("ev07", "The village of Brenmoor sits at the foot of a hill. Its market sells cheese and wool, and its church "
     "bell rings at noon.", "Brenmoor is famous for its copper bridge.",
     "What is Brenmoor famous for?", "Brenmoor is famous for its", "copper", False),
    ("ev08", "Oskar Lind collects old stamps and coins. He once owned a red bicycle and still rides a green scooter to "
     "the shop.", "Oskar drives a silver truck to work.",
     "What colour is the truck Oskar drives?", "Oskar drives a", "silver", True),
    ("ev09", "Greta Holm learned to swim as a child. She played tennis at school and watches football with her "
     "father on Sundays.", "Greta's favourite sport is hockey.",
     "What is Greta's favourite sport?", "Greta's favourite sport is", "hockey", False),
    ("ev10", "The robot Unit Seven was designed in a university lab. It can lift small boxes and sort letters by "
     "size.", "Unit Seven runs on solar power.",
     "What does Unit Seven run on?", "Unit Seven runs on", "solar", True),
    ("ev11", "Hugo Brandt moved abroad after school. He learned a little Spanish on holiday and his grandmother spoke "
     "Polish at home.", "Hugo speaks fluent Japanese at work.",
     "Which language does Hugo speak at work?", "Hugo speaks fluent", "Japanese", False),
    ("ev12", "Clara Wess opened a small shop on the main street. The shop has a striped awning and a wooden door "
     "painted black.", "Clara's shop sells umbrellas.",
     "What does Clara's shop sell?", "Clara's shop sells", "umbrellas", True),
    ("ev13", "Anton Ruse likes to cook for his friends. He makes soup on cold days and grills fish in the summer.",
     "Anton's favourite dish is lasagna.",
     "What is Anton's favourite dish?", "Anton's favourite dish is", "lasagna", False),
    ("ev14", "The mountain Kessa Peak is covered in snow for most of the year. Climbers usually start from the "
     "western valley in June.", "Kessa Peak is 4200 metres high.",
     "How high is Kessa Peak?", "Kessa Peak is", "4200", True),
    ("ev15", "Nora Feld has two older brothers. Her older brother owns a grey horse, and her neighbour keeps "
     "chickens.", "Nora's dog is called Pepper.",
     "What is Nora's dog called?", "Nora's dog is called", "Pepper", False),
    ("ev16", "Felix Amar started running when he was forty. He runs along the canal and rests on a bench near the "
     "mill.", "Felix wakes up every day at six.",
     "At what time does Felix wake up?", "Felix wakes up every day at", "six", True),
    ("ev17", "The café Blue Lantern opened near the station. It serves coffee in tall glasses and plays jazz in the "
     "evening.", "The Blue Lantern is owned by a woman named Rosa.",
     "Who owns the Blue Lantern?", "The Blue Lantern is owned by a woman named", "Rosa", False),
    ("ev18", "Ida Paulsen is a keen gardener. She grows tomatoes along the fence and keeps roses by the gate.",
     "Ida's garden has a pond full of frogs.",
     "What does Ida's garden have?", "Ida's garden has a", "pond", True),
    ("ev19", "Jonas Kerr spent his childhood on a farm. He fed the goats every morning and fixed fences with his "
     "uncle.", "Jonas now teaches history at a high school.",
     "What subject does Jonas teach?", "Jonas now teaches", "history", False),
    ("ev20", "The novel The Glass Orchard is set in a small town. It follows two sisters who run a bakery after "
     "their father leaves.", "The Glass Orchard was written by Mira Santos.",
     "Who wrote The Glass Orchard?", "The Glass Orchard was written by", "Mira", True),
    ("ev21", "Leo Varga rides the train to the office. He carries a brown bag and reads the newspaper on the way.",
     "Leo's office is on the ninth floor.",
     "On which floor is Leo's office?", "Leo's office is on the", "ninth", False),
    ("ev22", "Sofia Lund likes to travel by boat. She crossed the lake in a canoe and once sailed to a small "
     "island.", "Sofia was born in Dublin.",
     "Where was Sofia born?", "Sofia was born in", "Dublin", True),
    ("ev23", "The factory on Mill Road closed for a week in March. Its workers repaired the roof and painted the "
     "walls white.", "The factory on Mill Road makes glass bottles.",
     "What does the factory on Mill Road make?", "The factory on Mill Road makes", "glass", False),
    ("ev24", "Rita Moss keeps a diary every night. She writes with a black pen and keeps her notes in a wooden "
     "box.", "Rita's favourite fruit is mango.",
     "What is Rita's favourite fruit?", "Rita's favourite fruit is", "mango", True),
    ("ev25", "Erik Solberg builds furniture in his garage. He sanded a pine table last week and painted a chair "
     "red.", "Erik's workshop smells of cedar.",
     "What does Erik's workshop smell of?", "Erik's workshop smells of", "cedar", False),
    ("ev26", "The island of Tarsa lies far from the mainland. Ferries arrive twice a week and fishermen sell their "
     "catch at the pier.", "Tarsa has a population of about 800 people.",
     "What is the population of Tarsa?", "Tarsa has a population of about", "800", True),
    ("ev27", "Mila Ostrova sings in a choir on Sundays. Her sister is a nurse and her uncle drives a taxi in the "
     "capital.", "Mila works as a pilot for a small airline.",
     "What is Mila's job?", "Mila works as a", "pilot", False),
    ("ev28", "Bruno Falk loves old films. He watches westerns on Friday nights and owns a poster of a famous "
     "detective.", "Bruno's cat is named Whiskers.",
     "What is Bruno's cat named?", "Bruno's cat is named", "Whiskers", True),
    ("ev29", "The school on Elm Street has a large library. Its students play football on the field and grow "
     "beans in the garden.", "The school on Elm Street was founded in 1921.",
     "When was the school on Elm Street founded?", "The school on Elm Street was founded in", "1921", False),
    ("ev30", "Dana Reyes enjoys painting landscapes. She paints with oils and hangs her pictures in the hallway.",
     "Dana drinks coffee with cinnamon every morning.",
     "What does Dana put in her coffee?", "Dana drinks coffee with", "cinnamon", True),
    ("ev31", "Karl Weber plays chess at the club. He beat his friend in twelve moves and keeps a chess clock on his "
     "desk.", "Karl's house has a blue door.",
     "What colour is the door of Karl's house?", "Karl's house has a", "blue", False),
    ("ev32", "The bakery Golden Crust is busy on weekends. It sells rolls, cakes and small pies filled with cherries.",
     "The Golden Crust closes at four in the afternoon.",
     "When does the Golden Crust close?", "The Golden Crust closes at", "four", True),
    ("ev33", "Vera Lukas loves the sea. She swims in the bay every morning and collects shells on the beach.",
     "Vera's car is a small electric one called Bolt.",
     "What is Vera's car called?", "Vera's car is a small electric one called", "Bolt", False),
    ("ev34", "Simon Price writes songs in his spare time. He plays them at weddings and once sang at a festival in "
     "the north.", "Simon's brother is named Arthur.",
     "What is the name of Simon's brother?", "Simon's brother is named", "Arthur", True),
    ("ev35", "The river Olme flows through three towns. Boats carry grain along it, and a stone mill stands near "
     "its bend.", "The river Olme ends in a large lake.",
     "Where does the river Olme end?", "The river Olme ends in a large", "lake", False),
    ("ev36", "Hanna Berg trains for marathons. She eats oatmeal before a race and wears white shoes.",
     "Hanna's coach is a former runner called Magnus.",
     "What is the name of Hanna's coach?", "Hanna's coach is a former runner called", "Magnus", True),
]

# Rephrasings of the first 20 examples: passage (same facts, same order of segments) and question reworded;
# the cue and answer are unchanged so that the same token is explained.
PARAPHRASES = {
    "ev01": ("Marta Kell was raised in a fishing village on the north coast. Last spring she painted her kitchen "
             "yellow, and in winter she always wears a blue coat.", "Green is the colour Marta likes best; "
             "Marta's favourite colour is green.", "Which colour does Marta like best?"),
    "ev02": ("Tomas Hale is a village baker. On Mondays he makes rye bread, and on Fridays he sells apple pies at "
             "the market.", "At home, Tomas keeps a parrot named Biscuit.", "What is Tomas's parrot called?"),
    "ev03": ("Lena Vorst went to a music college in the south. Her mother gave piano lessons for years, and her "
             "brother is a trumpet player in a brass band.", "In an orchestra, Lena plays the cello.",
             "What instrument does Lena play?"),
    "ev04": ("The Morning Gull was constructed in a crowded harbour. At first it took timber east, and later it "
             "carried tourists around the bay.", "The Morning Gull has three masts in total.",
             "The Morning Gull has how many masts?"),
    "ev05": ("Pavel Oren often travels for his job. Last year he stayed a month in Lisbon, and each summer he "
             "goes to see his cousin in Oslo.", "Together with his wife, Pavel lives in Vienna.",
             "In which city does Pavel live?"),
    "ev06": ("Ines Marlow is famous for walking far along the river. She has tea each morning and reads poems at "
             "night.", "Ines works as a dentist at the hospital in the city.", "What does Ines do for a living?"),
    "ev07": ("Brenmoor is a village below a hill. Wool and cheese are sold at its market, and at midday its church "
             "bell rings.", "Brenmoor is famous for its copper bridge across the stream.",
             "For what is Brenmoor famous?"),
    "ev08": ("Oskar Lind is a collector of old coins and stamps. He used to have a red bicycle, and he rides a "
             "green scooter to the shop.", "To get to work, Oskar drives a silver truck.",
             "Which colour is Oskar's truck?"),
    "ev09": ("As a child, Greta Holm learned how to swim. At school she played tennis, and on Sundays she watches "
             "football with her dad.", "Of all sports, Greta's favourite sport is hockey.",
             "Which sport does Greta like most?"),
    "ev10": ("Unit Seven is a robot that was built in a lab at a university. It is able to lift small boxes and "
             "to sort letters by their size.", "Unit Seven runs on solar panels.",
             "What powers Unit Seven?"),
    "ev11": ("After finishing school, Hugo Brandt moved to another country. On holiday he picked up some Spanish, "
             "and at home his grandmother spoke Polish.", "In his job, Hugo speaks fluent Japanese.",
             "What language does Hugo use at work?"),
    "ev12": ("Clara Wess runs a little shop on the high street. It has a striped awning and a black wooden door.",
             "Clara's shop sells umbrellas of every size.", "What is sold in Clara's shop?"),
    "ev13": ("Anton Ruse enjoys cooking for friends. When it is cold he makes soup, and in summer he grills "
             "fish.", "Of everything he cooks, Anton's favourite dish is lasagna.",
             "Which dish does Anton like most?"),
    "ev14": ("Snow covers Kessa Peak for most of the year. In June climbers normally set off from the valley to "
             "the west.", "Kessa Peak is 4200 metres tall.", "What is the height of Kessa Peak?"),
    "ev15": ("Nora Feld is the younger sister of two brothers. One brother has a grey horse, and the neighbour "
             "keeps hens.", "Nora has a dog, and Nora's dog is called Pepper.", "What name does Nora's dog have?"),
    "ev16": ("Felix Amar took up running at the age of forty. His route follows the canal, and he rests on a bench "
             "by the mill.", "Felix wakes up every day at six o'clock.", "When does Felix get up each day?"),
    "ev17": ("The Blue Lantern is a café that opened close to the station. Its coffee comes in tall glasses, and "
             "jazz plays there at night.", "The Blue Lantern is owned by a woman named Rosa.",
             "Whose café is the Blue Lantern?"),
    "ev18": ("Ida Paulsen loves gardening. Tomatoes grow along her fence and roses grow by her gate.",
             "Frogs live in Ida's garden, since Ida's garden has a pond.", "What is there in Ida's garden?"),
    "ev19": ("Jonas Kerr grew up on a farm. Each morning he fed the goats, and he mended fences with his uncle.",
             "These days Jonas now teaches history at a high school.", "Which subject does Jonas teach?"),
    "ev20": ("The Glass Orchard is a novel set in a little town. Its story is about two sisters who keep a bakery "
             "going after their father goes away.", "The Glass Orchard was written by Mira Santos.",
             "Who is the author of The Glass Orchard?"),
}


def _build(eid, distractor, support, question, cue, answer, support_first) -> dict:
    passage = f"{support} {distractor}" if support_first else f"{distractor} {support}"
    text = f"{passage}\nQuestion: {question}"
    s0 = text.index(support)
    d0 = text.index(distractor)
    # The answer's words inside the support sentence are the gold words (last occurrence: the stated value).
    a0 = support.rindex(answer) + s0
    assert text[a0 : a0 + len(answer)] == answer
    assert len(re.findall(re.escape(answer), distractor)) == 0, f"{eid}: the answer occurs in the distractor"
    return {"id": eid, "text": text, "cue": f"\nAnswer: {cue}", "answer": answer,
            "support_span": [s0, s0 + len(support)], "distractor_span": [d0, d0 + len(distractor)],
            "important_spans": [[a0, a0 + len(answer)]], "support_first": support_first}


def main() -> None:
    here = Path(__file__).resolve().parent
    rows = [_build(*e) for e in EXAMPLES]
    para = []
    for eid, _distractor, _support, _question, cue, answer, first in EXAMPLES:
        if eid in PARAPHRASES:
            d, s, q = PARAPHRASES[eid]
            para.append(_build(eid, d, s, q, cue, answer, first))
    for name, items in (("evidence_qa.jsonl", rows), ("evidence_qa_paraphrase.jsonl", para)):
        (here / name).write_text("".join(json.dumps(r) + "\n" for r in items), encoding="utf-8")
        print(f"wrote {len(items)} examples to {here / name}")


if __name__ == "__main__":
    main()
