"""A synthetic buyer identity per agent, for the checkout forms of foreign storefronts.

Derived from the agent's seed with Faker (its own seeded generator, so the same agent has the same
name, e-mail and address in every attempt and every what-if arm). The address is in the country the
adapter allows (`identity.country`, an ISO 3166 alpha-2 code) and written in that country's locale;
the e-mail is on a reserved domain (RFC 2606), so no real mailbox is ever named.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# ISO country -> Faker locale for addresses that the country's forms accept
LOCALES = {"GB": "en_GB", "US": "en_US", "DE": "de_DE", "FR": "fr_FR", "NL": "nl_NL", "IE": "en_IE",
           "ES": "es_ES", "IT": "it_IT", "CA": "en_CA", "AU": "en_AU"}
EMAIL_DOMAIN = "example.com"
KEYS = ("first_name", "last_name", "name", "email", "phone", "line1", "line2", "city", "postcode", "state",
        "country", "password")


@dataclass(frozen=True)
class BuyerIdentity:
    first_name: str
    last_name: str
    name: str
    email: str
    phone: str
    line1: str
    line2: str
    city: str
    postcode: str
    state: str
    country: str  # ISO alpha-2, as the adapter allowed it
    password: str

    def get(self, key: str) -> str:
        if key not in KEYS:
            raise KeyError(f"unknown identity key {key!r}; expected one of {', '.join(KEYS)}")
        return getattr(self, key)

    def to_dict(self) -> dict:
        return asdict(self)


def buyer_identity(seed: int, country: str = "GB", tag: str = "") -> BuyerIdentity:
    """The identity of the agent with `seed`; `tag` (the agent id) makes the e-mail unique per agent."""
    from faker import Faker

    country = country.upper()
    if country not in LOCALES:
        raise ValueError(f"identity.country={country!r}: supported countries are {', '.join(sorted(LOCALES))}")
    fake = Faker(LOCALES[country])
    fake.seed_instance(int(seed))
    first, last = fake.first_name(), fake.last_name()
    local = "".join(ch for ch in f"{first}.{last}".lower() if ch.isalnum() or ch == ".")
    suffix = "".join(ch for ch in str(tag).lower() if ch.isalnum())[-12:] or str(int(seed) % 10**6)
    state = fake.state() if hasattr(fake, "state") else ""
    phone = "".join(ch for ch in fake.phone_number() if ch.isdigit() or ch == "+")
    return BuyerIdentity(
        first_name=first, last_name=last, name=f"{first} {last}", email=f"{local}.{suffix}@{EMAIL_DOMAIN}",
        phone=phone, line1=fake.street_address().replace("\n", ", "), line2="", city=fake.city(),
        postcode=fake.postcode(), state=state, country=country, password=f"Sp-{fake.password(length=14)}",
    )
