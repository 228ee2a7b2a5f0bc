from django.apps import AppConfig


class ShopDataConfig(AppConfig):
    """SimPersona's own part of the Oscar project: the catalogue seed, the order count, the shipping
    methods. No models, no migrations."""

    name = "thirdparty.oscar.shopdata"
    label = "simpersona_shopdata"
