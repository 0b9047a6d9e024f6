"""The report step: gather a warehouse's runs, sets and evaluations into a report."""
