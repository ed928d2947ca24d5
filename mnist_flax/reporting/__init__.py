"""Reporting: report.md, curves, confusion matrix and mistakes; the data views of `explore`."""
