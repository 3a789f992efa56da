"""Language-model unlearning of patient records in clinical notes.

- :mod:`medforget.llm.system`: :class:`~medforget.llm.system.ClinicalLM`, a causal LM (a small Llama from a config
  with its own BPE tokenizer, or a local Hugging Face checkpoint) as a Lightning system, and its checkpoint export;
- :mod:`medforget.llm.methods`: the unlearning methods, one file each, registered by class name;
- :mod:`medforget.llm.evaluation`: TOFU's knowledge metrics, identifier extraction, MUSE's membership attacks and the
  quantization attack;
- :mod:`medforget.llm.audit` and :mod:`medforget.llm.report`: ``lm_audit.json`` / ``.md`` / ``.html``.
"""
