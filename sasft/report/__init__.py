"""The reading side: everything that reads finished runs and never trains. A sweep's runs
(runs.py), statistics (stats.py), the comparison rules (compare.py), the report's sections and
figures (sections.py, figures.py), and the command that writes the report (cli.py:
`python -m sasft.report`, `sasft-report`). How the report counts: docs/report.md."""
