"""The engine layer: one contract per model-backed operation (``base``), served by ``hf``, ``vllm`` and ``openai``
backends built through ``factory.make_engine``; one length batcher (``batching``), LoRA adapter helpers
(``adapters``) and the generation cache (``cache``)."""
