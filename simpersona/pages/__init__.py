"""The page model every stage shares: what a page shows (observation: PageState, its text rendering and
the actions it allows), where each action leads in a merchant's shop (shop: Shop, Knobs) and what it
sells (catalog). Traces, the storefront, the browser's extraction, shop adapters and prompts all read
pages through it, so none of them imports another to know what a page is."""
