"""The vLLM engine: remote vLLM replicas behind one interface (``engine.VllmEngine``)."""
