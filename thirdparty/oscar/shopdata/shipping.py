from oscar.apps.shipping import repository
from oscar.apps.shipping.models import OrderAndItemCharges


class Repository(repository.Repository):
    """The shop's shipping methods are Oscar's own `OrderAndItemCharges` rows (seeded from
    catalogue.yaml): a per-order charge, free above `free_shipping_threshold` where one is set. The
    cheapest is first, so it is the default the basket page shows."""

    def get_available_shipping_methods(self, basket, shipping_addr=None, **kwargs):
        return list(OrderAndItemCharges.objects.order_by("price_per_order", "name"))
