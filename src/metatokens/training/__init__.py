"""Training.

- `config.py`: `RunConfig` (model, data, train sections), presets and `--set` overrides;
- `setup.py`: processes and devices, the optimiser and schedule, precision, DDP/FSDP/compile
  applied from outside the model, memory checks;
- `checkpoints.py`: saving and loading a training checkpoint (weights, optimiser, RNG, data position);
- `loop.py`: `train_loop`, the one loop of pre-training and fine-tuning;
- `pretrain.py`: `run_pretrain`; `finetune.py`: `run_finetune`; `task_batches.py`: fine-tuning's batches.

May import: errors, fileio, progress, devices, model, tokenizer, data, tasks, runs, hf, evaluation.
"""