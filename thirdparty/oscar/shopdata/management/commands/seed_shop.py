"""Load thirdparty/oscar/catalogue.yaml into Oscar's own models: shipping countries, shipping methods,
categories, a product class, products with a partner stock record each. Idempotent: an object that
exists (by SKU, name or code) is left as it is."""

from decimal import Decimal
from pathlib import Path

import yaml
from django.apps import apps
from django.conf import settings
from django.contrib.sites.models import Site
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import transaction

from oscar.core.loading import get_model

CATALOGUE = Path(__file__).resolve().parents[3] / "catalogue.yaml"


class Command(BaseCommand):
    help = "Seed the shop's catalogue from catalogue.yaml (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--file", default=str(CATALOGUE))

    def handle(self, *args, **options):
        # Haystack's realtime processor would rewrite the search index on every save; index once after
        signal_processor = apps.get_app_config("haystack").signal_processor
        signal_processor.teardown()
        try:
            with transaction.atomic():
                n = self._seed(options)
        finally:
            signal_processor.setup()
        call_command("update_index", verbosity=0)  # Haystack's own command
        self.stdout.write(f"seeded {n} new products")

    def _seed(self, options):
        Country = get_model("address", "Country")
        OrderAndItemCharges = get_model("shipping", "OrderAndItemCharges")
        Category = get_model("catalogue", "Category")
        ProductClass = get_model("catalogue", "ProductClass")
        Product = get_model("catalogue", "Product")
        ProductCategory = get_model("catalogue", "ProductCategory")
        Partner = get_model("partner", "Partner")
        StockRecord = get_model("partner", "StockRecord")

        data = yaml.safe_load(Path(options["file"]).read_text())
        currency = data.get("currency", settings.OSCAR_DEFAULT_CURRENCY)

        Site.objects.update_or_create(
            pk=settings.SITE_ID, defaults={"domain": "127.0.0.1", "name": settings.OSCAR_SHOP_NAME}
        )
        countries = data["countries"]
        for i, c in enumerate(countries):
            Country.objects.get_or_create(
                iso_3166_1_a2=c["code"],
                defaults={
                    "iso_3166_1_a3": c.get("code3", ""),
                    "iso_3166_1_numeric": c.get("numeric", ""),
                    "printable_name": c["name"],
                    "name": c["name"],
                    "display_order": len(countries) - i,  # higher first
                    "is_shipping_country": True,
                },
            )
        for m in data["shipping"]:
            threshold = m.get("free_shipping_threshold")
            OrderAndItemCharges.objects.get_or_create(
                name=m["name"],
                defaults={
                    "description": m.get("description", ""),
                    "price_per_order": Decimal(m.get("price_per_order", "0")),
                    "price_per_item": Decimal(m.get("price_per_item", "0")),
                    "free_shipping_threshold": Decimal(threshold) if threshold is not None else None,
                },
            )
        product_class, _ = ProductClass.objects.get_or_create(
            name=data.get("product_class", "Goods"), defaults={"requires_shipping": True, "track_stock": True}
        )
        partner, _ = Partner.objects.get_or_create(name=data["partner"])

        n_products = 0
        for cat in data["categories"]:
            category = Category.objects.filter(depth=1, name=cat["name"]).first()
            if category is None:
                category = Category.add_root(name=cat["name"], description=cat.get("description", ""))
            for p in cat["products"]:
                product = Product.objects.filter(upc=p["sku"]).first()
                if product is None:
                    product = Product.objects.create(
                        structure=Product.STANDALONE,
                        product_class=product_class,
                        title=p["title"],
                        upc=p["sku"],
                        description=p.get("description", f"{p['title']} from our {cat['name']} range."),
                    )
                    ProductCategory.objects.create(product=product, category=category)
                    StockRecord.objects.create(
                        product=product,
                        partner=partner,
                        partner_sku=p["sku"],
                        price_currency=currency,
                        price=Decimal(p["price"]),
                        num_in_stock=int(p.get("stock", 100)),
                    )
                    n_products += 1
        return n_products
