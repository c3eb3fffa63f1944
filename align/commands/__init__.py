"""CLI command modules: each one attaches its commands to the apps in `align.cli_groups`."""
