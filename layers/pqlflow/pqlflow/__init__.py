"""pqlflow: detect product-qualified leads from usage events and nurture them by touch level."""

__version__ = "0.1.0"
