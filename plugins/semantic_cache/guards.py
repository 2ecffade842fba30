"""Guards against false semantic-cache hits: rules that veto a hit the embedding alone would allow.

Small embedding models put a question and its near-misses ("enable X" / "disable X", "VLAN 10" /
"VLAN 20", "can" / "can't") as close together as true paraphrases, so a similarity threshold
cannot separate them. Each guard here extracts what decides an answer from both texts and
refuses the pair when they disagree:

- negation: the texts differ in how many negations they hold ("not", "n't", "never", "without",
  "unable", ...): "doesn't ... when no one is home" is not "does ... when no one is home";
- numbers: the numbers (with the unit that follows: "10 GB", "30 days"; number words count) differ;
- identifiers: IP addresses and prefixes, AS numbers, VLAN ids, interface names (Gi0/1 is
  GigabitEthernet0/1, eth0, xe-0/0/1), MAC and e-mail addresses, URLs, quoted names, and any token
  mixing letters and digits (an order number, a hostname, an error code) differ;
- entities: a name one text gives (a capitalised word inside a sentence, an acronym, a domain term
  such as a protocol) does not occur in the other;
- actions: the texts take opposite sides of an action or a direction (enable/disable, add/remove,
  allow/deny, upload/download, inbound/outbound, monthly/yearly, ...);
- order: the names both texts give come in another order ("migrate from A to B" / "from B to A");
- content: a word that carries the question's meaning (anything but the closed classes of English
  function words and the words that only frame a question: "how do I", "what is the way to") is
  in one text and not the other, compared by stem; or a word both name takes another preposition
  ("within 30 days" / "after 30 days", "from savings" / "to savings"). This is the general test
  the others are special cases of: a near-miss changes a word that matters, and no embedding of
  this size tells "memory" for "CPU" from "RAM" for "memory". It gives up the paraphrases that
  reword the question's own words (a verifier, `verify`, can take those back).

Each guard is a plain rule over the text, configurable (switched off, extra terms, extra opposite
groups), and cheap: facts are extracted once per text and kept with the cache entry.
"""

from __future__ import annotations

import functools
import re
import threading
import unicodedata
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

try:  # the embeddings extra, as the semantic tier that uses this guard
    from snowballstemmer import stemmer as _snowball
except ImportError:  # pragma: no cover - the exact tier alone needs no guards
    _snowball = None

# --- negation ------------------------------------------------------------------------------------

NEGATORS = frozenset(
    """not no never none nobody nothing nowhere neither nor without cannot unable
    cant wont dont doesnt didnt isnt arent wasnt werent shouldnt couldnt wouldnt havent hasnt hadnt
    mustnt neednt aint""".split()
)

# --- numbers -------------------------------------------------------------------------------------

NUMBER_WORDS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "fifteen": 15,
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "ninety": 90,
    "hundred": 100,
    "thousand": 1000,
    "single": 1,
    "double": 2,
    "twice": 2,
    "once": 1,
    "half": 0.5,
    "dozen": 12,
}
ORDINALS = {
    "first": 1,
    "second": 2,
    "third": 3,
    "fourth": 4,
    "fifth": 5,
    "sixth": 6,
    "seventh": 7,
    "eighth": 8,
    "ninth": 9,
    "tenth": 10,
    "1st": 1,
    "2nd": 2,
    "3rd": 3,
    "4th": 4,
    "5th": 5,
}
# A unit after a number is part of the quantity: "10 GB" differs from "10 MB". Plurals fold.
UNITS = {
    "b": "b",
    "byte": "b",
    "kb": "kb",
    "mb": "mb",
    "gb": "gb",
    "tb": "tb",
    "pb": "pb",
    "kib": "kib",
    "mib": "mib",
    "gib": "gib",
    "tib": "tib",
    "bps": "bps",
    "kbps": "kbps",
    "mbps": "mbps",
    "gbps": "gbps",
    "tbps": "tbps",
    "ms": "ms",
    "millisecond": "ms",
    "s": "s",
    "sec": "s",
    "second": "s",
    "min": "min",
    "minute": "min",
    "h": "h",
    "hr": "h",
    "hour": "h",
    "day": "day",
    "week": "week",
    "month": "month",
    "year": "year",
    "%": "%",
    "percent": "%",
    "usd": "usd",
    "eur": "eur",
    "gbp": "gbp",
    "dollar": "usd",
    "euro": "eur",
    "user": "user",
    "seat": "seat",
    "license": "license",
    "licence": "license",
    "device": "device",
    "port": "port",
    "node": "node",
    "replica": "replica",
    "core": "core",
    "cpu": "cpu",
    "vcpu": "cpu",
    "mtu": "mtu",
    "hop": "hop",
    "route": "route",
    "prefix": "prefix",
    "ghz": "ghz",
    "mhz": "mhz",
}

# --- identifiers ---------------------------------------------------------------------------------

_INTERFACE_PREFIXES = {
    # Cisco and Arista long names and their abbreviations fold to one name.
    "gigabitethernet": "gigabitethernet",
    "gi": "gigabitethernet",
    "gig": "gigabitethernet",
    "ge": "ge-",
    "xe": "xe-",
    "et": "et-",  # Junos (ge-0/0/1) when followed by "-"; see below
    "tengigabitethernet": "tengigabitethernet",
    "te": "tengigabitethernet",
    "ten": "tengigabitethernet",
    "fortygigabitethernet": "fortygigabitethernet",
    "fo": "fortygigabitethernet",
    "hundredgige": "hundredgige",
    "hu": "hundredgige",
    "fastethernet": "fastethernet",
    "fa": "fastethernet",
    "ethernet": "ethernet",
    "eth": "eth",
    "ens": "ens",
    "enp": "enp",
    "eno": "eno",
    "wlan": "wlan",
    "port-channel": "port-channel",
    "portchannel": "port-channel",
    "po": "port-channel",
    "loopback": "loopback",
    "lo": "loopback",
    "tunnel": "tunnel",
    "tu": "tunnel",
    "management": "management",
    "mgmt": "management",
    "ma": "management",
    "serial": "serial",
    "se": "serial",
    "bundle-ether": "bundle-ether",
    "be": "bundle-ether",
    "ae": "ae",
    "irb": "irb",
    "swp": "swp",
    "bond": "bond",
    "br": "br",
    "wg": "wg",
    "tun": "tun",
    "tap": "tap",
}
_IF_NAMES = sorted(_INTERFACE_PREFIXES, key=len, reverse=True)
INTERFACE_RE = re.compile(
    r"\b(" + "|".join(re.escape(p) for p in _IF_NAMES) + r")([ ]?)(-?\d+(?:[/:.]\d+)*)\b", re.IGNORECASE
)
IPV4_RE = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?:/\d{1,2})?\b")
IPV6_RE = re.compile(r"(?<![\w:])(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}(?:/\d{1,3})?(?![\w:])", re.IGNORECASE)
CIDR_RE = re.compile(r"(?<![\w.])/(\d{1,3})\b")
MAC_RE = re.compile(r"\b(?:[0-9a-f]{2}[:-]){5}[0-9a-f]{2}\b|\b(?:[0-9a-f]{4}\.){2}[0-9a-f]{4}\b", re.IGNORECASE)
EMAIL_RE = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
URL_RE = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
# "AS 65001", "ASN 65001", "as65001", "autonomous system 65001"; not the English "as" before a number.
ASN_RE = re.compile(r"\b(?:AS|ASN|[Aa]sn|[Aa]utonomous [Ss]ystem(?: [Nn]umber)?)[ \-#]?(\d{1,10})\b|\bas(\d{1,10})\b")
VLAN_RE = re.compile(r"\bvlans?[ \-#]?(?:id[ ]?)?(\d{1,4}(?:\s*(?:,|-|and|to)\s*\d{1,4})*)\b", re.IGNORECASE)
QUOTED_RE = re.compile(r"[\"“”`]([^\"“”`]{1,80})[\"“”`]|(?<![\w])'([^']{1,80})'(?![\w])")
# A token that mixes letters and digits, or joins alphanumerics with - _ . / : and has a digit:
# an order or ticket number, a hostname, a version, an error code.
MIXED_RE = re.compile(r"(?<![\w.])(?=[\w./:-]*\d)(?=[\w./:-]*[a-z])[a-z0-9][\w./:-]*[a-z0-9](?![\w])", re.IGNORECASE)
VERSION_RE = re.compile(r"\bv\d+(?:\.\d+)*\b|\b\d+(?:\.\d+){2,3}\b", re.IGNORECASE)
NUMBER_RE = re.compile(r"(?<![\w.])[$€£]?(\d+(?:[.,]\d+)*)\s?(%|[a-z]+)?", re.IGNORECASE)
WORD_RE = re.compile(r"[A-Za-z][A-Za-z'’\-]*[A-Za-z]|[A-Za-z]")

# --- entities ------------------------------------------------------------------------------------

# Common words that are capitalised only because a sentence starts with them; never names.
_COMMON = frozenset(
    """a an the i i'm i've i'd i'll me my mine we our you your he she it its they their them this
    that these those what which who whom whose why how when where whether if is are was were be been being am do
    does did done doing have has had having can could will would shall should may might must please hi hello hey
    thanks thank ok okay yes no not and or but so because also still just only even then than there here any
    some all every each both either neither none many much more most few less least other another same such
    after before since until while for from to of in on at by with without about into over under again
    one two three is there's what's how's where's who's it's that's let let's tell show give help explain""".split()
)

# Domain terms that name a thing even when written in lower case. Extend with `terms`.
DOMAIN_TERMS = frozenset(
    """bgp ospf eigrp isis is-is rip mpls ldp rsvp vxlan evpn gre ipsec ikev2 wireguard openvpn
    stp rstp mstp lacp lldp cdp vrrp hsrp glbp bfd dhcp dns ntp snmp syslog netflow sflow ssh telnet tftp ftp sftp
    http https tls ssl tcp udp icmp arp nat pat acl qos vrf vpn ipv4 ipv6 radius tacacs ldap saml sso oauth mfa
    2fa totp sms paypal stripe visa mastercard amex ios android windows macos linux ubuntu chrome firefox safari
    okta azure aws gcp slack teams zoom jira salesforce cisco juniper arista junos nx-os eos fortinet palo
    kubernetes docker nginx""".split()
)

# --- actions and directions with opposite sides --------------------------------------------------

# Each group lists its sides; a side is words (and two-word phrases) meaning the same thing.
OPPOSITES: tuple[tuple[frozenset, ...], ...] = tuple(
    tuple(frozenset(side.split(",")) for side in group)
    for group in (
        ("enable,enabled,activate,turn on,switch on", "disable,disabled,deactivate,turn off,switch off,off"),
        ("up,online", "down,offline"),
        ("start,begin,launch,bring up,no shutdown", "stop,end,halt,kill,bring down,shut down,shutdown,terminate"),
        ("add,create,insert,attach,append,new", "remove,delete,drop,detach,erase,destroy,purge"),
        ("allow,permit,whitelist,allowlist,unblock,accept", "deny,block,blacklist,blocklist,reject,forbid,ban,prevent"),
        ("open,unlock,unlocked", "close,lock,locked"),
        (
            "increase,raise,higher,more,extend,grow,expand,maximum,max,upgrade",
            "decrease,lower,reduce,less,shrink,minimum,min,downgrade",
        ),
        ("install,installed", "uninstall,uninstalled"),
        ("subscribe,subscribed,opt in,sign up", "unsubscribe,unsubscribed,opt out,cancel,cancelled,canceled"),
        ("connect,connected,join,associate", "disconnect,disconnected,leave,dissociate"),
        ("mount", "unmount"),
        ("success,successful,successfully,succeeded,succeed", "fail,failed,failure,failing,unsuccessful"),
        ("backup,back up", "restore"),
        ("restart,reboot,reload,power cycle", "reset,factory reset,wipe,reimage"),
        ("encrypt,encrypted,encryption", "decrypt,decrypted,decryption"),
        ("import", "export"),
        ("upload,uploading,upstream", "download,downloading,downstream"),
        ("grant", "revoke"),
        ("include", "exclude"),
        ("promote", "demote"),
        ("pause,suspend,freeze", "resume,unpause,unfreeze,continue"),
        ("show,display,unhide", "hide"),
        ("before,earlier,prior", "after,later"),
        ("inbound,ingress,incoming,receive,received,rx", "outbound,egress,outgoing,send,sent,tx"),
        ("source,src", "destination,dst,dest"),
        ("tagged", "untagged"),
        ("primary,master,active", "secondary,backup,standby,passive"),
        ("first", "last"),
        ("log in,login,sign in,signin,logged in", "log out,logout,sign out,signout,logged out"),
        ("daily", "weekly", "monthly", "yearly,annual,annually"),
        ("static", "dynamic"),
        ("public", "private"),
        ("internal", "external"),
        ("refund,refunded", "charge,charged"),
        ("buy,purchase", "sell"),
        ("merge", "split"),
        ("accept,approve", "decline,reject"),
        ("ipv4", "ipv6"),
        ("tcp", "udp"),
        ("read", "write"),
        ("fast,faster", "slow,slower"),
        ("old,older,previous", "new,newer,latest,current"),
    )
)


# --- content ---------------------------------------------------------------------------------------

# English function words (closed classes: determiners, pronouns, auxiliaries and modals, wh-words,
# conjunctions, particles) and the words that only frame a request ("what is the way to", "can you
# tell me", "is it possible to"): neither changes what is asked.
FRAME = frozenset(
    """a an the this that these those some any all each every no another other such what which who whom whose
    when where why how whether if i me my mine myself we us our ours you your yours he him his she her it its
    they them their theirs one ones someone something anyone anything there here is are was were be been being
    am do does did done doing have has had having can could will would shall should may might must ought let
    lets and or but so because as than then also too very really just quite only even still already yet
    please pls hi hello hey thanks thank ok okay yes yeah quick question help need want wanted wondering wonder
    like know tell show explain way ways steps step process procedure method possible able best
    go going get got getting make sure actually currently exactly usually generally normally basically
    anyway guys someone anybody im ive id ill youre its thats whats hows wheres whos theres there's doesnt dont
    isnt cant wont didnt of find see view look lookup check display keep keeps kept""".split()
)
# Prepositions and particles: they change what is asked ("within" / "after", "from" / "to") but are
# often reworded too, so they are compared by the word they attach to, not counted as words.
PREPOSITIONS = frozenset(
    """about above across after against along among around at before behind below beneath beside between beyond
    by during except for from in inside into near off on onto out outside over past per since through
    throughout to toward towards under underneath until up upon via with within without down""".split()
)
FRAMING_PREPOSITIONS = frozenset({"to", "for", "up"})  # "the way to", "the steps for", "unable to", "look up"
_STEMMERS = threading.local()  # a snowball stemmer keeps state on itself: one per thread (loop, index thread)


@functools.lru_cache(maxsize=65_536)
def stem(word: str) -> str:
    """A word's Porter2 stem ("forgotten" and "forgot" are not folded: irregular forms stay apart)."""
    if _snowball is None:
        return word
    stemmer = getattr(_STEMMERS, "english", None)
    if stemmer is None:
        stemmer = _STEMMERS.english = _snowball("english")
    return stemmer.stemWord(word)


_TOKEN_RE = re.compile(WORD_RE.pattern + "| {2,}")  # a run of spaces: an identifier blanked out


def _content(rest: str) -> tuple[frozenset, frozenset]:
    """(The stems of the words that carry meaning, {(stem, preposition)} for each preposition and the
    meaning word it governs: the next one, unless an identifier comes first. A preposition right after
    a framing word belongs to the frame: "the way to", "unable to", "the steps for".)"""
    content, relations, pending, framed = set(), set(), [], True
    for token in _TOKEN_RE.findall(rest):
        if token.startswith(" "):  # "on 10.0.0.1": the preposition was the identifier's
            pending, framed = [], False
            continue
        word = token.lower().replace("'", "").replace("’", "")
        if word in PREPOSITIONS:
            if not (framed and word in FRAMING_PREPOSITIONS):
                pending.append(word)
        elif word in FRAME or word in NEGATORS:
            framed = True
        else:
            root = stem(word)
            content.add(root)
            relations.update((root, p) for p in pending)
            pending, framed = [], False
    return frozenset(content), frozenset(relations)


def _prepositions_agree(a: Facts, b: Facts) -> bool:
    """Each meaning word both texts name takes the same prepositions in both (or none in both)."""
    by_a: dict[str, set] = {}
    by_b: dict[str, set] = {}
    for root, p in a.relations:
        by_a.setdefault(root, set()).add(p)
    for root, p in b.relations:
        by_b.setdefault(root, set()).add(p)
    return all(by_a.get(root, set()) == by_b.get(root, set()) for root in a.content & b.content)


@dataclass(frozen=True)
class Facts:
    """What decides an answer, extracted once per text."""

    negated: int  # how many negations: "doesn't ... no one" is not "does ... no one"
    numbers: frozenset
    identifiers: frozenset
    entities: frozenset
    words: frozenset  # the text's words, lower case, for entity presence
    order: tuple  # entities and identifiers in the order the text names them
    actions: tuple  # per OPPOSITES group: frozenset of the sides the text names
    content: frozenset = frozenset()  # the stems of the words that carry meaning
    relations: frozenset = frozenset()  # (stem, preposition) pairs


class GuardConfig(BaseModel):
    """Which false-hit guards run (all by default), and domain words to add to them."""

    model_config = ConfigDict(extra="forbid")
    negation: bool = True
    numbers: bool = True
    identifiers: bool = True
    entities: bool = True
    actions: bool = True
    order: bool = True
    content: bool = True
    terms: list[str] = Field([], description="more domain terms that name a thing (product names, protocols)")
    opposites: list[list[str]] = Field([], description='more opposite groups, a side per item: ["promote", "demote"]')
    _groups: tuple = PrivateAttr(())
    _terms: frozenset = PrivateAttr(frozenset())

    def model_post_init(self, context) -> None:
        extra = tuple(tuple(frozenset(s.lower().split(",")) for s in g) for g in self.opposites)
        self._groups = OPPOSITES + extra
        self._terms = DOMAIN_TERMS | {t.lower() for t in self.terms}


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).replace("’", "'").replace("‘", "'")
    return re.sub(r"\s+", " ", text).strip()


def _words(text: str) -> list[str]:
    return [w.lower().replace("'", "").replace("’", "") for w in WORD_RE.findall(text)]


def _stem(word: str) -> str:
    """A crude fold of plurals for units: 'days' -> 'day', 'licenses' -> 'license'."""
    if word in UNITS:
        return word
    if word.endswith("s") and word[:-1] in UNITS:
        return word[:-1]
    return word


def _number(value: str) -> str:
    value = value.replace(",", "") if re.fullmatch(r"\d{1,3}(,\d{3})+", value) else value.replace(",", ".")
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() else str(number)


def _interface(prefix: str, space: str, number: str) -> str | None:
    if space and len(prefix) < 4 and "/" not in number:
        return None  # "be 3", "to 5": words before a number, not an interface
    canon = _INTERFACE_PREFIXES[prefix.lower()]
    if canon.endswith("-"):  # Junos names need their dash: ge-0/0/1
        if not number.startswith("-"):
            return None
        return f"if:{canon}{number[1:]}"
    if number.startswith("-"):
        return None
    return f"if:{canon}{number}"


def _vlan_ids(spec: str) -> list[str]:
    ids = re.findall(r"\d+", spec)
    if re.search(r"-|to", spec) and len(ids) == 2:
        return [f"vlan:{ids[0]}-{ids[1]}"]
    return [f"vlan:{int(i)}" for i in ids]


def extract(text: str, config: GuardConfig | None = None) -> Facts:
    """The facts of one text (a query's user turns)."""
    config = config or GuardConfig()
    text = normalize(text)
    rest = text
    identifiers: set[str] = set()
    position: dict[str, int] = {}  # where each identifier and entity first occurs, for the order guard

    def take(pattern: re.Pattern, make) -> None:
        nonlocal rest

        def replace(m: re.Match) -> str:
            value = make(m)
            if value is None:
                return m.group(0)
            for item in [value] if isinstance(value, str) else value:
                identifiers.add(item)
                position.setdefault(item, m.start())
            return " " * len(m.group(0))  # blanked at the same length, so positions stay the text's

        rest = pattern.sub(replace, rest)

    take(URL_RE, lambda m: "url:" + m.group(0).lower().rstrip(".,;:?!)"))
    take(EMAIL_RE, lambda m: "email:" + m.group(0).lower())
    take(MAC_RE, lambda m: "mac:" + re.sub(r"[^0-9a-f]", "", m.group(0).lower()))
    take(IPV4_RE, lambda m: "ip:" + m.group(0))
    take(
        IPV6_RE,
        lambda m: (
            "ip:" + m.group(0).lower()
            if m.group(0).count(":") >= 2 and re.search(r"[0-9a-f]", m.group(0), re.IGNORECASE)
            else None
        ),
    )
    take(CIDR_RE, lambda m: "prefix:/" + m.group(1))
    take(ASN_RE, lambda m: "as:" + str(int(m.group(1) or m.group(2))))
    take(VLAN_RE, lambda m: _vlan_ids(m.group(1)))
    take(INTERFACE_RE, lambda m: _interface(m.group(1), m.group(2), m.group(3)))
    take(QUOTED_RE, lambda m: "quote:" + (m.group(1) or m.group(2)).strip().lower())
    take(VERSION_RE, lambda m: "version:" + m.group(0).lower().lstrip("v"))
    take(MIXED_RE, _mixed)

    numbers: set[str] = set()
    for m in NUMBER_RE.finditer(rest):
        unit = _stem((m.group(2) or "").lower())
        numbers.add(_number(m.group(1)) + (UNITS[unit] if unit in UNITS else ""))
    words = _words(rest)
    for i, word in enumerate(words):
        value = NUMBER_WORDS.get(word, ORDINALS.get(word))
        if value is None or (word == "one" and _pronoun_one(words, i)) or (word == "second" and _time_second(words, i)):
            continue
        unit = _stem(words[i + 1]) if i + 1 < len(words) else ""
        numbers.add(_number(str(value)) + (UNITS[unit] if unit in UNITS else ""))
    for word in re.findall(r"\b\d+(?:st|nd|rd|th)\b", rest.lower()):
        numbers.add(_number(str(ORDINALS.get(word, word[:-2]))))

    all_words = _words(text)
    entities: set[str] = set()
    for m in re.finditer(r"[A-Za-z][\w\-]*", rest):
        token, low = m.group(0), m.group(0).lower()
        if low in _COMMON or _stem(low) in UNITS:
            continue
        # capitalised as a sentence starts: only what lies between it and the word before (a bounded look
        # back, so a long text costs linear time, not quadratic)
        start = m.start()
        before = rest[max(0, start - 40) : start]
        initial = re.search(r"[.!?\n]\W*$", before) is not None or (
            start <= 40 and re.fullmatch(r"\W*", before) is not None
        )
        acronym = len(token) > 1 and (token.isupper() or any(c.isupper() for c in token[1:]))
        if acronym or (not initial and token[0].isupper()) or low in config._terms:
            entities.add(low)
            position.setdefault(low, m.start())

    phrases = set(all_words) | {f"{a} {b}" for a, b in zip(all_words, all_words[1:])}
    actions = tuple(frozenset(k for k, side in enumerate(group) if side & phrases) for group in config._groups)
    negated = sum(w in NEGATORS or w.startswith("non-") for w in all_words)
    order = tuple(sorted(position, key=position.__getitem__))
    content, relations = _content(rest)
    return Facts(
        negated=negated,
        numbers=frozenset(numbers),
        identifiers=frozenset(identifiers),
        entities=frozenset(entities),
        words=frozenset(all_words),
        actions=actions,
        order=order,
        content=content,
        relations=relations,
    )


def _mixed(m: re.Match) -> str | None:
    token = m.group(0).lower()
    if token in NUMBER_SUFFIXED:
        return None
    quantity = re.fullmatch(r"\d+(?:\.\d+)?([a-z%]+)", token)
    if quantity and _stem(quantity.group(1)) in UNITS:
        return None  # "10GB" is a quantity, read with the numbers as "10 GB" is
    return "id:" + token


NUMBER_SUFFIXED = frozenset(
    {
        "1st",
        "2nd",
        "3rd",
        "4th",
        "5th",
        "2fa",
        "mp3",
        "mp4",
        "h264",
        "ipv4",
        "ipv6",
        "utf8",
        "utf-8",
        "802.1q",
        "802.1x",
        "p2p",
        "b2b",
        "e2e",
        "s3",
        "ec2",
    }
)


def _pronoun_one(words: list[str], i: int) -> bool:
    """'one' as a pronoun ("which one", "this one", "one of"), not a count."""
    before = words[i - 1] if i else ""
    after = words[i + 1] if i + 1 < len(words) else ""
    return before in {
        "which",
        "this",
        "that",
        "the",
        "any",
        "no",
        "every",
        "each",
        "another",
        "new",
        "old",
        "right",
        "wrong",
        "same",
    } or after in {"of", "more", "another", "by"}


def _time_second(words: list[str], i: int) -> bool:
    """'a second' / 'per second' is a unit of time, not an ordinal."""
    before = words[i - 1] if i else ""
    return before in {"a", "per", "every", "each", "one"}


def check(a: Facts, b: Facts, config: GuardConfig | None = None) -> str | None:
    """The name of the first guard that refuses to treat the two texts as the same question, else None."""
    config = config or GuardConfig()
    if config.negation and a.negated != b.negated:
        return "negation"
    if config.numbers and a.numbers != b.numbers:
        return "numbers"
    if config.identifiers and a.identifiers != b.identifiers:
        return "identifiers"
    if config.entities and not (_present(a.entities, b.words) and _present(b.entities, a.words)):
        return "entities"
    if config.actions:
        for sides_a, sides_b in zip(a.actions, b.actions):
            if sides_a and sides_b and sides_a != sides_b:
                return "actions"
    if config.order:
        shared = set(a.order) & set(b.order)
        if [x for x in a.order if x in shared] != [x for x in b.order if x in shared]:
            return "order"  # "redistribute OSPF into BGP" is not "redistribute BGP into OSPF"
    if config.content and (a.content != b.content or not _prepositions_agree(a, b)):
        return "content"
    return None


def _present(entities: frozenset, words: frozenset) -> bool:
    """Each entity occurs in the other text's words (a plural counts: VLAN / VLANs)."""
    return all(
        e in words
        or f"{e}s" in words
        or (e.endswith("s") and e[:-1] in words)
        or all(part in words for part in e.split("-") if part)
        for e in entities
    )
