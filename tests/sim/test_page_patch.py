"""Page patches as the job reads them: from OmegaConf, applied per URL, misses counted, bad ones named."""

import pytest
from omegaconf import OmegaConf

from simpersona.sim.page_patch import PatchError, apply, parse_patches


def test_patches_from_a_config_rewrite_only_the_pages_they_name_and_count_misses():
    cfg = OmegaConf.create({"page_patches": [
        {"url": r"/catalogue/[\w-]+_\d+/$", "find": r"<form[^>]*basket.*?</form>", "replace": "<p>Sold out</p>"}]})
    patches = parse_patches(cfg.page_patches)
    page = '<h1>Tea</h1><form id="add_to_basket_form" class="basket">\n<button>Add</button></form>'
    html, misses = apply(patches, "http://shop/catalogue/tea_3/", page)
    assert (html, misses) == ("<h1>Tea</h1><p>Sold out</p>", 0)
    assert apply(patches, "http://shop/catalogue/", page) == (page, 0)  # not a product URL: untouched, no miss
    assert apply(patches, "http://shop/catalogue/tea_3/", "<h1>Tea</h1>") == ("<h1>Tea</h1>", 1)


@pytest.mark.parametrize(("spec", "message"), [
    ({"url": "/x", "replace": ""}, r"page_patches\[0\]: expected \{url, find, replace\}"),
    ({"find": "a", "selector": "b"}, r"page_patches\[0\]: expected"),
    ({"find": "(unclosed"}, r"page_patches\[0\]: not a valid regex"),
    ("find=a", r"page_patches\[0\]: expected"),
])
def test_a_patch_that_cannot_be_used_is_refused_by_its_index(spec, message):
    with pytest.raises(PatchError, match=message):
        parse_patches([spec])
