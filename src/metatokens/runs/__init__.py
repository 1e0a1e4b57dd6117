"""Run folders and model folders.

- `folder.py`: what a run folder holds, its lock and `RunFolder`, the one lifecycle of every
  command that trains (pre-training, fine-tuning, and so the study's stages);
- `checkpoints.py`: the checkpoints/ layout (step-N folders, LATEST, pruning) and its queries;
- `model_folder.py`: config.json + model.safetensors + tokenizer.json, written atomically, checked on load.

May import: errors, fileio, model, tokenizer.
"""