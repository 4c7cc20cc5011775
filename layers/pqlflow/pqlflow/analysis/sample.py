"""A synthetic usage history of a freemium B2B SaaS, as Segment messages (JSON Lines), deterministic by seed.

The product is a team workspace (messaging, contacts, files) sold as free / trial / pro / business. Each
account has a hidden propensity to convert. Propensity drives how intensely its users use the product, how
fast the team grows, how close it gets to its plan's limits and how often it touches paid features; the
chance of converting (`Subscription Started`) rises with propensity and, above all, after the account
reaches milestones (a team, a limit, a paid feature, collaboration). So a good PQL definition has real lift
over a bad one, and `answers()` tells which accounts really were likely to convert, and when they did.

Everything is drawn from `random.Random` instances seeded from strings (SHA-512 based, the same on every
platform and Python version), one per account, so the same `SampleConfig` gives a byte-identical file.
Timezones use their standard UTC offset (daylight saving time is ignored: an hour's shift in a synthetic
daily curve changes nothing a definition can see).

`SampleConfig.events` scales the intensity of the chatty behaviors (messages, conversations, page views,
features used) so the file has about that many events; sign-ins, team growth, limits and conversions keep
their natural pace. `duplicates` and `shuffle_window` damage the delivered stream the way at-least-once,
unordered transports do, without changing the set of distinct messages.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import random
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import accumulate
from typing import Any, TextIO

from pqlflow.kernel import clock
from pqlflow.kernel.errors import UsageError

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
TRIAL_DAYS = 14
MAX_DUPLICATE_DELAY = 1000  # a redelivered copy arrives up to this many messages after the original

# name → limits carried as group traits. `seats` is the plan's seat allowance (for paid plans: seats bought).
PLANS: dict[str, dict[str, int]] = {
    "free": {"seats": 5, "contacts_limit": 10_000, "storage_quota_bytes": 2 * 1024**3},
    "trial": {"seats": 10, "contacts_limit": 50_000, "storage_quota_bytes": 100 * 1024**3},
    "pro": {"seats": 0, "contacts_limit": 50_000, "storage_quota_bytes": 1024**4},
    "business": {"seats": 0, "contacts_limit": 250_000, "storage_quota_bytes": 5 * 1024**4},
}
PRICE_PER_SEAT = {"pro": 12, "business": 24}

# The vendor's sales reps; the `owner` group trait of a larger account is one of these emails.
REP_ROSTER: tuple[str, ...] = (
    "maya.okafor@sales.example.com",
    "daniel.weiss@sales.example.com",
    "priya.raman@sales.example.com",
    "lucas.moreau@sales.example.com",
    "hana.sato@sales.example.com",
)

# (IANA name, standard UTC offset in minutes, weight): roughly where B2B SaaS sign-ups come from.
TIMEZONES: tuple[tuple[str, int, int], ...] = (
    ("America/New_York", -300, 20), ("America/Chicago", -360, 9), ("America/Denver", -420, 4),
    ("America/Los_Angeles", -480, 15), ("America/Toronto", -300, 3), ("America/Sao_Paulo", -180, 4),
    ("America/Mexico_City", -360, 2), ("Europe/London", 0, 10), ("Europe/Dublin", 0, 1),
    ("Europe/Berlin", 60, 8), ("Europe/Paris", 60, 5), ("Europe/Madrid", 60, 2), ("Europe/Amsterdam", 60, 2),
    ("Europe/Stockholm", 60, 1), ("Africa/Lagos", 60, 1), ("Africa/Johannesburg", 120, 1),
    ("Asia/Dubai", 240, 1), ("Asia/Kolkata", 330, 5), ("Asia/Singapore", 480, 3), ("Asia/Tokyo", 540, 2),
    ("Australia/Sydney", 600, 3), ("Pacific/Auckland", 720, 1),
)
INDUSTRIES = (
    ("Software", 22), ("Marketing & Advertising", 12), ("E-commerce", 10), ("Financial Services", 8),
    ("Healthcare", 7), ("Education", 7), ("Media & Entertainment", 6), ("Manufacturing", 6),
    ("Real Estate", 5), ("Consulting", 8), ("Nonprofit", 4), ("Logistics", 5),
)
FREE_FEATURES = ("search", "templates", "tags", "reminders", "csv_export", "mentions")
PAID_FEATURES = ("automations", "advanced_reports", "custom_fields", "api_access", "sso", "audit_log")
INTEGRATIONS = ("slack", "google_drive", "salesforce", "hubspot", "zapier", "github", "jira", "outlook")
PAGES = (("Dashboard", "/"), ("Inbox", "/inbox"), ("Contacts", "/contacts"), ("Files", "/files"),
         ("Reports", "/reports"), ("Settings", "/settings"), ("Integrations", "/integrations"))
ROLES = (("member", 50), ("manager", 15), ("engineer", 12), ("sales", 10), ("marketing", 8), ("support", 5))
# (file type, share of uploads, median size in bytes); sizes are log-normal around the median.
FILE_TYPES = (("document", 50, 300_000), ("image", 33, 2_000_000), ("archive", 9, 15_000_000),
              ("video", 8, 60_000_000))

_FIRST = ("Ava", "Liam", "Sofia", "Noah", "Mia", "Mateo", "Amara", "Ethan", "Yuki", "Arjun", "Chloe", "Omar",
          "Isabela", "Lucas", "Zara", "Kenji", "Emma", "Diego", "Fatima", "Jonas", "Leila", "Ravi", "Nora",
          "Tomás", "Ingrid", "Kwame", "Mei", "Hugo", "Aisha", "Felix", "Priya", "Marco", "Elena", "Samuel",
          "Anya", "Daniel", "Grace", "Tariq", "Lena", "Wei", "Olivia", "Mohammed", "Clara", "Ibrahim", "Hana",
          "Joel", "Camila", "Sven", "Nia", "Pablo")
_LAST = ("Smith", "Garcia", "Chen", "Okafor", "Müller", "Nakamura", "Patel", "Rossi", "Johansson", "Kim",
         "Silva", "Nguyen", "Dubois", "Kowalski", "Haddad", "Brown", "Andersen", "Mensah", "Lopez", "Singh",
         "Tanaka", "Costa", "Novak", "Ibrahim", "Schmidt", "Walsh", "Fernandes", "Larsen", "Ahmed", "Moreau",
         "Popescu", "Yilmaz", "Cohen", "Reyes", "Evans", "Sato", "Khan", "Bianchi", "Murphy", "Osei")
_CO_A = ("Bright", "North", "Blue", "Silver", "Swift", "Clear", "Bold", "Green", "True", "Open", "Red",
         "Quiet", "Iron", "Lucky", "Summit", "Harbor", "Cedar", "Polar", "Amber", "Nova")
_CO_B = ("Harbor", "Peak", "Field", "Stone", "Wave", "Forge", "Pixel", "Orbit", "Ridge", "Spark", "Grove",
         "Lane", "Bridge", "River", "Leaf", "Signal", "Atlas", "Beacon", "Canyon", "Loop")
_CO_C = ("Labs", "Studio", "Group", "Partners", "Health", "Logistics", "Media", "Capital", "Works",
         "Systems", "Co", "Analytics", "Learning", "Foods", "Realty", "Agency")
# Relative activity by local hour of day: a working day with a lunch dip and a quiet night.
_HOUR_WEIGHTS = (0.15, 0.08, 0.05, 0.04, 0.05, 0.12, 0.35, 0.9, 2.2, 3.3, 3.5, 3.4, 2.5, 3.0, 3.3, 3.1, 2.7,
                 2.0, 1.3, 1.0, 0.9, 0.8, 0.55, 0.3)
_WEEKEND_FACTOR = 0.22

# One-off add-on orders some customers place after converting (`Order Completed` `revenue`, USD).
ORDER_REVENUE = (99, 199, 499)
CURRENCY = "USD"

# How much each milestone adds to an account's daily chance of converting (`_conversion_hazard`).
MILESTONE_WEIGHTS = {"team": 1.0, "limit": 1.6, "paid_feature": 1.1, "collaboration": 0.6}

_TZ_CUM = list(accumulate(w for _, _, w in TIMEZONES))
_HOUR_CUM = list(accumulate(_HOUR_WEIGHTS))
_INDUSTRY_CUM = list(accumulate(w for _, w in INDUSTRIES))
_ROLE_CUM = list(accumulate(w for _, w in ROLES))
_FILE_CUM = list(accumulate(w for _, w, _ in FILE_TYPES))
_MAX_EAST_MS = max(m for _, m, _ in TIMEZONES) * 60_000

_TRACK, _PAGE, _IDENTIFY, _GROUP = 0, 1, 2, 3


@dataclass(frozen=True)
class SampleConfig:
    """What to generate. `start` None: the history ends at today's UTC midnight (per `pqlflow.kernel.clock`)."""

    seed: int = 1
    accounts: int = 200
    days: int = 60
    start: date | None = None
    events: int | None = None
    duplicates: float = 0.0
    shuffle_window: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.accounts <= 1_000_000:
            raise UsageError(f"--accounts {self.accounts}: must be between 1 and 1,000,000")
        if not 1 <= self.days <= 3650:
            raise UsageError(f"--days {self.days}: must be between 1 and 3650")
        if self.events is not None and self.events < 1:
            raise UsageError(f"--events {self.events}: must be a positive number of events")
        if not (0.0 <= self.duplicates < 1.0) or math.isnan(self.duplicates):
            raise UsageError(f"--duplicates {self.duplicates}: must be a rate from 0 up to (not including) 1")
        if self.shuffle_window < 0:
            raise UsageError(f"--shuffle-window {self.shuffle_window}: must be 0 or more messages")

    def first_day(self) -> date:
        """The first simulated (UTC) day."""
        if self.start is not None:
            return self.start
        today = datetime.fromtimestamp(clock.now(), UTC).date()
        return today - timedelta(days=self.days)


@dataclass
class SampleStats:
    """What a run produced: counts for the summary line and the bench."""

    messages: int = 0  # distinct messages
    duplicates: int = 0  # redelivered copies added on top
    accounts: int = 0
    converted: int = 0
    start: str = ""
    end: str = ""
    by_type: dict[str, int] = field(default_factory=dict)

    @property
    def lines(self) -> int:
        return self.messages + self.duplicates


def parse_start(text: str) -> date:
    """`--start`: an ISO date (YYYY-MM-DD)."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--start '{text}': not an ISO date (YYYY-MM-DD)") from None


class Sample:
    """One generated history: iterate `lines()` once; then `stats` and `answers()` describe it."""

    def __init__(self, config: SampleConfig) -> None:
        self.config = config
        self.stats = SampleStats()
        self._sim: _Simulation | None = None
        # With a target count, a pilot run now finds the scale (and refuses an impossible target early).
        self.scale = _calibrate(config) if config.events is not None else 1.0

    def lines(self) -> Iterator[str]:
        """The JSON Lines (without newlines), in delivery order: time order unless damaged on purpose."""
        cfg = self.config
        self._sim = sim = _Simulation(cfg, self.scale)
        stream: Iterable[str] = sim.encoded()
        if cfg.duplicates > 0:
            stream = _redeliver(stream, cfg.duplicates, random.Random(f"pqlflow-sample:{cfg.seed}:dup"),
                                self.stats)
        if cfg.shuffle_window > 0:
            stream = _shuffle(stream, cfg.shuffle_window, random.Random(f"pqlflow-sample:{cfg.seed}:shuffle"))
        yield from stream
        st = self.stats
        st.messages = sim.count
        st.accounts = len(sim.accounts)
        st.converted = sum(1 for a in sim.accounts if a.converted_ms is not None)
        st.start = sim.first_day.isoformat()
        st.end = (sim.first_day + timedelta(days=cfg.days)).isoformat()
        st.by_type = dict(sorted(sim.by_type.items()))

    def answers(self) -> dict[str, Any]:
        """The hidden truth per account (propensity, milestones, conversion), for evaluating definitions."""
        if self._sim is None:  # the truth does not depend on encoding: simulate only
            self._sim = _Simulation(self.config, self.scale)
            for _ in self._sim.raw():
                pass
        return self._sim.answers()


    def write(self, out: TextIO) -> SampleStats:
        """Write the history to a text stream, one message per line."""
        chunk: list[str] = []
        for line in self.lines():
            chunk.append(line)
            if len(chunk) >= 4096:
                chunk.append("")
                out.write("\n".join(chunk))
                chunk.clear()
        if chunk:
            chunk.append("")
            out.write("\n".join(chunk))
        return self.stats


def _calibrate(cfg: SampleConfig) -> float:
    """The intensity scale that gives about `cfg.events` messages: a pilot run at scale 1, then linear."""
    pilot = _Simulation(cfg, 1.0)
    for _ in pilot.raw():
        pass
    fixed = pilot.count - pilot.scaled
    assert cfg.events is not None
    if pilot.scaled == 0 or cfg.events <= fixed:
        raise UsageError(
            f"--events {cfg.events}: too few for {cfg.accounts} accounts over {cfg.days} days — sign-ups, "
            f"identities, sign-ins and team growth alone make {fixed:,}; ask for more events or fewer "
            "accounts"
        )
    return (cfg.events - fixed) / pilot.scaled


def _redeliver(lines: Iterable[str], rate: float, rng: random.Random, stats: SampleStats) -> Iterator[str]:
    """Deliver each message, and with probability `rate` once more, up to MAX_DUPLICATE_DELAY lines later."""
    pending: list[tuple[int, int, str]] = []
    for i, line in enumerate(lines, 1):
        while pending and pending[0][0] < i:
            yield heapq.heappop(pending)[2]
        yield line
        if rng.random() < rate:
            stats.duplicates += 1
            heapq.heappush(pending, (i + rng.randint(0, MAX_DUPLICATE_DELAY), stats.duplicates, line))
    while pending:
        yield heapq.heappop(pending)[2]


def _shuffle(lines: Iterable[str], window: int, rng: random.Random) -> Iterator[str]:
    """Out-of-order delivery: every message lands at most `window` positions from where it was."""
    heap: list[tuple[float, int, str]] = []
    for i, line in enumerate(lines):
        heapq.heappush(heap, (i + rng.random() * window, i, line))
        while heap and heap[0][0] < i + 1:  # every later message gets a key >= i + 1
            yield heapq.heappop(heap)[2]
    while heap:
        yield heapq.heappop(heap)[2]


_CLOCK_FACE: list[str] = []


def _minute_of(account_id: str, day: int) -> int:
    """0–179: a stable minute offset for an account's day (not drawn from any random stream)."""
    return int(hashlib.sha256(f"{account_id}:{day}".encode()).hexdigest()[:6], 16) % 180


def _clock_face() -> list[str]:
    """"HH:MM:SS" for every second of a day, built on first use."""
    if not _CLOCK_FACE:
        _CLOCK_FACE.extend(f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(86400))
    return _CLOCK_FACE


def _pick(cum: list[float] | list[int], r: float) -> int:
    return bisect_right(cum, r * cum[-1])


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0.0:
        return 0
    if lam < 25.0:
        limit = math.exp(-lam)
        k = 0
        p = rng.random()
        while p > limit:
            k += 1
            p *= rng.random()
        return k
    return max(0, int(rng.gauss(lam, math.sqrt(lam)) + 0.5))


class _User:
    __slots__ = ("id", "first", "last", "email", "tz", "offset_ms", "role", "level", "joined_day",
                 "last_active", "friends", "friend_target", "admin", "created_at", "joined_ms")
    id: str
    first: str
    last: str
    email: str
    tz: str
    offset_ms: int
    role: str
    level: float
    joined_day: int
    last_active: int
    friends: int
    friend_target: int
    admin: bool
    created_at: str
    joined_ms: int

    def __init__(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self, k, v)


class _Account:
    __slots__ = (
        "index", "id", "name", "domain", "industry", "employees", "tz", "offset_ms", "p", "rng", "noise",
        "owner", "plan", "plan_at_signup", "signup_day", "trial_end_day", "team_target", "users", "pending",
        "blocked", "contacts", "contacts_goal", "storage", "integrations", "shared", "paid_days",
        "milestones", "converted_ms", "converted_plan", "mrr", "churn_day", "dormant", "aff_msg",
        "aff_conv", "aff_contacts", "aff_files", "file_mult", "velocity", "paid_interest", "video_share",
        "created_at", "emails", "seats", "pricing_views", "storage_ms", "contacts_ms", "money",
    )
    index: int
    id: str
    name: str
    domain: str
    industry: str
    employees: int
    tz: str
    offset_ms: int
    p: float  # the hidden propensity to convert
    rng: random.Random
    noise: random.Random
    owner: str | None
    plan: str
    plan_at_signup: str
    signup_day: int
    trial_end_day: int
    team_target: int
    users: list[_User]
    pending: list[tuple[int, int]]
    blocked: int
    contacts: int
    contacts_goal: float
    storage: int
    integrations: list[str]
    shared: int
    paid_days: int
    milestones: dict[str, int]
    converted_ms: int | None
    converted_plan: str | None
    mrr: int
    churn_day: int
    dormant: bool
    aff_msg: float
    aff_conv: float
    aff_contacts: float
    aff_files: float
    file_mult: float
    velocity: float
    paid_interest: float
    video_share: float
    created_at: str
    emails: set[str]
    seats: int
    pricing_views: int
    storage_ms: int
    contacts_ms: int
    money: _Money | None

    def __init__(self) -> None:
        self.users: list[_User] = []
        self.pending: list[tuple[int, int]] = []  # (join day, inviter index)
        self.integrations: list[str] = []
        self.milestones: dict[str, int] = {}
        self.emails: set[str] = set()
        self.converted_ms: int | None = None
        self.converted_plan: str | None = None
        self.mrr = 0
        self.blocked = 0
        self.shared = 0
        self.paid_days = 0
        self.pricing_views = 0
        self.storage = 0
        self.contacts = 0
        self.storage_ms = 0
        self.contacts_ms = 0
        self.money = None


class _Money:
    """A customer's life after converting, drawn from its own random stream (so the usage before it, and
    every planted answer about converting, is the same with or without it): an add-on order, and a churn."""

    __slots__ = ("order_day", "order_revenue", "churn_day", "churn", "churned_ms", "ordered_ms")

    def __init__(self, seed: int, account_id: str, converted_day: int) -> None:
        r = random.Random(f"{seed}:{account_id}:money")
        self.order_day = converted_day + 2 + int(r.random() * 20) if r.random() < 0.5 else -1
        self.order_revenue = ORDER_REVENUE[int(r.random() * len(ORDER_REVENUE))]
        self.churn_day = converted_day + 7 + int(r.random() * 30) if r.random() < 0.4 else -1
        self.churn = "subscription_cancelled" if r.random() < 0.6 else "plan_downgraded"
        self.churned_ms: int | None = None
        self.ordered_ms: int | None = None


class _Simulation:
    """A day-by-day simulation of every account; yields events in time order."""

    def __init__(self, cfg: SampleConfig, scale: float) -> None:
        self.cfg = cfg
        self.scale = scale
        self.first_day = cfg.first_day()
        self.start_ms = int(datetime(self.first_day.year, self.first_day.month, self.first_day.day,
                                     tzinfo=UTC).timestamp() * 1000)
        self.end_ms = self.start_ms + cfg.days * DAY_MS
        self.weekday0 = self.first_day.weekday()
        key = f"{cfg.seed}:{cfg.accounts}:{cfg.days}:{self.first_day.isoformat()}:{cfg.events}"
        self.id_prefix = hashlib.sha256(key.encode()).hexdigest()[:10]
        self.count = 0
        self.scaled = 0
        self.by_type: dict[str, int] = {}
        self._seq = 0
        self._buf: list[tuple[Any, ...]] = []
        self._day_prefix: dict[int, str] = {}
        seen_ids: set[str] = set()
        self.accounts = [self._profile(i, seen_ids) for i in range(cfg.accounts)]

    # ---- account profiles -------------------------------------------------------------------------------

    def _profile(self, i: int, seen_ids: set[str]) -> _Account:
        seed = self.cfg.seed
        pr = random.Random(f"pqlflow-sample:{seed}:{i}:profile")
        a = _Account()
        a.index = i
        a.rng = random.Random(f"pqlflow-sample:{seed}:{i}:behavior")
        a.noise = random.Random(f"pqlflow-sample:{seed}:{i}:chatter")
        acct_id = f"acct_{pr.getrandbits(32):08x}"
        while acct_id in seen_ids:
            acct_id = f"acct_{pr.getrandbits(32):08x}"
        seen_ids.add(acct_id)
        a.id = acct_id
        words = (pr.choice(_CO_A), pr.choice(_CO_B), pr.choice(_CO_C))
        a.name = " ".join(words)
        a.domain = f"{(words[0] + words[1]).lower()}{i}.example.com"
        a.industry = INDUSTRIES[_pick(_INDUSTRY_CUM, pr.random())][0]
        a.employees = max(1, min(20_000, int(math.exp(pr.gauss(3.1, 1.55)))))
        tz_i = _pick(_TZ_CUM, pr.random())
        a.tz = TIMEZONES[tz_i][0]
        a.offset_ms = TIMEZONES[tz_i][1] * 60_000
        big = pr.random()  # drawn here so the trial draw below stays put
        trial = pr.random() < (0.35 if a.employees < 200 else 0.55)
        # Propensity: mostly low, a long tail of eager accounts; trials and mid-size companies lean higher.
        p = pr.betavariate(1.4, 3.2)
        if trial:
            p = min(0.98, p * 1.15 + 0.03)
        if 20 <= a.employees <= 2000:
            p = min(0.98, p * 1.1)
        a.p = p
        a.plan = a.plan_at_signup = "trial" if trial else "free"
        days = self.cfg.days
        span = max(1, int(days * 0.75))
        a.signup_day = min(days - 1, int(span * pr.random() ** 1.3))
        a.trial_end_day = a.signup_day + TRIAL_DAYS if trial else -1
        # Team size: most 1–5, a few 50+; bigger companies have bigger teams.
        u = big ** (1.0 / (1.0 + 0.35 * math.log10(a.employees)))
        if u < 0.70:
            size = 1 + _pick([30, 55, 75, 90, 100], pr.random())
        elif u < 0.92:
            size = pr.randint(6, 20)
        elif u < 0.965:
            size = pr.randint(21, 49)
        else:
            size = pr.randint(50, 150)
        a.team_target = max(1, min(size, a.employees))
        a.owner = None
        if (a.employees >= 200 and pr.random() < 0.7) or (100 <= a.employees < 200 and pr.random() < 0.2):
            a.owner = REP_ROSTER[pr.randrange(len(REP_ROSTER))]
        a.dormant = pr.random() < 0.16 * (1.0 - p)
        a.churn_day = -1
        if not a.dormant and pr.random() < 0.45 * (1.0 - p) ** 1.5:
            a.churn_day = a.signup_day + 3 + int(pr.random() * 35)
        # What the team mostly uses the product for; intensity within each is driven by propensity.
        a.aff_msg = pr.uniform(0.3, 1.6)
        a.aff_conv = pr.uniform(0.2, 1.5)
        a.aff_contacts = pr.uniform(0.1, 1.5)
        a.aff_files = pr.uniform(0.2, 1.5)
        a.video_share = 3.0 if a.industry == "Media & Entertainment" else pr.uniform(0.4, 1.6)
        a.velocity = 0.03 + 0.32 * p**1.2
        a.paid_interest = 0.01 + 0.22 * p**2
        a.contacts_goal = PLANS["free"]["contacts_limit"] * min(0.995, 0.05 + 1.3 * p**1.1 * a.aff_contacts)
        # How heavy the files are (HD video vs. spreadsheets): eager, file-centric teams fill the quota.
        a.file_mult = math.exp(pr.gauss(0.2, 0.7)) * (0.5 + 8.0 * p**1.5) * a.aff_files
        a.seats = PLANS[a.plan]["seats"]
        return a

    # ---- the run ----------------------------------------------------------------------------------------

    def raw(self) -> Iterator[tuple[Any, ...]]:
        """Event tuples `(ms, seq, kind, account_id, user, name, payload)` in time order."""
        buf = self._buf
        for d in range(self.cfg.days):
            for a in self.accounts:
                if d >= a.signup_day:
                    self._day(a, d)
            # Nothing generated from tomorrow on can be earlier than tomorrow's midnight in the furthest east.
            bound = self.start_ms + (d + 1) * DAY_MS - _MAX_EAST_MS
            buf.sort()
            cut = bisect_left(buf, (bound,))
            if cut:
                yield from buf[:cut]
                del buf[:cut]
        buf.sort()
        yield from buf
        buf.clear()

    def encoded(self) -> Iterator[str]:
        """The messages as compact JSON. Track and page lines are assembled directly (every value in them is
        an id, a name or a timestamp this module made, none needing escapes) — the same bytes `json.dumps`
        gives, at a third of the cost; identify and group traits go through the encoder."""
        dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        prefix = self.id_prefix
        stamp = self._stamp
        for ms, seq, kind, acct, user, name, payload in self.raw():
            head = f'"messageId":"{prefix}-{seq:07x}","timestamp":"{stamp(ms)}","userId":"{user.id}"'
            if kind == _TRACK:
                if payload:
                    yield (f'{{"type":"track",{head},"event":"{name}","properties":{dumps(payload)},'
                           f'"context":{{"groupId":"{acct}"}}}}')
                else:
                    yield f'{{"type":"track",{head},"event":"{name}","context":{{"groupId":"{acct}"}}}}'
            elif kind == _PAGE:
                yield (f'{{"type":"page",{head},"name":"{name}","properties":{dumps(payload)},'
                       f'"context":{{"groupId":"{acct}"}}}}')
            elif kind == _IDENTIFY:
                yield (f'{{"type":"identify",{head},"traits":{dumps(payload)},'
                       f'"context":{{"groupId":"{acct}","timezone":"{user.tz}"}}}}')
            else:
                yield (f'{{"type":"group",{head},"groupId":"{acct}","traits":{dumps(payload)},'
                       f'"context":{{"timezone":"{user.tz}"}}}}')

    def _stamp(self, ms: int) -> str:
        day, rem = divmod(ms, DAY_MS)
        prefix = self._day_prefix.get(day)
        if prefix is None:
            prefix = datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m-%dT")
            self._day_prefix[day] = prefix
        second, milli = divmod(rem, 1000)
        return f"{prefix}{_clock_face()[second]}.{milli:03d}Z"

    def _emit(self, ms: int, kind: int, a: _Account, user: _User, name: str | None, payload: Any,
              scaled: bool = False) -> bool:
        if ms < self.start_ms or ms >= self.end_ms:
            return False
        self._seq += 1
        self._buf.append((ms, self._seq, kind, a.id, user, name, payload))
        self.count += 1
        if scaled:
            self.scaled += 1
        # Every track event has a name; the check only tells the type checker so.
        label = name if kind == _TRACK and name is not None else (
            "page" if kind == _PAGE else ("identify" if kind == _IDENTIFY else "group"))
        self.by_type[label] = self.by_type.get(label, 0) + 1
        return True

    # ---- one account, one day ---------------------------------------------------------------------------

    def _local_midnight(self, d: int, offset_ms: int) -> int:
        return self.start_ms + d * DAY_MS - offset_ms

    def _session_start(self, rng: random.Random, d: int, user: _User) -> int:
        """A time on local day `d` from the daily curve in the user's timezone, never before they joined."""
        hour = _pick(_HOUR_CUM, rng.random())
        t = self._local_midnight(d, user.offset_ms) + hour * HOUR_MS + int(rng.random() * HOUR_MS)
        return t if t > user.joined_ms else user.joined_ms + 60_000 + int(rng.random() * HOUR_MS)

    def _day(self, a: _Account, d: int) -> None:
        rng = a.rng
        nz = a.noise
        if d == a.signup_day:
            self._sign_up(a, d)
        paying = a.converted_ms is not None
        if a.money is not None:
            self._customer_day(a, d)
        if not paying and d == a.trial_end_day:
            self._trial_end(a, d)
        elif not paying and d > a.signup_day and not a.dormant:
            self._maybe_convert(a, d)
        self._team_growth(a, d)
        # Lifecycle: onboarding burst, then habit; dormant accounts fade at once, churned ones at churn_day.
        age = d - a.signup_day
        if a.dormant:
            life = 1.0 if age == 0 else 0.02
        elif a.churn_day >= 0 and d >= a.churn_day:
            life = 0.03
        else:
            life = 1.25 if age < 7 else 1.0
            if a.converted_ms is not None:
                life *= 1.15
        intensity = (0.35 + 1.9 * a.p**1.1) * life
        weekday = (self.weekday0 + d) % 7
        day_factor = _WEEKEND_FACTOR if weekday >= 5 else 1.0
        scale = self.scale
        active_users = 0
        uploads_today = 0
        last_uploader: _User | None = None
        last_upload_ms = 0
        syncs: list[tuple[int, _User, float]] = []
        for u in a.users:
            if u.joined_day > d:
                continue
            p_active = min(0.95, (0.18 + 0.55 * a.p) * u.level * day_factor * life)
            if u.joined_day == d:
                p_active = 1.0
            if rng.random() >= p_active:
                continue
            active_users += 1
            u.last_active = d
            sessions = [self._session_start(rng, d, u)
                        for _ in range(1 + _poisson(rng, 0.3 * intensity))]
            sessions.sort()
            n_sess = len(sessions)
            for s in sessions:
                self._emit(s, _TRACK, a, u, "Signed In", None)

            def at(r: random.Random = rng, sessions: list[int] = sessions, n_sess: int = n_sess) -> int:
                return sessions[int(r.random() * n_sess)] + 5000 + int(r.random() * 2_400_000)

            # Chatty behaviors (scaled by `--events`) draw from their own stream, so the scale changes
            # how many there are and never who signs in, grows, hits a limit or converts.
            for _ in range(_poisson(nz, 2.2 * n_sess * scale)):
                name, path = PAGES[int(nz.random() * len(PAGES))]
                self._emit(at(nz), _PAGE, a, u, name, {"path": path}, scaled=True)
            for _ in range(_poisson(nz, 12.0 * intensity * a.aff_msg * u.level * scale)):
                self._emit(at(nz), _TRACK, a, u, "Message Sent", None, scaled=True)
            for _ in range(_poisson(nz, 0.9 * intensity * a.aff_conv * scale)):
                self._emit(at(nz), _TRACK, a, u, "Conversation Started", None, scaled=True)
            if a.converted_ms is not None:
                q_paid = 0.45
            elif a.plan == "trial":
                q_paid = min(0.5, 0.04 + 1.5 * a.paid_interest)
            else:
                q_paid = a.paid_interest * (1.0 + 0.5 * len(a.milestones))
            used_paid = rng.random() < 1.0 - math.exp(-1.6 * intensity * q_paid)
            if used_paid:
                feature = PAID_FEATURES[int(rng.random() * len(PAID_FEATURES))]
                self._emit(at(), _TRACK, a, u, "Feature Used", {"feature": feature, "tier": "paid"})
            for _ in range(_poisson(nz, 1.6 * intensity * scale)):
                if used_paid and nz.random() < q_paid:
                    feature, tier = PAID_FEATURES[int(nz.random() * len(PAID_FEATURES))], "paid"
                else:
                    feature, tier = FREE_FEATURES[int(nz.random() * len(FREE_FEATURES))], "free"
                self._emit(at(nz), _TRACK, a, u, "Feature Used", {"feature": feature, "tier": tier},
                           scaled=True)
            if used_paid and a.converted_ms is None:
                a.paid_days += 1
                if a.paid_days >= 3:
                    self._milestone(a, "paid_feature", d)
            if u.friends < u.friend_target and rng.random() < 0.35:
                for _ in range(1 + _poisson(rng, 0.6 * intensity)):
                    if u.friends >= u.friend_target:
                        break
                    u.friends += 1
                    self._emit(at(), _TRACK, a, u, "Friend Added", None)
            quota = PLANS[a.plan]["storage_quota_bytes"] if a.converted_ms is None else 1 << 60
            for _ in range(_poisson(rng, 0.35 * intensity * a.aff_files)):
                ftype, _, median = FILE_TYPES[_pick(_FILE_CUM, rng.random())]
                if ftype == "video" and rng.random() > min(1.0, 0.5 * a.video_share):
                    ftype, median = FILE_TYPES[1][0], FILE_TYPES[1][2]
                size = int(median * a.file_mult * math.exp(rng.gauss(0.0, 0.9)))
                if a.storage + size > quota:
                    continue  # the upload is refused at the quota
                ms = at()
                if self._emit(ms, _TRACK, a, u, "File Uploaded", {"file_type": ftype, "size_bytes": size}):
                    a.storage += size
                    uploads_today += 1
                    if ms > last_upload_ms:
                        last_uploader, last_upload_ms = u, ms
            for _ in range(_poisson(rng, 0.07 * intensity * a.aff_files)):
                a.shared += 1
                self._emit(at(), _TRACK, a, u, "Folder Shared", None)
            pricing_p = 0.01 + 0.03 * a.p + 0.04 * min(2, len(a.milestones)) * (a.converted_ms is None)
            if rng.random() < pricing_p:
                a.pricing_views += 1
                self._emit(at(), _PAGE, a, u, "Pricing", {"path": "/pricing"})
            if a.contacts < a.contacts_goal and rng.random() < (0.05 + 0.25 * a.p) * a.aff_contacts * u.level:
                syncs.append((at(), u, a.contacts_goal * (0.05 + 0.25 * rng.random())))  # an import or a sync
            if rng.random() < 0.02:  # profile edits re-identify now and then
                self._emit(at(), _IDENTIFY, a, u, None, self._user_traits(a, u))
        # Gauges are reported in time order, so the latest report by event time is the largest value.
        syncs.sort(key=lambda s: s[0])
        for ms, u, step in syncs:
            a.contacts = int(min(a.contacts_goal, a.contacts + max(1.0, step)))
            a.contacts_ms = max(ms, a.contacts_ms + 1000)
            self._emit(a.contacts_ms, _TRACK, a, u, "Contacts Updated", {"total": a.contacts})
        if uploads_today and last_uploader is not None:
            a.storage_ms = max(last_upload_ms + 1500, a.storage_ms + 1000)
            self._emit(a.storage_ms, _TRACK, a, last_uploader, "Storage Updated", {"used_bytes": a.storage})
        if active_users and len(a.integrations) < 4 and rng.random() < (0.01 + 0.06 * a.p) * life:
            free = [x for x in INTEGRATIONS if x not in a.integrations]
            name = free[int(rng.random() * len(free))]
            a.integrations.append(name)
            admin = a.users[0]
            self._emit(self._session_start(rng, d, admin), _TRACK, a, admin,
                       "Integration Connected", {"integration": name})
        self._check_milestones(a, d)

    def _milestone(self, a: _Account, name: str, d: int) -> None:
        if name not in a.milestones:
            a.milestones[name] = d

    def _check_milestones(self, a: _Account, d: int) -> None:
        """Milestones count on the way to converting; a paying account has no more to reach."""
        if a.converted_ms is not None:
            return
        recent = sum(1 for u in a.users if u.joined_day <= d and u.last_active >= d - 13)
        if recent >= 3:
            self._milestone(a, "team", d)
        limits = PLANS["free"] if a.plan != "trial" else PLANS["trial"]
        if (a.contacts >= 0.8 * limits["contacts_limit"] or a.storage >= 0.9 * limits["storage_quota_bytes"]
                or a.blocked):
            self._milestone(a, "limit", d)
        if a.integrations and a.shared:
            self._milestone(a, "collaboration", d)

    # ---- lifecycle events -------------------------------------------------------------------------------

    def _new_user(self, a: _Account, d: int, admin: bool) -> _User:
        rng = a.rng
        first = _FIRST[int(rng.random() * len(_FIRST))]
        last = _LAST[int(rng.random() * len(_LAST))]
        local = f"{_ascii(first)}.{_ascii(last)}".lower()
        email = f"{local}@{a.domain}"
        n = 2
        while email in a.emails:
            email = f"{local}{n}@{a.domain}"
            n += 1
        a.emails.add(email)
        if rng.random() < 0.85:
            tz, offset = a.tz, a.offset_ms
        else:
            i = _pick(_TZ_CUM, rng.random())
            tz, offset = TIMEZONES[i][0], TIMEZONES[i][1] * 60_000
        role = "admin" if admin else ROLES[_pick(_ROLE_CUM, rng.random())][0]
        level = min(2.2, math.exp(rng.gauss(0.0, 0.45))) * (1.2 if admin else 1.0)
        return _User(id=f"usr_{a.index:x}{len(a.users):x}{rng.getrandbits(24):06x}", first=first, last=last,
                     email=email, tz=tz, offset_ms=offset, role=role, level=level, joined_day=d,
                     last_active=-100, friends=0, friend_target=_poisson(rng, 1.0 + 9.0 * a.p**1.2),
                     admin=admin, created_at="", joined_ms=0)

    def _user_traits(self, a: _Account, u: _User) -> dict[str, Any]:
        return {"email": u.email, "name": f"{u.first} {u.last}", "first_name": u.first, "last_name": u.last,
                "timezone": u.tz, "role": u.role,
                "created_at": u.created_at}

    def _customer_day(self, a: _Account, d: int) -> None:
        """A customer's money events: its add-on order, and its churn (a cancellation, or its plan back to
        free), at a working hour of the buyer's day. Usage goes on as before: the planted usage is unchanged."""
        money = a.money
        assert money is not None
        if money.churned_ms is not None:
            return
        admin = a.users[0]
        t = self._local_midnight(d, admin.offset_ms) + 14 * HOUR_MS + (_minute_of(a.id, d) * 60_000)
        if d == money.order_day and self._emit(t, _TRACK, a, admin, "Order Completed", {
                "order_id": f"ord-{a.id}-{d}", "revenue": money.order_revenue, "currency": CURRENCY,
                "products": [{"product_id": "addon-storage", "price": money.order_revenue, "quantity": 1}]}):
            money.ordered_ms = t
        if d != money.churn_day:
            return
        if money.churn == "subscription_cancelled":
            if self._emit(t + 3_600_000, _TRACK, a, admin, "Subscription Cancelled",
                          {"plan": a.converted_plan, "mrr": a.mrr, "currency": CURRENCY,
                           "reason": "too_expensive"}):
                money.churned_ms = t + 3_600_000
        else:
            money.churned_ms = t + 3_600_000  # the next group call says free
            if not self._emit(t + 3_600_000, _GROUP, a, admin, None, self._group_traits(a)):
                money.churned_ms = None

    def _group_traits(self, a: _Account) -> dict[str, Any]:
        limits = PLANS[a.plan]
        money = a.money
        downgraded = money is not None and money.churn == "plan_downgraded" and money.churned_ms is not None
        traits: dict[str, Any] = {
            "name": a.name, "industry": a.industry, "employees": a.employees,
            "plan": "free" if downgraded else a.plan,
            "seats": a.seats, "contacts_limit": limits["contacts_limit"],
            "storage_quota_bytes": limits["storage_quota_bytes"], "website": f"https://{a.domain}",
            "created_at": a.created_at,
        }
        if a.owner:
            traits["owner"] = a.owner
        return traits

    def _sign_up(self, a: _Account, d: int) -> None:
        rng = a.rng
        founder = self._new_user(a, d, admin=True)
        a.users.append(founder)
        t = max(self._session_start(rng, d, founder), self.start_ms + int(rng.random() * HOUR_MS))
        founder.joined_ms = t
        a.created_at = founder.created_at = self._stamp(t)
        self._emit(t, _IDENTIFY, a, founder, None, self._user_traits(a, founder))
        self._emit(t + 400, _TRACK, a, founder, "Signed Up",
                   {"method": ("google", "email", "microsoft")[_pick([45, 85, 100], rng.random())]})
        self._emit(t + 900, _GROUP, a, founder, None, self._group_traits(a))
        if a.plan == "trial":
            self._emit(t + 1300, _TRACK, a, founder, "Trial Started",
                       {"trial_plan": "pro", "trial_days": TRIAL_DAYS})

    def _team_growth(self, a: _Account, d: int) -> None:
        rng = a.rng
        # Invitees join (if a seat is free); a full plan blocks them, which is a limit the team feels.
        if a.pending:
            still: list[tuple[int, int]] = []
            for join_day, inviter_i in a.pending:
                if join_day > d:
                    still.append((join_day, inviter_i))
                elif len(a.users) < a.seats or a.converted_ms is not None:
                    if a.converted_ms is not None and len(a.users) >= a.seats:
                        a.seats = len(a.users) + 1  # paying teams buy the seat
                    self._join(a, d, inviter_i)
                else:
                    a.blocked += 1
                    if rng.random() < 0.6:
                        still.append((d + 1 + int(rng.random() * 5), inviter_i))
            a.pending = still
        if a.dormant or (a.churn_day >= 0 and d >= a.churn_day):
            return
        want = a.team_target - len(a.users) - len(a.pending)
        if want <= 0 or not a.users:
            return
        age = d - a.signup_day
        rate = a.velocity * (1.8 if age < 14 else 1.0) * (2.0 if a.converted_ms is not None else 1.0)
        for _ in range(min(want, _poisson(rng, rate * (1 + want / 4)))):
            inviter_i = 0 if rng.random() < 0.6 else int(rng.random() * len(a.users))
            inviter = a.users[inviter_i]
            if inviter.joined_day > d:
                inviter_i, inviter = 0, a.users[0]
            role = ROLES[_pick(_ROLE_CUM, rng.random())][0]
            if self._emit(self._session_start(rng, d, inviter), _TRACK, a, inviter, "Invite Sent",
                          {"invitee_role": role}) and rng.random() < 0.85:
                a.pending.append((d + (0 if rng.random() < 0.5 else 1 + int(rng.random() * 3)), inviter_i))

    def _join(self, a: _Account, d: int, inviter_i: int) -> None:
        rng = a.rng
        u = self._new_user(a, d, admin=False)
        a.users.append(u)
        t = self._session_start(rng, d, u)
        u.joined_ms = t
        u.created_at = self._stamp(t)
        self._emit(t, _IDENTIFY, a, u, None, self._user_traits(a, u))
        self._emit(t + 350, _TRACK, a, u, "Signed Up", {"method": "invite"})
        self._emit(t + 700, _GROUP, a, u, None, self._group_traits(a))

    def _conversion_hazard(self, a: _Account, d: int) -> float:
        m = sum(w for k, w in MILESTONE_WEIGHTS.items() if k in a.milestones)
        churned = a.churn_day >= 0 and d >= a.churn_day
        return 0.016 * a.p**1.6 * (0.1 + m) * (0.1 if churned else 1.0)

    def _maybe_convert(self, a: _Account, d: int) -> None:
        if a.rng.random() < self._conversion_hazard(a, d):
            self._convert(a, d)

    def _trial_end(self, a: _Account, d: int) -> None:
        rng = a.rng
        m = len(a.milestones)
        if rng.random() < 0.04 + 0.55 * a.p**1.3 * (0.35 + 0.4 * min(m, 2)):
            self._convert(a, d)
            return
        admin = a.users[0]
        t = self._local_midnight(d, admin.offset_ms) + 6 * HOUR_MS + int(rng.random() * HOUR_MS)
        if self._emit(t, _TRACK, a, admin, "Trial Ended", {"trial_plan": "pro"}):
            a.plan = "free"
            a.seats = PLANS["free"]["seats"]
            self._emit(t + 500, _GROUP, a, admin, None, self._group_traits(a))

    def _convert(self, a: _Account, d: int) -> None:
        rng = a.rng
        active = [u for u in a.users if u.joined_day <= d]
        buyer = a.users[0] if rng.random() < 0.7 else active[int(rng.random() * len(active))]
        t = self._session_start(rng, d, buyer)
        if t < self.start_ms or t + 60_000 >= self.end_ms:
            return
        plan = "business" if (a.employees >= 200 and rng.random() < 0.55) or a.team_target >= 40 else "pro"
        seats = max(len(a.users) + len(a.pending), 3, min(a.team_target, 10))
        mrr = seats * PRICE_PER_SEAT[plan]
        annual = rng.random() < 0.3
        self._emit(t, _PAGE, a, buyer, "Pricing", {"path": "/pricing"})
        self._emit(t + 45_000, _TRACK, a, buyer, "Subscription Started",
                   {"plan": plan, "mrr": mrr, "currency": CURRENCY, "seats": seats,
                    "billing_period": "annual" if annual else "monthly"})
        a.converted_ms = t + 45_000
        a.money = _Money(self.cfg.seed, a.id, d)
        a.converted_plan = plan
        a.mrr = mrr
        a.plan = plan
        a.seats = seats
        self._emit(t + 46_000, _GROUP, a, buyer, None, self._group_traits(a))

    # ---- the hidden truth -------------------------------------------------------------------------------

    def answers(self) -> dict[str, Any]:
        cfg = self.cfg
        accounts = []
        for a in self.accounts:
            accounts.append({
                "account_id": a.id,
                "propensity": round(a.p, 4),
                "employees": a.employees,
                "plan_at_signup": a.plan_at_signup,
                "signed_up_on": (self.first_day + timedelta(days=a.signup_day)).isoformat(),
                "team_target": a.team_target,
                "users": len(a.users),
                "owner": a.owner,
                "dormant": a.dormant,
                "churned_on": (self.first_day + timedelta(days=a.churn_day)).isoformat()
                if a.churn_day >= 0 and a.churn_day < cfg.days else None,
                "milestones": {k: (self.first_day + timedelta(days=v)).isoformat()
                               for k, v in sorted(a.milestones.items())},
                "converted_at": self._stamp(a.converted_ms) if a.converted_ms is not None else None,
                "converted_plan": a.converted_plan,
                "mrr": a.mrr if a.converted_ms is not None else None,
                "customer_churned_at": self._stamp(a.money.churned_ms)
                if a.money is not None and a.money.churned_ms is not None else None,
                "customer_churn": a.money.churn if a.money is not None and a.money.churned_ms is not None else None,
                "order_revenue": a.money.order_revenue if a.money is not None and a.money.ordered_ms is not None
                else None,
            })
        return {
            "generator": {"seed": cfg.seed, "accounts": cfg.accounts, "days": cfg.days,
                          "start": self.first_day.isoformat(), "events": cfg.events,
                          "intensity_scale": round(self.scale, 6)},
            "messages": self.count,
            "converted": sum(1 for a in self.accounts if a.converted_ms is not None),
            "drivers": drivers(),
            "accounts": accounts,
        }


def drivers() -> dict[str, Any]:
    """What the generator plants: which observable behaviours drive converting, for judging discovery.

    The daily chance of converting is 0.016 × propensity^1.6 × (0.1 + the weights of the milestones
    reached), and a trial's end converts with a chance that grows with propensity and milestones. The hidden
    propensity also scales how intensely an account uses everything (sign-ins, messages, features, files),
    so all activity correlates with converting; the milestones are what multiply the chance itself."""
    paid = list(PAID_FEATURES)
    return {
        "hazard": "0.016 * propensity**1.6 * (0.1 + sum of the weights of the milestones reached) per day",
        "milestones": [
            {"milestone": "paid_feature", "weight": MILESTONE_WEIGHTS["paid_feature"],
             "reached": "a paid-tier feature used on 3 different days (its use also grows with propensity²)",
             "signals": [{"event": "Feature Used", "where": {"tier": "paid"}},
                         {"event": "Feature Used", "where": {"feature": paid}}]},
            {"milestone": "limit", "weight": MILESTONE_WEIGHTS["limit"],
             "reached": "contacts at 80% of contacts_limit, storage at 90% of storage_quota_bytes, or an "
                        "invitee blocked by a full plan (seats)",
             "signals": [{"event": "Contacts Updated", "gauge": "total", "limit_trait": "contacts_limit"},
                         {"event": "Storage Updated", "gauge": "used_bytes",
                          "limit_trait": "storage_quota_bytes"},
                         {"event": "Invite Sent", "limit_trait": "seats"}]},
            {"milestone": "team", "weight": MILESTONE_WEIGHTS["team"],
             "reached": "3 users active within 14 days",
             "signals": [{"active_users": True}, {"event": "Invite Sent"}]},
            {"milestone": "collaboration", "weight": MILESTONE_WEIGHTS["collaboration"],
             "reached": "an integration connected and a folder shared",
             "signals": [{"event": "Integration Connected"}, {"event": "Folder Shared"}]},
        ],
        "trial": "a trial's end converts with chance 0.04 + 0.55 × propensity^1.3 × (0.35 + 0.4 × min(2, "
                 "milestones)): Trial Started and plan = trial go with converting, and are not a PQL",
        "propensity": "scales the intensity of every behaviour: Signed In, Message Sent, Conversation Started, "
                      "Feature Used, Page Viewed, File Uploaded, Friend Added, Invite Sent",
    }


_ASCII = str.maketrans({"ü": "u", "á": "a", "é": "e", "í": "i", "ó": "o", "ö": "o", "å": "a", "ø": "o"})


def _ascii(text: str) -> str:
    return text.translate(_ASCII)
