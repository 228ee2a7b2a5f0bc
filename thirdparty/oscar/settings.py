"""Settings of the minimal Django project that hosts the *installed* django-oscar package (PyPI) as a
third-party shop for SimPersona's agents (issue #18). Nothing of Oscar is copied here: only this
project's settings, its URLconf and a tiny app (`shopdata`) that seeds the catalogue and reports the
order count. Served by `scripts/thirdparty_shop.py serve`.

Environment:
  SIMPERSONA_OSCAR_DATA_DIR  (required) directory for the SQLite DB, the search index and the media
  SIMPERSONA_OSCAR_DEBUG     "1" turns Django's DEBUG on (off by default; static files are served by
                             WhiteNoise either way)
"""

import os
from pathlib import Path

from oscar.defaults import *  # noqa: F401,F403  (Oscar's documented way to get its defaults)

HERE = Path(__file__).resolve().parent

_data = os.environ.get("SIMPERSONA_OSCAR_DATA_DIR")
if not _data:
    raise RuntimeError("set SIMPERSONA_OSCAR_DATA_DIR to the shop's data directory")
DATA_DIR = Path(_data).resolve()

SECRET_KEY = "simpersona-loopback-oscar-not-secret"
DEBUG = os.environ.get("SIMPERSONA_OSCAR_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.sites",
    "django.contrib.flatpages",
    "oscar.config.Shop",
    "oscar.apps.analytics.apps.AnalyticsConfig",
    "oscar.apps.checkout.apps.CheckoutConfig",
    "oscar.apps.address.apps.AddressConfig",
    "oscar.apps.shipping.apps.ShippingConfig",
    "oscar.apps.catalogue.apps.CatalogueConfig",
    "oscar.apps.catalogue.reviews.apps.CatalogueReviewsConfig",
    "oscar.apps.communication.apps.CommunicationConfig",
    "oscar.apps.partner.apps.PartnerConfig",
    "oscar.apps.basket.apps.BasketConfig",
    "oscar.apps.payment.apps.PaymentConfig",
    "oscar.apps.offer.apps.OfferConfig",
    "oscar.apps.order.apps.OrderConfig",
    "oscar.apps.customer.apps.CustomerConfig",
    "oscar.apps.search.apps.SearchConfig",
    "oscar.apps.voucher.apps.VoucherConfig",
    "oscar.apps.wishlists.apps.WishlistsConfig",
    "oscar.apps.dashboard.apps.DashboardConfig",
    "oscar.apps.dashboard.reports.apps.ReportsDashboardConfig",
    "oscar.apps.dashboard.users.apps.UsersDashboardConfig",
    "oscar.apps.dashboard.orders.apps.OrdersDashboardConfig",
    "oscar.apps.dashboard.catalogue.apps.CatalogueDashboardConfig",
    "oscar.apps.dashboard.offers.apps.OffersDashboardConfig",
    "oscar.apps.dashboard.partners.apps.PartnersDashboardConfig",
    "oscar.apps.dashboard.pages.apps.PagesDashboardConfig",
    "oscar.apps.dashboard.ranges.apps.RangesDashboardConfig",
    "oscar.apps.dashboard.reviews.apps.ReviewsDashboardConfig",
    "oscar.apps.dashboard.vouchers.apps.VouchersDashboardConfig",
    "oscar.apps.dashboard.communications.apps.CommunicationsDashboardConfig",
    "oscar.apps.dashboard.shipping.apps.ShippingDashboardConfig",
    "widget_tweaks",
    "haystack",
    "treebeard",
    "sorl.thumbnail",
    "django_tables2",
    "thirdparty.oscar.shopdata",
]

SITE_ID = 1

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "oscar.apps.basket.middleware.BasketMiddleware",
    "django.contrib.flatpages.middleware.FlatpageFallbackMiddleware",
]

ROOT_URLCONF = "thirdparty.oscar.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.debug",
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.template.context_processors.i18n",
                "django.contrib.messages.context_processors.messages",
                "oscar.apps.search.context_processors.search_form",
                "oscar.apps.checkout.context_processors.checkout",
                "oscar.apps.communication.notifications.context_processors.notifications",
                "oscar.core.context_processors.metadata",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(DATA_DIR / "db.sqlite3"),
        "OPTIONS": {"timeout": 20},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

AUTHENTICATION_BACKENDS = (
    "oscar.apps.customer.auth_backends.EmailBackend",
    "django.contrib.auth.backends.ModelBackend",
)

# Oscar 4 lists the catalogue and its categories through Haystack too, and Haystack's "simple" backend
# can search but cannot list (it ignores the listing's filters and returns nothing), so the index is
# Whoosh: pure Python, a directory beside the database, kept current by Oscar's default realtime
# signal processor. (Oscar's own test suite runs on this backend.)
HAYSTACK_CONNECTIONS = {
    "default": {
        "ENGINE": "haystack.backends.whoosh_backend.WhooshEngine",
        "PATH": str(DATA_DIR / "whoosh_index"),
    }
}

LANGUAGE_CODE = "en-us"
LANGUAGES = [("en-us", "English")]  # one language: Oscar then shows no language selector
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = None
WHITENOISE_USE_FINDERS = True  # serve the installed apps' static files without collectstatic
MEDIA_URL = "/media/"
MEDIA_ROOT = str(DATA_DIR / "media")
THUMBNAIL_DEBUG = False

EMAIL_BACKEND = "django.core.mail.backends.dummy.EmailBackend"

# --- the shop ----------------------------------------------------------------------------------------
OSCAR_SHOP_NAME = "Oscar Sandbox Store"
OSCAR_DEFAULT_CURRENCY = "USD"
OSCAR_ALLOW_ANON_CHECKOUT = True
OSCAR_THUMBNAILER = "oscar.core.thumbnails.SorlThumbnail"
# No "Refine by" facets: Whoosh cannot count price ranges, and its stemmed product-class and empty
# rating facets ("good", "None") would only add meaningless links to every listing.
OSCAR_SEARCH_FACETS = {"fields": {}, "queries": {}}
# Oscar's default shipping repository offers only free shipping; its documented extension point is
# the dynamic class loader, used here to hand out the shop's database shipping methods instead (a
# per-order fee with a free-shipping threshold, seeded from catalogue.yaml).
OSCAR_DYNAMIC_CLASS_LOADER = "thirdparty.oscar.shopdata.loading.class_loader"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
        "oscar": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}
