"""Hugging Face interop: the hub and folders, export, GPT-2 import, Llama/NeoX import, HF models as baselines."""
