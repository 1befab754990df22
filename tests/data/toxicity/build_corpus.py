"""Builds corpus.jsonl: labelled toxic / non-toxic texts from seeded templates.

Each template is a *family*; the dev/heldout split is by family (a stable hash of its name),
so heldout texts never share a template with the dev texts thresholds are tuned on. The
output is frozen: re-running with the same seed writes the same file. Run:
    .venv/bin/python tests/data/toxicity/build_corpus.py
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from pathlib import Path

SEED = 10
OUT = Path(__file__).with_name("corpus.jsonl")

WHO = ["you", "your manager", "this guy", "the new hire", "your friend", "that admin"]
NAMES = ["Dave", "Priya", "Tom", "Maria", "Kevin", "Aisha", "Lars", "Mei"]
THINGS = ["code", "pull request", "design doc", "answer", "commit", "presentation", "script"]

# family -> (label, category, templates, slot values)
FAMILIES: dict[str, tuple[int, str, list[str]]] = {
    # ---- toxic: insults with profanity
    "insult_profane_direct": (
        1,
        "insult",
        [
            "You are a fucking idiot, {name}.",
            "What a piece of shit {thing} this is, you moron.",
            "Shut the fuck up, nobody asked you.",
            "You're such a dumbass, {name}, honestly.",
            "Are you fucking stupid or just pretending?",
            "This {thing} is shit and so are you.",
            "{name}, you absolute asshole, fix your {thing}.",
            "Go fuck yourself and your garbage {thing}.",
        ],
    ),
    "insult_profane_chat": (
        1,
        "insult",
        [
            "lol {name} is such a dick",
            "omg shut up you stupid bitch",
            "ur a retard, {name}",
            "fuck off {name} nobody likes you",
            "wtf is wrong with you, dumbass",
            "this bot is a useless piece of crap, screw you",
            "you suck so bad at this, loser",
            "eat shit {name}",
        ],
    ),
    "insult_plain": (
        1,
        "insult",
        [
            "You are an idiot, {name}.",
            "{name}, you are the most incompetent moron I have ever worked with.",
            "Only a complete imbecile would write {thing} like this.",
            "You're pathetic and stupid, {name}.",
            "What a worthless, brainless loser you are.",
            "Nobody cares what a clueless idiot like you thinks.",
            "You are too dumb to understand a simple {thing}.",
            "Honestly {name}, you are an ignorant fool.",
        ],
    ),
    "insult_appearance": (
        1,
        "insult",
        [
            "You are ugly and fat, {name}, and everyone laughs at you.",
            "Look at you, you disgusting pig.",
            "{name} is a fat ugly slob.",
            "You're so ugly it hurts to look at you.",
            "Nobody would date a hideous freak like you.",
        ],
    ),
    "harassment_exclusion": (
        1,
        "harassment",
        [
            "Nobody wants you here, {name}. Just leave and never come back, you idiot.",
            "Everyone hates you, {name}, you worthless loser.",
            "Get lost, you pathetic waste of space.",
            "Go die in a hole, {name}.",
            "You should just kill yourself, {name}.",
            "The world would be better without a loser like you.",
            "Crawl back under your rock, you useless freak.",
        ],
    ),
    "harassment_demeaning": (
        1,
        "harassment",
        [
            "Women like you are too stupid to code, {name}.",
            "Shut up and go make me a sandwich, idiot.",
            "Keep crying, snowflake, you are a joke.",
            "Stop talking, you dumb clown, you embarrass everyone.",
            "You're a disgrace and a moron, {name}.",
        ],
    ),
    "threat_violent": (
        1,
        "threat",
        [
            "I will find you and hurt you, {name}.",
            "I'm going to beat the shit out of you.",
            "You'd better watch your back, {name}, I know where you live.",
            "I will kill you if you post that {thing} again.",
            "Say that again and I'll break your fucking neck.",
            "I'm going to punch you in your stupid face.",
            "Keep it up and you'll end up in a hospital, {name}.",
            "I hope someone stabs you, you piece of shit.",
        ],
    ),
    "threat_veiled": (
        1,
        "threat",
        [
            "It would be a shame if something happened to your family, {name}.",
            "I know your address, {name}. Think about that.",
            "People like you tend to have accidents.",
            "You won't be laughing when I show up at your door.",
            "Sleep with one eye open, {name}.",
        ],
    ),
    "insult_at_bot": (
        1,
        "insult",
        [
            "You are a stupid worthless bot, {name} could do better.",
            "Useless fucking AI, you can't even write a {thing}.",
            "Listen here you dumb machine, you are garbage.",
            "This assistant is a moronic piece of junk.",
            "Shut up, you idiotic chatbot.",
        ],
    ),
    # ---- non-toxic: technical words that look violent
    "tech_kill": (
        0,
        "tech",
        [
            "Kill the process with kill -9 if it hangs.",
            "If the worker is stuck, kill it and restart the {thing} job.",
            "This bug is a killer; it took down {name}'s {thing} twice.",
            "Use pkill to kill all child processes before the deploy.",
            "The OOM killer terminated the container at 3am.",
            "We need to kill the zombie processes on the build host.",
            "Abort the transaction and kill the session if it deadlocks.",
            "That feature is a killer app for our customers.",
        ],
    ),
    "tech_execute": (
        0,
        "tech",
        [
            "Execute the migration script, then hit the endpoint to warm the cache.",
            "The child thread dies when the parent exits; that's expected.",
            "Shoot me a message when the {thing} is merged.",
            "We should nuke the cache and rebuild from scratch.",
            "The master branch was force-pushed; slave replicas are lagging.",
            "Blow away the virtualenv and reinstall the dependencies.",
            "Hit me up if the {thing} breaks again, {name}.",
            "The daemon is dead; attack surface is reduced when it is off.",
        ],
    ),
    "tech_review": (
        0,
        "tech",
        [
            "Your {thing} looks good, {name}; just rename the helper function.",
            "I left a few comments on the {thing}; mostly nits.",
            "Could you add a test for the empty input case?",
            "Thanks {name}, this {thing} fixes the flaky test.",
            "The {thing} fails on Windows because of path separators.",
            "Let's pair on the {thing} tomorrow morning.",
            "Great catch on the race condition, {name}.",
            "Please squash the commits before merging the {thing}.",
        ],
    ),
    "medical": (
        0,
        "medical",
        [
            "The patient reported pain in the lower abdomen and rectum.",
            "Breast cancer screening is recommended every two years after fifty.",
            "Testicular self-exams help with early detection.",
            "The vaginal swab came back negative for infection.",
            "Anal fissures usually heal within six weeks with fibre and fluids.",
            "Erectile dysfunction can be a side effect of this medication.",
            "The penis and scrotum were examined; no abnormalities were found.",
            "A rectal temperature is the most accurate in infants.",
            "Nipple discharge should be checked by a doctor.",
            "The sperm count was within the normal range.",
        ],
    ),
    "moderation_talk": (
        0,
        "meta",
        [
            "Our moderation policy removes comments that insult other users.",
            "The classifier flags harassment, threats and hate speech for review.",
            "We measured how often the toxicity filter misfires on medical text.",
            "Please report abusive messages instead of replying to them.",
            "The study found that online harassment drives volunteers away.",
            "A profanity filter should not block the word Scunthorpe.",
            "Content moderators review reports of threats within an hour.",
            "The dataset labels each comment as toxic, obscene or insulting.",
        ],
    ),
    "rant_clean": (
        0,
        "rant",
        [
            "I am so frustrated with this vendor; their support is slow and the docs are wrong.",
            "This is the third time the {thing} broke this week and I am losing my patience.",
            "Honestly the new UI is a mess and nobody asked for it.",
            "I can't believe the release slipped again, this is really disappointing.",
            "The airline lost my luggage and then hung up on me twice.",
            "I'm fed up with meetings that could have been an email.",
            "Why is this API so badly designed? Every call needs three retries.",
            "The update deleted my settings and I am furious about it.",
        ],
    ),
    "review_negative": (
        0,
        "rant",
        [
            "One star: the battery died after two days and the charger is flimsy.",
            "The food was cold and the waiter ignored us for twenty minutes.",
            "Terrible experience, the hotel room smelled of smoke.",
            "This {thing} is poorly documented and hard to follow.",
            "The movie was boring and far too long.",
            "I would not recommend this course; the lectures are disorganised.",
        ],
    ),
    "everyday": (
        0,
        "chat",
        [
            "Can you summarise this article for me, {name}?",
            "What's the weather like in Berlin tomorrow?",
            "Thanks for your help, have a great weekend!",
            "Please translate this sentence into Spanish.",
            "Write a short poem about autumn leaves.",
            "How do I bake sourdough bread at home?",
            "{name} and I are planning a hike on Saturday.",
            "Remind me to call the dentist at noon.",
        ],
    ),
    "history_violence": (
        0,
        "meta",
        [
            "The battle ended with thousands of soldiers killed on both sides.",
            "The novel's villain murders the king in the second act.",
            "In the game you shoot zombies to survive the night.",
            "The documentary explains how the assassination was planned.",
            "Police arrested the suspect after the robbery.",
            "Hamlet kills Polonius by mistake behind the curtain.",
        ],
    ),
    "mild_banter": (
        0,
        "chat",
        [
            "Haha {name}, you're crazy, that's brilliant.",
            "Damn, that's a clever trick!",
            "Oh hell yes, the build is finally green.",
            "That demo was sick, well done {name}.",
            "You beast, you fixed it in ten minutes.",
            "Holy cow, the benchmark is twice as fast.",
        ],
    ),
}

PREFIXES = ["", "", "", "Honestly, ", "Listen, ", "Ok so ", "Look, "]
SUFFIXES = ["", "", "", " Seriously.", " Just saying.", " Thanks.", "!!"]


def _hash(family: str) -> int:
    return int(hashlib.sha256(f"{SEED}:{family}".encode()).hexdigest(), 16)


def splits() -> dict[str, str]:
    """Per label, families in hash order; positions 1 and 3 of every 5 go to heldout."""
    out = {}
    for label in (0, 1):
        fams = sorted((f for f, v in FAMILIES.items() if v[0] == label), key=_hash)
        for i, f in enumerate(fams):
            out[f] = "heldout" if i % 5 in (1, 3) else "dev"
    return out


def build() -> list[dict[str, object]]:
    rng = random.Random(SEED)
    split = splits()
    rows = []
    for family, (label, category, templates) in sorted(FAMILIES.items()):
        seen: set[str] = set()
        combos = list(itertools.product(templates, PREFIXES, SUFFIXES))
        rng.shuffle(combos)
        per = 30 if label else 22
        for tpl, pre, suf in combos:
            body = tpl.format(name=rng.choice(NAMES), thing=rng.choice(THINGS))
            if pre and not body.startswith(("I ", "I'")):
                body = body[0].lower() + body[1:]
            text = pre + body + suf
            if text in seen:
                continue
            seen.add(text)
            rows.append(
                {
                    "text": text,
                    "label": label,
                    "family": family,
                    "category": category,
                    "split": split[family],
                }
            )
            if len(seen) >= per:
                break
    for i, row in enumerate(rows):
        row["id"] = f"tox-{i:04d}"
    return rows


if __name__ == "__main__":
    rows = build()
    with OUT.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    pos = sum(r["label"] == 1 for r in rows)
    print(
        f"{len(rows)} rows ({pos} toxic, {len(rows) - pos} not), by split:",
        {s: sum(r["split"] == s for r in rows) for s in ("dev", "heldout")},
    )
