"""The offline adapter factory (L2 instruction tuning, L3 alignment). Not the AdapterHub package."""
