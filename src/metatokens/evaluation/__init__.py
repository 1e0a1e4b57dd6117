"""Evaluation.

- `loading.py`: any model to score (run, model, export or Hugging Face folder) as a `LoadedModel`;
- `scoring.py`: teacher-forced scoring of task examples: exact match, token accuracy, answer loss;
- `tasks.py`: `evaluate_task`, accuracy by length bin (with YaRN, with or without meta-tokens);
- `perplexity.py`: `evaluate_perplexity`, loss per text token by position;
- `report.py`: their markdown tables, figures and files;
- `harness.py`: the same task prompts as a task folder for lm-evaluation-harness (`metatokens tasks lm-eval`).

May import: errors, fileio, plotting, progress, stats, model, tokenizer, data, tasks, runs, hf.
"""