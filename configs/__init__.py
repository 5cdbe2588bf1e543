"""Run configs: ``get_config(arg) -> ml_collections.ConfigDict``; each file's docstring holds its
run command. They import only ml_collections (and each other)."""
