"""The embedded engine: transformers and PEFT in the gateway's process (``engine.LocalEngine``)."""
