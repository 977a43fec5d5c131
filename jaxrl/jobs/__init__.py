"""The jobs `python -m jaxrl.main` runs, one module each: `train` (SFT then GRPO) and
`generate` (sample from a model). Each has a typed config built once from its ml-collections
file (`CONFIG`), and `run(config, workdir)`."""
