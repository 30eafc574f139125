"""The ``genmo-teacache`` command. Subcommands live beside the code they drive and load only when used, so
that ``genmo-teacache evaluate`` never imports the video model and ``generate`` never imports VBench."""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute" of a click command
COMMANDS = {
    "generate": "genmo_teacache.generate_cli:generate_command",
    "verify": "genmo_teacache.verify:verify_command",
    "make-tiny-model": "genmo_teacache.tiny:make_tiny_model_command",
    "calibrate": "genmo_teacache.calibrate:calibrate_command",
    "batch": "genmo_teacache.batch.cli:batch_command",
    "sweep": "genmo_teacache.batch.cli:sweep_command",
    "evaluate": "genmo_teacache.eval.cli:evaluate_command",
    "compare-videos": "genmo_teacache.eval.compare_videos:compare_videos_command",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="genmo-teacache")
def main() -> None:
    """TeaCache for Genmo's native Mochi 1: generate, batch-generate, evaluate."""


if __name__ == "__main__":
    main()
