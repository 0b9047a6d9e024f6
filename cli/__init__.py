"""kneuron command line: one click module per command, loaded lazily by `kneuron.cli.main`."""
