"""Hugging Face interop. transformers is optional: only the functions that need it import it.

- `hub.py`: hub names and local folders, reading configs, the output-folder rules of import/export;
- `export.py`: `metatokens export`, a folder `AutoModelForCausalLM` loads (model code: model/hf_model.py);
- `gpt2.py`: GPT-2 weights into our GPT (`import-gpt2`, the parity tests);
- `families/`: Llama / Qwen2 / Mistral and GPT-NeoX checkpoints with fresh meta-attention (`import-hf`);
- `baseline.py`: `HFCausalLM`, a Hugging Face causal LM fine-tuned and evaluated like ours.

May import: errors, fileio, model, tokenizer, runs.
"""