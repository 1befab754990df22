"""Writes corpus.jsonl: the PII detector's labelled corpus, seeded, byte for byte reproducible.

Usage: .venv/bin/python tests/data/pii/generate.py [--check]   (--check: compare, do not write)

Each record is {"id", "text", "spans": [{"type", "start", "end"}], "split"}. Positives put
generated values (faker, seed fixed, and formats built here for keys and international
numbers) into realistic contexts: chat messages, JSON fields, log lines, emails. Hard
negatives are texts with no PII at all that look like it: order numbers, Luhn-valid numbers
outside card contexts, invalid SSNs, version strings, OIDs, UUIDs, timestamps, ISBNs, commit
hashes, placeholders. The split is fixed by the id's SHA-256 (odd: heldout), decided before
any tuning; tune on dev only. Phone positives are numbers libphonenumber deems valid (the
definition the detector implements: an assignable number), as the brief asks.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import random
import string
import sys
from collections.abc import Callable
from pathlib import Path

import phonenumbers
from faker import Faker

SEED = 20240610
PER_TYPE = 230  # positives and negatives per structured type
PER_NER = 120  # positives per NER type
OUT = Path(__file__).resolve().parent / "corpus.jsonl"

fake = Faker("en_US")
Faker.seed(SEED)
rng = random.Random(SEED)
R = rng.randint


class Text:
    """A text built from literal parts and labelled values (their spans kept)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.spans: list[dict[str, object]] = []
        self.n = 0

    def lit(self, s: str) -> Text:
        self.parts.append(s)
        self.n += len(s)
        return self

    def pii(self, type_: str, value: str) -> Text:
        self.spans.append({"type": type_, "start": self.n, "end": self.n + len(value)})
        return self.lit(value)


def render(template: str, values: dict[str, tuple[str, str | None]]) -> Text:
    """`template` with `{slot}`s filled: values[slot] = (text, type or None if not PII)."""
    t = Text()
    rest = template
    while "{" in rest:
        head, _, tail = rest.partition("{")
        slot, _, rest = tail.partition("}")
        t.lit(head)
        value, type_ = values[slot]
        if type_ is None:
            t.lit(value)
        else:
            t.pii(type_, value)
    return t.lit(rest)


def pick(seq: list[str] | tuple[str, ...]) -> str:
    return seq[rng.randrange(len(seq))]


def rand_chars(alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


ALNUM = string.ascii_letters + string.digits
B64URL = ALNUM + "-_"
HEX = "0123456789abcdef"

# --- values ------------------------------------------------------------------------------


def v_ssn() -> str:
    s = fake.ssn()
    r = rng.random()
    return s.replace("-", "") if r < 0.15 else s.replace("-", " ") if r < 0.25 else s


def group_card(digits: str, sep: str) -> str:
    if len(digits) == 15:
        return sep.join((digits[:4], digits[4:10], digits[10:]))
    if len(digits) == 14:
        return sep.join((digits[:4], digits[4:10], digits[10:]))
    return sep.join(digits[i : i + 4] for i in range(0, len(digits), 4))


def v_card() -> str:
    kind = pick(("visa", "visa", "mastercard", "mastercard", "amex", "discover", "jcb16", "diners"))
    digits = fake.credit_card_number(kind)
    while kind == "jcb16" and not 3528 <= int(digits[:4]) <= 3589:  # faker strays off JCB's range
        digits = fake.credit_card_number(kind)
    sep = pick(("", " ", " ", "-"))
    return group_card(digits, sep) if sep else digits


def v_email() -> str:
    r = rng.random()
    if r < 0.4:
        e = fake.email()
    elif r < 0.6:
        e = fake.company_email()
    elif r < 0.75:
        user = fake.user_name()
        e = f"{user}+{pick(('news', 'work', 'shop', 'test'))}@{fake.free_email_domain()}"
    elif r < 0.9:
        e = f"{fake.first_name().lower()}.{fake.last_name().lower()}@{fake.domain_word()}.co.uk"
    else:
        e = f"{fake.last_name().lower()}{rng.randint(1, 99)}@mail.{fake.domain_name()}"
    return e


def _valid_us() -> phonenumbers.PhoneNumber:
    while True:
        raw = "".join(c for c in fake.numerify("##########") if c.isdigit())
        raw = str(rng.randint(2, 9)) + raw[1:3] + str(rng.randint(2, 9)) + raw[4:]
        num = phonenumbers.parse(raw, "US")
        if phonenumbers.is_valid_number(num):
            return num


INTL_REGIONS = ("GB", "DE", "FR", "IN", "JP", "BR", "AU", "ES", "IT", "NL", "MX", "SE", "CH")


def _valid_intl() -> phonenumbers.PhoneNumber:
    while True:
        region = pick(INTL_REGIONS)
        ex = phonenumbers.example_number_for_type(
            region,
            pick((phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE)),
        )
        if ex is None:
            continue
        nat = str(ex.national_number)
        nat = nat[:-4] + "".join(str(rng.randint(0, 9)) for _ in range(4))
        num = phonenumbers.parse(f"+{ex.country_code}{nat}", None)
        if phonenumbers.is_valid_number(num):
            return num


def v_phone() -> str:
    if rng.random() < 0.3:
        num = _valid_intl()
        fmt = pick(
            (phonenumbers.PhoneNumberFormat.INTERNATIONAL, phonenumbers.PhoneNumberFormat.E164)
        )
        return phonenumbers.format_number(num, fmt)
    n = str(_valid_us().national_number)
    a, b, c = n[:3], n[3:6], n[6:]
    style = rng.randrange(7)
    return (
        f"({a}) {b}-{c}",
        f"{a}-{b}-{c}",
        f"{a}.{b}.{c}",
        f"+1 {a} {b} {c}",
        f"+1-{a}-{b}-{c}",
        f"({a}){b}-{c}",
        f"{a}-{b}-{c} x{rng.randint(10, 9999)}",
    )[style]


def v_phone_bare() -> str:
    return str(_valid_us().national_number)


def v_ip() -> str:
    r = rng.random()
    if r < 0.35:
        return fake.ipv4_public()
    if r < 0.6:
        return fake.ipv4_private()
    if r < 0.8:
        return str(ipaddress.IPv6Address(fake.ipv6()))
    return fake.ipv6()


def v_key() -> str:
    kind = rng.randrange(13)
    if kind == 0:
        return "sk-proj-" + rand_chars(B64URL, 74) + "T3BlbkFJ" + rand_chars(B64URL, 74)
    if kind == 1:
        return "sk-" + rand_chars(ALNUM, 20) + "T3BlbkFJ" + rand_chars(ALNUM, 20)
    if kind == 2:
        return "sk-ant-api03-" + rand_chars(B64URL, 93) + "AA"
    if kind == 3:
        return pick(("ghp_", "gho_", "ghs_")) + rand_chars(ALNUM, 36)
    if kind == 4:
        return "github_pat_" + rand_chars(ALNUM, 22) + "_" + rand_chars(ALNUM, 59)
    if kind == 5:
        return "AKIA" + rand_chars(string.ascii_uppercase + "234567", 16)
    if kind == 6:
        return "AIza" + rand_chars(B64URL, 35)
    if kind == 7:
        return (
            "xoxb-"
            + "-".join(str(rng.randint(10**10, 10**12)) for _ in range(2))
            + "-"
            + rand_chars(ALNUM, 24)
        )
    if kind == 8:
        return pick(("sk_live_", "rk_live_", "sk_test_")) + rand_chars(ALNUM, 24)
    if kind == 9:
        return "glpat-" + rand_chars(B64URL, 20)
    if kind == 10:
        return "hf_" + rand_chars(ALNUM, 34)
    if kind == 11:
        return "SG." + rand_chars(B64URL, 22) + "." + rand_chars(B64URL, 43)
    return "npm_" + rand_chars(ALNUM, 36)


def v_generic_secret() -> str:
    return rand_chars(ALNUM, rng.randint(24, 48))


def v_name() -> str:
    r = rng.random()
    if r < 0.7:
        return f"{fake.first_name()} {fake.last_name()}"
    if r < 0.85:
        return fake.name()
    return f"{fake.first_name()} {fake.first_name()[0]}. {fake.last_name()}"


def v_address() -> str:
    street = fake.street_address()
    if rng.random() < 0.5:
        return street
    sep = pick((", ", ", ", "\n"))
    return (
        f"{street}{sep}{fake.city()}, {fake.state_abbr(include_territories=False)} {fake.zipcode()}"
    )


# --- positive templates ------------------------------------------------------------------

WRAP: tuple[str, ...] = (
    "{x}",
    '{{"role": "user", "content": "{x}"}}',
    "2024-{mm}-{dd}T{hh}:{mi}:07Z INFO api.request {x}",
    "Subject: follow-up\n\nHello,\n\n{x}\n\nThanks,\nthe support team",
)


def wrapper() -> tuple[str, str, bool]:
    """A context to put a text in: its head, its tail, whether it is a JSON string."""
    w = (
        pick(WRAP)
        .replace("{mm}", f"{rng.randint(1, 12):02d}")
        .replace("{dd}", f"{rng.randint(1, 28):02d}")
        .replace("{hh}", f"{rng.randint(0, 23):02d}")
        .replace("{mi}", f"{rng.randint(0, 59):02d}")
    )
    head, _, tail = w.partition("{x}")
    return unescape(head), unescape(tail), head.startswith("{{")


def unescape(s: str) -> str:
    return s.replace("{{", "{").replace("}}", "}")


def esc(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)[1:-1]


def wrap(inner: str) -> str:
    head, tail, is_json = wrapper()
    return head + (esc(inner) if is_json else inner) + tail


POS: dict[str, tuple[tuple[str, ...], Callable[[], str]]] = {
    "ssn": (
        (
            "My social security number is {v}, can you check the W-4 for me?",
            "SSN: {v}",
            'applicant ssn="{v}" state=CA verified=true',
            "Please update my file, SSN {v}.",
            "The taxpayer's SSN ({v}) does not match the return.",
            "Social Security No. {v} was entered twice on the I-9.",
            "kyc check ssn={v} result=pass",
            "Hi, here is my ssn {v} for the background check.",
        ),
        v_ssn,
    ),
    "credit_card": (
        (
            "Charge my card {v}, expiry 04/27.",
            "card_number={v} cvv=***",
            "I paid with my Visa {v} and it was declined.",
            "The credit card on file is {v}.",
            "billing: card {v} exp 11/26",
            "Can you refund the payment to {v}?",
            "my debit card number: {v}",
            "cc {v} was charged twice",
        ),
        v_card,
    ),
    "email": (
        (
            "You can reach me at {v} any time.",
            "email={v} action=login ok",
            "Please send the invoice to {v}.",
            "From: {v}\nTo: billing team",
            "Contact: {v}",
            "cc {v} on the thread please",
            "user {v} reset their password",
            "My work address is {v} and my personal one is unused.",
        ),
        v_email,
    ),
    "phone": (
        (
            "Call me at {v} after 5pm.",
            "phone: {v}",
            "The customer's mobile is {v}.",
            "tel={v} verified=false",
            "You can text me on {v}.",
            "Our office number is {v}, ask for billing.",
            "contact_phone {v}",
            "Reach the on-call engineer at {v}.",
        ),
        v_phone,
    ),
    "ip_address": (
        (
            "Login from IP {v} was blocked.",
            "src={v} proto=tcp action=drop",
            "The server at {v} is not responding to ping.",
            "client {v} requested /api/v2/orders",
            "Please whitelist {v} in the firewall.",
            "connect to {v}:443 failed",
            "remote_addr: {v}",
            "my home IP is {v}, can you unblock it?",
        ),
        v_ip,
    ),
    "api_key": (
        (
            "Here is my key {v}, why does it return 401?",
            "export OPENAI_API_KEY={v}",
            "Authorization: Bearer {v}",
            "config: api_key: {v}",
            "I accidentally committed {v} to the repo",
            "token = '{v}'",
            "use {v} for the staging env",
            "the secret is {v}",
        ),
        v_key,
    ),
}

POS_EXTRA: dict[str, tuple[tuple[str, ...], Callable[[], str]]] = {
    "ssn": (("taxpayer id (ssn) {v}", "SSN#{v}"), lambda: fake.ssn().replace("-", "")),
    "phone": (("phone {v}", "mobile number: {v}", "call {v}"), v_phone_bare),
    "api_key": (
        ('{{"api_key": "{v}"}}', "API_KEY={v}", "x-api-key: {v}", "client_secret = {v}"),
        v_generic_secret,
    ),
}

NER_POS: dict[str, tuple[tuple[str, ...], Callable[[], str]]] = {
    "person_name": (
        (
            "Dear {v},\nyour order has shipped.",
            '{{"name": "{v}", "plan": "pro"}}',
            "Best regards,\n{v}",
            "My name is {v} and I need help with my account.",
            "Please forward this to {v} in accounting.",
            "Meeting with {v} moved to Thursday.",
            "Signed: {v}",
            "Hi {v}, thanks for reaching out.",
            "The patient, {v}, was discharged today.",
            "{v} approved the request.",
        ),
        v_name,
    ),
    "address": (
        (
            "Ship it to {v}.",
            "My address is {v}",
            '{{"shipping_address": "{v}"}}',
            "We moved to {v} last month.",
            "Billing address:\n{v}",
            "The package was left at {v} by mistake.",
        ),
        v_address,
    ),
}

# --- hard negatives ----------------------------------------------------------------------


def _digits(n: int) -> str:
    return str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(n - 1))


def _bad_ssn() -> str:
    area = pick(("000", "666", str(rng.randint(900, 999))))
    r = rng.random()
    if r < 0.5:
        return f"{area}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"
    if r < 0.75:
        return f"{rng.randint(1, 899):03d}-00-{rng.randint(1, 9999):04d}"
    return f"{rng.randint(1, 665):03d}-{rng.randint(1, 99):02d}-0000"


def _luhn_fix(prefix: str) -> str:
    for d in "0123456789":
        s = prefix + d
        total = 0
        for i, ch in enumerate(reversed(s)):
            k = int(ch) * (2 if i % 2 else 1)
            total += k - 9 if k > 9 else k
        if total % 10 == 0:
            return s
    raise AssertionError


def _luhn_fail_card() -> str:
    good = fake.credit_card_number(pick(("visa", "mastercard", "discover")))
    last = str((int(good[-1]) + rng.randint(1, 9)) % 10)
    return group_card(good[:-1] + last, pick((" ", "-", " ")))


def _isbn13() -> str:
    core = "978" + _digits(9)
    total = sum(int(c) * (1 if i % 2 == 0 else 3) for i, c in enumerate(core))
    return core + str((10 - total % 10) % 10)


def _uuid() -> str:
    return str(fake.uuid4())


def _sha1() -> str:
    return rand_chars(HEX, 40)


def _version4() -> str:
    return ".".join(str(rng.randint(0, 30)) for _ in range(4))


def _invalid_phone() -> str:
    a = pick(("123", "555", "000", "111", "099"))
    return pick(
        (
            f"({a}) {rng.randint(200, 999)}-{rng.randint(0, 9999):04d}",
            f"{a}-{rng.randint(100, 999)}-{rng.randint(0, 9999):04d}",
        )
    )


NEG: dict[str, tuple[Callable[[], str], ...]] = {
    "ssn": (
        lambda: f"My SSN is {_bad_ssn()}, is that right?",
        lambda: f"ssn={_bad_ssn()} rejected: invalid area/group/serial",
        lambda: f"Order {_digits(3)}-{_digits(2)}-{_digits(4)} has shipped.",
        lambda: f"Part number {_digits(3)}-{_digits(2)}-{_digits(4)} is back-ordered.",
        lambda: f"Ticket ref {_digits(3)}-{_digits(2)}-{_digits(4)} was closed.",
        lambda: f"user id {_digits(9)} logged in",
        lambda: f"routing number {_digits(9)} for the wire",
        lambda: f"The ZIP+4 is {_digits(5)}-{_digits(4)}.",
        lambda: f"build {_digits(9)} passed all checks",
        lambda: f"invoice #{_digits(9)} is overdue",
    ),
    "credit_card": (
        lambda: f"Charge card {_luhn_fail_card()} please.",
        lambda: f"card number {_luhn_fail_card()} was rejected",
        lambda: f"IMEI {_luhn_fix(_digits(14))} registered to the device",
        lambda: f"tracking number {_luhn_fix('4' + _digits(14))} is in transit",
        lambda: f"order #{_luhn_fix('5' + _digits(14))} confirmed",
        lambda: f"transaction id {_luhn_fix('6011' + _digits(11))} settled",
        lambda: f"ISBN {_isbn13()} is out of print",
        lambda: f"ts_ms={R(1600000000000, 1800000000000)} event=click",
        lambda: f"account {_digits(16)} balance updated",
        lambda: f"serial {'-'.join(_digits(4) for _ in range(4))} activated",
        lambda: f"nonce {_digits(18)} reused",
    ),
    "email": (
        lambda: f"thanks @{fake.user_name()} for the review!",
        lambda: "send it to root@localhost for now",
        lambda: f"assets/logo@{R(2, 3)}x.png is missing",
        lambda: f"git clone git@github.com:{fake.user_name()}/{fake.domain_word()}.git",
        lambda: f"pin lodash@{R(1, 5)}.{R(0, 20)}.{R(0, 30)} in package.json",
        lambda: f"npm install @{fake.domain_word()}/{fake.domain_word()}",
        lambda: f"@app.route('/{fake.domain_word()}') returns 404",
        lambda: f"mention user@ then type the handle, e.g. {fake.user_name()}@",
        lambda: f"image icon@{R(2, 4)}x.webp failed to load",
        lambda: f"docker pull registry/{fake.domain_word()}@sha256:{rand_chars(HEX, 64)}",
    ),
    "phone": (
        lambda: f"Order #{v_phone_bare()} has shipped.",
        lambda: f"ts={R(1600000000, 1800000000)} level=info msg=started",
        lambda: f"ISBN 0-{_digits(3)}-{_digits(5)}-{R(0, 9)} is on loan",
        lambda: f"released on {R(2000, 2030)}-{R(1, 12):02d}-{R(1, 28):02d}",
        lambda: f"account {v_phone_bare()} closed",
        lambda: f"Windows build 10.0.{R(10000, 22999)}.{R(100, 9999)}",
        lambda: f"total ${R(1, 999)},{R(100, 999)},{R(100, 999)}.00",
        lambda: f"coordinates {rng.uniform(-80, 80):.6f}, {rng.uniform(-170, 170):.6f}",
        lambda: f"call me at {_invalid_phone()} (a placeholder)",
        lambda: f"invoice INV-{R(2019, 2025)}-{_digits(3)}-{_digits(4)}",
        lambda: f"customer id {v_phone_bare()} merged",
        lambda: f"pid {R(1000, 99999)} port {R(1024, 65535)} uptime {_digits(7)}s",
    ),
    "ip_address": (
        lambda: f"upgraded to version {_version4()} yesterday",
        lambda: f"release v{_version4()} is out",
        lambda: f"OID 1.3.6.1.4.1.{R(1, 50000)}.{R(1, 9)}",
        lambda: f"bad address {R(256, 999)}.{R(0, 255)}.{R(0, 255)}.{R(0, 255)}",
        lambda: f"on {R(1, 28):02d}.{R(1, 12):02d}.{R(2000, 2030)} we met",
        lambda: f"User-Agent: Chrome/{R(90, 130)}.0.{R(1000, 6999)}.{R(10, 200)}",
        lambda: f"started at {R(0, 23):02d}:{R(0, 59):02d}:{R(0, 59):02d}",
        lambda: f"mac {':'.join(rand_chars(HEX, 2) for _ in range(6))} joined",
        lambda: "std::vector<int> v; std::map m;",
        lambda: f"firmware {_version4()} flashed",
        lambda: f"python==3.{R(8, 13)}.{R(0, 9)} and pip {R(20, 24)}.{R(0, 3)}",
    ),
    "api_key": (
        lambda: f"commit {_sha1()} fixed the build",
        lambda: f'{{"request_id": "{_uuid()}"}}',
        lambda: "export OPENAI_API_KEY=sk-" + "x" * R(24, 48),
        lambda: "set api_key=YOUR_API_KEY_HERE before running",
        lambda: f"image digest sha256:{rand_chars(HEX, 64)}",
        lambda: f"merge {_sha1()[:12]} into main",
        lambda: f"the task-management-dashboard-redesign-{fake.domain_word()} branch",
        lambda: f'"usage": {{"total_tokens": {R(10, 9999)}}}',
        lambda: f"session {_uuid()} expired",
        lambda: "use sk-... as a placeholder, e.g. sk-your-key-goes-here-please",
        lambda: f'color #{rand_chars(HEX, 6)} and etag W/"{rand_chars(HEX, 16)}"',
        lambda: f"git checkout {_sha1()}",
    ),
}

NER_NEG: tuple[str, ...] = (
    "Machine Learning is a growing field.",
    "We flew to New York for the Annual Meeting.",
    "Thanks Again for the Quick Response.",
    "Best Practices for Python Packaging",
    "I ran 5 miles down the road today.",
    "Version 2 Release Notes are up.",
    "Happy New Year from the whole team!",
    "The Golden Gate Bridge is closed for maintenance.",
    "Google Cloud Storage and Amazon Web Services both work.",
    "Read the Getting Started Guide first.",
)


# --- corpus ------------------------------------------------------------------------------


def split_of(rid: str) -> str:
    return "heldout" if int(hashlib.sha256(rid.encode()).hexdigest(), 16) % 2 else "dev"


def record(rid: str, t: Text) -> dict[str, object]:
    return {"id": rid, "text": "".join(t.parts), "spans": t.spans, "split": split_of(rid)}


def positive(templates: tuple[str, ...], value: Callable[[], str], type_: str) -> Text:
    ih, _, it = unescape(pick(templates)).partition("{v}")
    head, tail, is_json = wrapper()
    v = value()
    if is_json:  # one line, as a JSON string value of a chat message
        ih, it = esc(ih.replace("\n", " ")), esc(it.replace("\n", " "))
        v = v.replace("\n", " ")
    return Text().lit(head + ih).pii(type_, v).lit(it + tail)


def build() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for type_, (templates, value) in POS.items():
        extra = POS_EXTRA.get(type_)
        for i in range(PER_TYPE):
            if extra is not None and i % 5 == 4:
                t = positive(extra[0], extra[1], type_)
            else:
                t = positive(templates, value, type_)
            out.append(record(f"{type_}-pos-{i:04d}", t))
        negs = NEG[type_]
        for i in range(PER_TYPE):
            out.append(record(f"{type_}-neg-{i:04d}", Text().lit(wrap(negs[i % len(negs)]()))))
    for type_, (templates, value) in NER_POS.items():
        for i in range(PER_NER):
            out.append(record(f"{type_}-pos-{i:04d}", positive(templates, value, type_)))
    for i, text in enumerate(NER_NEG * 4):
        out.append(record(f"ner-neg-{i:04d}", Text().lit(wrap(text))))
    for i in range(60):  # several types in one text
        t = render(
            "{n} <{e}> called from {p} about card {c}; login IP {ip}.",
            {
                "n": (v_name(), "person_name"),
                "e": (v_email(), "email"),
                "p": (v_phone(), "phone"),
                "c": (v_card(), "credit_card"),
                "ip": (v_ip(), "ip_address"),
            },
        )
        out.append(record(f"mixed-{i:04d}", t))
    return out


def main() -> int:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in build())
    if "--check" in sys.argv:
        same = OUT.exists() and OUT.read_text() == data
        print("corpus.jsonl is up to date" if same else "corpus.jsonl differs")
        return 0 if same else 1
    OUT.write_text(data)
    print(f"wrote {OUT} ({data.count(chr(10))} records)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
