"""Generative models (causal language models from Hugging Face ``transformers``) as a kind of
model version: registered as a ``save_pretrained`` folder (``register.py``), loaded by the
inference process through the ``transformers`` format (``loader.py``), served by a
continuous-batching engine over a slot KV cache (``engine.py``, ``cache.py``, ``sampling.py``)
behind OpenAI-compatible routes (``openai_api.py``).

transformers, tokenizers and safetensors are imported only when a generative model is
registered or loaded: the tensor-model paths never pay for them.
"""
