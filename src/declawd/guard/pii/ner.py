"""person_name and address: RE2 candidate spans classified by DataMade's CRF parsers
(`probablepeople`, `usaddress`; MIT, models shipped in their wheels, nothing downloaded). Pure.

Names: a run of one to four capitalised tokens after a cue (an honorific, `name:`, `Dear`,
`signed`, `Regards,`, ...) or, without a cue, a run of two or three; probablepeople must read
it as a Person with a given name or surname, and a run without a cue must have both and no
word of `_NOT_NAMES` (greetings, months, product words: what sentence-initial capitals
produce). Addresses: a house number, one to six street words ending in a USPS street suffix
(or a PO box), an optional unit and `City, ST 12345`; usaddress must tag a number and a
street name. Invariant: at most `MAX_CANDIDATES` CRF calls per text (the first ones), so the
cost is linear with a fixed cap on model work.
"""

from __future__ import annotations

import probablepeople
import re2
import usaddress

from declawd.guard.pii.findings import Finding

MAX_CANDIDATES = 48

_CAP = r"(?:[A-Z][a-z]+(?:['\-][A-Z]?[a-z]+)?|[A-Z]\.|[A-Z][a-z]?[A-Z][a-z]+)"
_HONORIFIC = r"(?:Mr|Mrs|Ms|Mx|Miss|Dr|Prof|Sir|Madam|Rev|Capt|Judge)\.?"
_NAME_CUE = (
    r"(?i:\b(?:name|full[ _]?name|first[ _]?name|last[ _]?name|patient|customer|client"
    r"|employee|contact|signed|sincerely|regards|dear|hi|hello|hey|thanks|thank\s+you|from"
    r"|attn|author|applicant|recipient|sender|owner|cardholder|manager|assignee|reviewer"
    r"|my\s+name\s+is|i\s+am|i'm|this\s+is|meet|with|by|cc|to|spoke\s+to|ask|tell)\b)"
)
# group 1: a cued run (the cue before it), group 2: an honorific's run, group 3: a bare run
_NAMES = re2.compile(
    rf"{_NAME_CUE}[\s:,.\"'=\-]{{1,6}}((?:{_HONORIFIC}\s)?{_CAP}(?:\s{_CAP}){{0,3}})"
    rf"|\b({_HONORIFIC}\s{_CAP}(?:\s{_CAP}){{0,2}})"
    rf"|\b({_CAP}\s{_CAP}(?:\s{_CAP})?)\b"
)
_NOT_NAMES_WORDS = """
    the a an this that these those there here it its i we you he she they our your my his her
    again also just only well then now soon hi hello hey dear thanks thank please regards best
    kind warm sincerely cheers good great
    happy welcome yes no ok okay sure note notes update updates new old next last first final
    monday tuesday wednesday thursday friday saturday sunday today tomorrow yesterday
    january february march april may june july august september october november december
    street avenue road drive lane court suite city county state north south east west
    inc llc ltd corp corporation company group team department dept university college school
    bank hospital office center centre service services support customer customers client
    api json http https url sdk cli github google amazon microsoft apple openai python linux
    docker kubernetes windows machine learning data science project release version error
    warning info debug test tests order invoice payment account total summary report meeting
    call email phone address name number id user users admin system server request response
    hotel airport park lake river mount beach island valley ocean united kingdom america
    american european new york san los las st saint fort port main high
    guide getting started tutorial introduction overview chapter section page step quick start
    login logout sign signup part ticket ship shipping billing charge can from social security
    bridge tower building
    """
_NOT_NAMES = frozenset(_NOT_NAMES_WORDS.split())
_SUFFIXES = (
    "Alley|Aly|Annex|Arcade|Avenue|Ave|Av|Bayou|Beach|Bend|Bluff|Bluffs|Bottom|Boulevard|Blvd"
    "|Branch|Bridge|Brook|Brooks|Burg|Burgs|Bypass|Camp|Canyon|Cape|Causeway|Center|Centers"
    "|Circle|Cir|Circles|Cliff|Cliffs|Club|Common|Commons|Corner|Corners|Course|Court|Ct"
    "|Courts|Cove|Coves|Creek|Crescent|Crest|Crossing|Crossroad|Crossroads|Curve|Dale|Dam"
    "|Divide|Drive|Dr|Drives|Estate|Estates|Expressway|Expy|Extension|Ext|Extensions|Fall"
    "|Falls|Ferry|Field|Fields|Flat|Flats|Ford|Fords|Forest|Forge|Forges|Fork|Forks|Fort"
    "|Freeway|Fwy|Garden|Gardens|Gateway|Glen|Glens|Green|Greens|Grove|Groves|Harbor"
    "|Harbors|Haven|Heights|Hts|Highway|Hwy|Hill|Hills|Hollow|Inlet|Island|Islands|Isle"
    "|Junction|Junctions|Key|Keys|Knoll|Knolls|Lake|Lakes|Land|Landing|Lane|Ln|Light|Lights"
    "|Loaf|Lock|Locks|Lodge|Loop|Mall|Manor|Manors|Meadow|Meadows|Mews|Mill|Mills|Mission"
    "|Motorway|Mount|Mountain|Mountains|Neck|Orchard|Oval|Overpass|Park|Parks|Parkway|Pkwy"
    "|Parkways|Pass|Passage|Path|Pike|Pine|Pines|Place|Pl|Plain|Plains|Plaza|Plz|Point"
    "|Points|Port|Ports|Prairie|Radial|Ramp|Ranch|Rapid|Rapids|Rest|Ridge|Ridges|River"
    "|Road|Rd|Roads|Route|Rte|Row|Rue|Run|Shoal|Shoals|Shore|Shores|Skyway|Spring|Springs"
    "|Spur|Spurs|Square|Sq|Squares|Station|Stravenue|Stream|Street|St|Streets|Summit"
    "|Terrace|Ter|Throughway|Trace|Track|Trafficway|Trail|Trl|Trailer|Tunnel|Turnpike"
    "|Underpass|Union|Unions|Valley|Valleys|Via|Viaduct|View|Views|Village|Villages|Ville"
    "|Vista|Walk|Walks|Wall|Way|Ways|Well|Wells"
)
_STREET_WORD = r"(?:[A-Z][A-Za-z'\-]*\.?|\d{1,3}(?:st|nd|rd|th)|[NSEW]\.?)"
_UNIT = (
    r"(?:,?\s(?:Apt|Apartment|Suite|Ste|Unit|Room|Rm|Floor|Fl|Bldg|#)\.?\s?#?[A-Za-z0-9\-]{1,6})"
)
_CITY = (
    r"(?:,?\s+[A-Z][A-Za-z.'\-]*(?:\s[A-Z][A-Za-z.'\-]*){0,3},?\s[A-Z]{2}(?:\s\d{5}(?:-\d{4})?)?)"
)
_ADDRESSES = re2.compile(
    rf"\b(\d{{1,6}}[A-Za-z]?(?:\s{_STREET_WORD}){{1,5}}?\s(?:{_SUFFIXES})\b\.?{_UNIT}?{_CITY}?"
    rf"|(?i:p\.?\s?o\.?\s?box)\s\d{{1,6}}{_CITY}?)"
)


def detect_names(text: str, budget: list[int]) -> list[Finding]:
    """person_name findings; `budget[0]`: CRF calls left (decremented). A run's words that
    are not names are dropped from its ends; a rejected run's words may cue the next."""
    out: list[Finding] = []
    pos, steps = 0, 0
    while budget[0] > 0 and steps < 4 * MAX_CANDIDATES:
        steps += 1
        m = _NAMES.search(text, pos)
        if m is None:
            break
        group = 1 if m.group(1) is not None else 2 if m.group(2) is not None else 3
        s, e = m.span(group)
        pos = e
        words = text[s:e].split()
        if group == 3 and any(w.strip(".").lower() in _NOT_NAMES for w in words):
            continue
        cut = 0
        while cut < len(words) and words[cut].strip(".").lower() in _NOT_NAMES:
            cut += 1
        if cut and group != 2:
            # "Dear John", "Hi Anna": the stop words start the search again (as cues)
            s = text.index(words[cut - 1], s) + len(words[cut - 1])
            pos = s
            continue
        while words and words[-1].strip(".").lower() in _NOT_NAMES:
            words.pop()
        if not words:
            continue
        s = text.index(words[0], s)
        e = text.rindex(words[-1], s, e) + len(words[-1])
        after_newline = group == 1 and "\n" in text[m.start() : s]
        if (group == 3 or after_newline) and len(words) < 2:
            continue
        budget[0] -= 1
        score = _person(text[s:e], strict=group == 3 or after_newline)
        if score:
            out.append(Finding("person_name", s, e, text[s:e], score))
    return out


def _person(run: str, *, strict: bool) -> float:
    try:
        tags, kind = probablepeople.tag(run)
    except probablepeople.RepeatedLabelError:
        return 0.0
    if kind != "Person":
        return 0.0
    given = "GivenName" in tags or "FirstInitial" in tags
    surname = "Surname" in tags
    if strict:
        return 0.7 if given and surname else 0.0
    return 0.9 if given or surname else 0.0


def detect_addresses(text: str, budget: list[int]) -> list[Finding]:
    """address findings; `budget[0]`: CRF calls left (decremented)."""
    out: list[Finding] = []
    for m in _ADDRESSES.finditer(text):
        if budget[0] <= 0:
            break
        s, e = m.span(1)
        if s and (text[s - 1].isalnum() or text[s - 1] in "-./#$"):
            continue
        budget[0] -= 1
        value = text[s:e]
        score = _address(value)
        if score:
            out.append(Finding("address", s, e, value, score))
    return out


def _address(value: str) -> float:
    try:
        tags, kind = usaddress.tag(value)
    except usaddress.RepeatedLabelError:
        return 0.0
    if kind == "PO Box":
        return 0.85
    if kind != "Street Address" or "AddressNumber" not in tags or "StreetName" not in tags:
        return 0.0
    if "StreetNamePostType" not in tags and "StateName" not in tags:
        return 0.0
    return 0.9 if "ZipCode" in tags or "PlaceName" in tags else 0.8
