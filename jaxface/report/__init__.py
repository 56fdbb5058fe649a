"""One self-contained HTML report of a demo workdir (`jaxface.report.html.write_report`)."""
